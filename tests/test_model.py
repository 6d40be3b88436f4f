"""Sequential: running, state dicts, summary, dtype discipline."""

import json

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.zoo import lenet5


def small(dtype=np.float32):
    return sc.Sequential(
        [
            sc.Conv2D(1, 2, 3, dtype=dtype, rng=0),
            sc.BatchNorm2D(2, dtype=dtype),
            sc.ReLU(),
            sc.MaxPool2D(2),
            sc.Flatten(),
            sc.Dropout(0.5, rng=0),
            sc.Dense(8, 3, dtype=dtype, rng=1),
        ],
        input_shape=(1, 6, 6),
    )


def test_state_dict_keys_follow_torch_sequential():
    keys = list(small().state_dict())
    assert keys == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "6.weight",
        "6.bias",
    ]


def test_state_dict_is_a_copy_and_round_trips(rng):
    a, b = small(), small()
    b.layers[0].params["weight"][:] = 0
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((4, 1, 6, 6)).astype(np.float32)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    sd = a.state_dict()
    sd["0.weight"][:] = 99
    assert not np.any(a.layers[0].params["weight"] == 99)


def test_load_state_dict_reports_every_problem():
    model = small()
    sd = model.state_dict()
    del sd["0.bias"]
    sd["9.weight"] = np.zeros(1)
    sd["6.weight"] = np.zeros((3, 9), np.float32)
    with pytest.raises(sc.ShapeError) as err:
        model.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys: 0.bias" in msg
    assert "unexpected keys: 9.weight" in msg
    assert "6.weight: checkpoint (3, 9) vs model (3, 8)" in msg


def test_load_state_dict_refuses_nan():
    model = small()
    sd = model.state_dict()
    sd["0.weight"][0, 0, 0, 0] = np.nan
    with pytest.raises(sc.ShapeError, match=r"0\.weight contains NaN"):
        model.load_state_dict(sd)


def test_config_round_trip_rebuilds_the_same_architecture():
    model = lenet5()
    cfg = json.loads(json.dumps(model.config()))
    rebuilt = sc.Sequential.from_config(cfg)
    assert [type(la).__name__ for la in rebuilt] == [type(la).__name__ for la in model]
    assert rebuilt.summary() == model.summary()


def test_from_config_unknown_layer():
    with pytest.raises(sc.ConfigError, match="unknown layer type 'Nope'"):
        sc.Sequential.from_config({"layers": [{"type": "Nope", "config": {}}]})


def test_summary_lists_shapes_and_counts():
    text = lenet5().summary()
    assert "(N, 6, 28, 28)" in text
    assert "(N, 16, 5, 5)" in text
    assert "(N, 400)" in text
    assert "total parameters: 61,706" in text


def test_summary_catches_mismatched_layers():
    model = sc.Sequential([sc.Conv2D(1, 2, 3), sc.Flatten(), sc.Dense(10, 2)])
    with pytest.raises(
        sc.ShapeError, match=r"layer 2 .*Dense.* expects input \(N, 10\), got \(1, 8\)"
    ):
        model.summary((1, 4, 4))


def test_backward_fills_every_gradient_and_can_skip_input_grad(rng):
    model = small(np.float64)
    x = rng.standard_normal((3, 1, 6, 6))
    y = model.forward(x)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape
    model.forward(x)
    assert model.backward(np.ones_like(y), input_grad=False) is None
    assert all(np.any(g != 0) for g in model.gradients())


def test_train_eval_propagates():
    model = small()
    model.eval()
    assert not any(la.training for la in model)
    model.train()
    assert all(la.training for la in model)


def test_float64_model_stays_float64_end_to_end(rng):
    model = lenet5(dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 1, 28, 28))
    y = model.forward(x)
    assert y.dtype == np.float64
    fn = sc.CrossEntropyLoss()
    fn.forward(y, np.array([1, 2]))
    model.backward(fn.backward())
    assert all(g.dtype == np.float64 for g in model.gradients())
    opt = sc.optim.Adam(model)
    opt.step()
    assert all(p.dtype == np.float64 for p in model.parameters())
    with pytest.raises(sc.DTypeError, match="float32"):
        model.forward(x.astype(np.float32))  # no silent upcast


def test_astype_converts_everything(rng):
    model = small().astype(np.float64)
    assert model.dtype == np.float64
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model.layers[1].buffers["num_batches_tracked"].dtype == np.int64
    model.forward(rng.standard_normal((2, 1, 6, 6)))


def test_predict_batches_and_scales_uint8(rng):
    model = lenet5(seed=0)
    x = rng.integers(0, 256, (5, 1, 28, 28)).astype(np.uint8)
    out = model.predict(x, batch_size=2)
    assert out.shape == (5, 10)
    model.eval()
    np.testing.assert_allclose(out, model.forward(x.astype(np.float32) / 255), rtol=1e-5, atol=1e-7)
    assert model.predict(x[0]).shape == (1, 10)  # a single image


def test_add_refuses_non_layers():
    with pytest.raises(sc.ConfigError, match="not a layer"):
        sc.Sequential([sc.ReLU(), "relu"])


def test_load_state_dict_is_all_or_nothing():
    model = small()
    before = model.state_dict()
    sd = {k: v + 1 if v.dtype.kind == "f" else v for k, v in before.items()}
    sd["6.bias"] = np.array([1.0, np.inf, 0.0], np.float32)  # the last key is bad
    with pytest.raises(sc.ShapeError, match=r"6\.bias contains NaN or inf"):
        model.load_state_dict(sd)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_load_state_dict_checks_finiteness_after_the_cast():
    model = small()
    sd = model.state_dict()
    sd["0.weight"] = sd["0.weight"].astype(np.float64)
    sd["0.weight"][0, 0, 0, 0] = 1e300  # finite in float64, inf in float32
    with pytest.raises(sc.ShapeError, match=r"0\.weight contains NaN or inf once cast to float32"):
        model.load_state_dict(sd)
    assert np.all(np.isfinite(model.layers[0].params["weight"]))


@pytest.mark.parametrize(
    "value,match",
    [
        (np.array(3.0), "integer buffer"),
        (np.array(2.5), "integer buffer"),
        (np.array(True), "integer buffer"),
        (np.array(2**64 - 1, np.uint64), "does not fit"),
    ],
)
def test_load_state_dict_refuses_non_integers_for_integer_buffers(value, match):
    model = small()
    sd = model.state_dict()
    sd["1.num_batches_tracked"] = value
    with pytest.raises(sc.DTypeError, match=match):
        model.load_state_dict(sd)
    sd["1.num_batches_tracked"] = np.array(7, np.int32)
    model.load_state_dict(sd)
    assert model.layers[1].buffers["num_batches_tracked"] == 7
    assert model.layers[1].buffers["num_batches_tracked"].dtype == np.int64


def test_predict_on_no_images_is_one_clear_error():
    import scratchcnn as sc

    model = sc.Sequential([sc.Flatten(), sc.Dense(4, 2)], input_shape=(1, 2, 2))
    with pytest.raises(sc.ShapeError, match="no images"):
        model.predict(np.zeros((0, 1, 2, 2), dtype=np.float32))
