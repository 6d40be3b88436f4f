"""The model zoo: architectures, shapes, parameter counts, names."""

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.zoo import MODELS, build_model, lenet5, shapes_net, tiny_cnn


@pytest.mark.parametrize(
    "make,shape,out,params",
    [
        (tiny_cnn, (1, 28, 28), 10, 8 * 9 + 1352 * 10 + 10),
        (lenet5, (1, 28, 28), 10, 61_706),
        (shapes_net, (1, 5, 5), 1, 9 + 1 + 4 + 1),
    ],
)
def test_zoo_shapes_and_parameter_counts(make, shape, out, params):
    model = make(seed=0)
    assert model.input_shape == shape
    assert model.output_shapes()[-1] == (1, out)
    assert model.num_params() == params
    y = model.forward(np.zeros((2, *shape), np.float32))
    assert y.shape == (2, out) and y.dtype == np.float32


def test_tiny_cnn_shifts_inputs_to_the_tutorials_range():
    assert isinstance(tiny_cnn().layers[0], sc.Rescale)
    assert tiny_cnn().layers[0].offset == -0.5


def test_shapes_net_initialisation_follows_the_tutorial():
    conv = shapes_net(seed=3).layers[0]
    assert np.all((conv.params["weight"] >= 0) & (conv.params["weight"] < 1))
    np.testing.assert_array_equal(conv.params["bias"], 1.0)


def test_lenet5_pooling_choice_and_seeding():
    assert isinstance(lenet5(pool="avg").layers[2], sc.AvgPool2D)
    assert isinstance(build_model("lenet5_avg").layers[5], sc.AvgPool2D)
    a, b = lenet5(seed=1).state_dict(), lenet5(seed=1).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert lenet5(dtype=np.float64).dtype == np.float64
    with pytest.raises(sc.ConfigError, match="pool must be 'max' or 'avg'"):
        lenet5(pool="min")


def test_build_model_by_name():
    assert set(MODELS) == {"tiny_cnn", "lenet5", "lenet5_avg", "shapes_net", "resnet8", "resnet20"}
    assert len(build_model("shapes_net", seed=0)) == 5
    with pytest.raises(sc.ConfigError, match="unknown model 'resnet'; choose one of"):
        build_model("resnet")


def test_resnet8_architecture_and_torch_twin():
    import torch

    from benchmarks._torch_twin import twin
    from scratchcnn.nn.zoo import RECIPES, resnet8

    model = resnet8(seed=0)
    assert model.input_shape == (1, 28, 28)
    assert model.output_shapes()[-1] == (1, 10)
    assert model.num_params() == 77_754
    blocks = [la for la in model if isinstance(la, sc.Residual)]
    assert [b.shortcut is None for b in blocks] == [True, False, False]
    convs = [la for _, la in model.named_layers() if isinstance(la, sc.Conv2D)]
    assert len(convs) == 9 and not any(c.use_bias for c in convs)
    assert [c.stride for c in convs if c.kernel_size == (1, 1)] == [(2, 2), (2, 2)]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        want = twin(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), want, rtol=1e-4, atol=1e-5)
    again = resnet8(seed=0).state_dict()["0.weight"]
    np.testing.assert_array_equal(again, model[0].params["weight"])
    assert RECIPES["resnet8"]["augment"] is True
    assert "lenet5" not in RECIPES  # lenet5 keeps the command line's defaults
