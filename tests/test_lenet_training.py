"""A LeNet-5 Sequential: the first step's gradients equal torch's for the same weights, and
50 steps on a fixed batch drive the loss down."""

import numpy as np
import pytest
import torch

import scratchcnn as sc
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import lenet5


def torch_lenet() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(400, 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )


@pytest.mark.parametrize("dtype,rel", [(np.float64, 1e-7), (np.float32, 1e-4)])
def test_first_step_gradients_equal_torch(dtype, rel, rng):
    model = lenet5(dtype=dtype, seed=0)
    tmodel = torch_lenet().to(torch.float64 if dtype == np.float64 else torch.float32)
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    x = rng.uniform(0, 1, (16, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 16)
    fn = sc.CrossEntropyLoss()
    loss = fn.forward(model.forward(x), y)
    model.backward(fn.backward(), input_grad=False)
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=rel)
    grads = dict(
        zip([k for k, _, _ in model.named_leaf_parameters()], model.gradients(), strict=True)
    )
    for name, p in tmodel.named_parameters():
        ref = p.grad.numpy()
        err = np.abs(grads[name] - ref).max() / np.abs(ref).max()
        assert err <= rel, f"{name}: relative error {err:.2e}"


def test_fifty_steps_on_a_fixed_batch_drive_the_loss_down():
    # 32 real digits (the embedded MNIST subset): a batch a working network memorises fast.
    data = load_dataset("mnist-5k")
    x = data.images[:32].astype(np.float32) / 255
    y = data.labels[:32]
    model = lenet5(seed=0)
    opt = sc.optim.Adam(model, lr=1e-3)
    fn = sc.CrossEntropyLoss()
    losses = []
    for _ in range(50):
        losses.append(fn.forward(model.forward(x), y))
        model.backward(fn.backward(), input_grad=False)
        opt.step()
    assert losses[0] == pytest.approx(np.log(10), abs=0.2)
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    assert all(np.isfinite(losses))
