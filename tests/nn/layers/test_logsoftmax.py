"""LogSoftmax: values, gradients (finite differences and torch), idempotence under CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scratchcnn as sc


@pytest.mark.parametrize("axis", [1, -1, 2])
def test_logsoftmax_gradcheck_and_torch(axis, rng):
    x = rng.standard_normal((3, 4, 5)) * 3
    layer = sc.LogSoftmax(axis=axis)
    assert sc.gradcheck(layer, x).ok
    dy = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.log_softmax(xt, dim=axis)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), atol=1e-12)


def test_logsoftmax_survives_huge_logits_and_cross_entropy_is_unchanged():
    z = np.array([[1000.0, 0.0, -1000.0], [3.0, 2.0, 1.0]])
    y = sc.LogSoftmax().forward(z)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(np.exp(y).sum(axis=1), 1.0)
    loss = sc.CrossEntropyLoss()
    labels = np.array([1, 0])
    # log-softmax is idempotent: the loss on log-probabilities equals the loss on logits.
    assert loss.forward(y, labels) == pytest.approx(loss.forward(z, labels))


def test_logsoftmax_round_trips_through_config():
    layer = sc.nn.layers.layer_from_config({"type": "LogSoftmax", "config": {"axis": -1}})
    assert isinstance(layer, sc.LogSoftmax) and layer.axis == -1
    with pytest.raises(sc.ConfigError, match="LogSoftmax axis"):
        sc.LogSoftmax(axis=1.5)
