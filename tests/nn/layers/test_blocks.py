"""Residual and Parallel: finite differences, PyTorch parity (forward, every gradient, train
and eval mode, BatchNorm inside blocks), torch's state-dict keys, configs and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import scratchcnn as sc
from benchmarks._torch_twin import twin
from scratchcnn.nn.layers.blocks import MAX_DEPTH

F64 = np.float64


def conv(ci, co, k=3, s=1, seed=0, bias=True):
    return sc.Conv2D(ci, co, k, stride=s, padding=k // 2, bias=bias, dtype=F64, rng=seed)


def bn(c, affine=True):
    return sc.BatchNorm2D(c, dtype=F64, affine=affine)


def identity_block(c=3):
    return sc.Residual([conv(c, c, seed=1), bn(c), sc.ReLU(), conv(c, c, seed=2), bn(c)])


def projection_block(ci=3, co=4):
    body = [conv(ci, co, s=2, seed=3, bias=False), bn(co), sc.ReLU(), conv(co, co, seed=4), bn(co)]
    return sc.Residual(body, shortcut=[conv(ci, co, k=1, s=2, seed=5, bias=False), bn(co)])


def parallel(merge):
    if merge == "concat":
        branches = [[conv(3, 2, k=1, seed=6), bn(2)], conv(3, 3, seed=7), sc.Tanh()]
    else:
        branches = [[conv(3, 3, k=1, seed=6), bn(3)], conv(3, 3, seed=7), sc.Tanh()]
    return sc.Parallel(branches, merge=merge)


def nested():
    """Residual around a Parallel that holds a Residual, then a projection: three levels."""
    inner = sc.Residual([conv(3, 3, seed=8), bn(3)])
    par = sc.Parallel([[inner, sc.ReLU()], [conv(3, 3, k=1, seed=9)]], merge="add")
    return sc.Residual([par, bn(3), sc.Tanh()], shortcut=bn(3))


BLOCKS = {
    "identity": identity_block,
    "projection": projection_block,
    "concat": lambda: parallel("concat"),
    "add": lambda: parallel("add"),
    "nested": nested,
}


def model_of(block_fn, input_shape=(3, 6, 6)):
    return sc.Sequential([conv(3, 3, seed=10), block_fn(), sc.ReLU()], input_shape=input_shape)


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(kind, training, rng):
    model = model_of(BLOCKS[kind]).train(training)
    if not training:  # non-trivial running statistics, so eval differs from train
        model.forward(rng.standard_normal((4, 3, 6, 6)))
        model.eval()
    result = sc.gradcheck(model, rng.standard_normal((3, 3, 6, 6)), atol=1e-6, rtol=1e-4)
    assert result.ok, str(result)
    block_keys = [c.name for c in result.checks if c.name.startswith("1.")]
    assert block_keys and all(
        ".body." in k or ".shortcut." in k or ".branches." in k for k in block_keys
    )


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_block_alone_gradcheck(kind, rng):
    result = sc.gradcheck(BLOCKS[kind](), rng.standard_normal((2, 3, 6, 6)), atol=1e-6, rtol=1e-4)
    assert result.ok, str(result)
    assert len(result.checks) == 1 + sum(1 for _ in BLOCKS[kind]().named_leaf_parameters())


def assert_close(ours, theirs, what, rel=1e-9):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, what
    scale = float(np.abs(theirs).max())
    err = float(np.abs(ours - theirs).max())
    # + 1e-12: a conv bias right before BatchNorm has a gradient of exactly 0 in training,
    # computed by both as rounding noise around 1e-15
    assert err <= rel * scale + 1e-12, f"{what}: {err:.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize("training", [True, False])
def test_torch_parity_forward_and_every_gradient(kind, training, rng):
    model = model_of(BLOCKS[kind])
    model.forward(rng.standard_normal((4, 3, 6, 6)))  # move the running statistics
    model.train(training)
    net = twin(model)
    assert net.training == training
    x = rng.standard_normal((3, 3, 6, 6))
    xt = torch.tensor(x, requires_grad=True)
    yt = net(xt)
    y = model.forward(x)
    assert_close(y, yt, "forward")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    assert_close(model.backward(dy), xt.grad, "dL/dx")
    grads = {key: layer.grads[name] for key, layer, name in model.named_leaf_parameters()}
    torch_params = dict(net.named_parameters())
    assert set(grads) == set(torch_params)
    for key, g in grads.items():
        assert_close(g, torch_params[key].grad, f"dL/d{key}")
    # BatchNorm running statistics moved (or not) the same way
    theirs = net.state_dict()
    for key, value in model.state_dict().items():
        assert_close(np.asarray(value, dtype=F64), theirs[key].double(), key)


def test_state_dict_keys_are_torchs():
    model = sc.Sequential(
        [
            conv(3, 3),
            bn(3),
            sc.ReLU(),
            projection_block(3, 4),
            sc.ReLU(),
            sc.Parallel([[conv(4, 2, k=1)], [conv(4, 2, k=1), bn(2)]]),
        ]
    )
    keys = list(model.state_dict())
    for key in ("3.body.0.weight", "3.shortcut.1.running_mean", "5.branches.1.0.weight"):
        assert key in keys
    assert keys == list(twin(model).state_dict())
    assert [k for k, _, _ in model.named_leaf_parameters()] == [
        k for k, _ in twin(model).named_parameters()
    ]


def test_named_layers_depth_first_in_forward_order():
    model = sc.Sequential([conv(3, 3), projection_block(3, 4), sc.ReLU()])
    names = [(p, type(la).__name__) for p, la in model.named_layers()]
    assert names == [
        ("0", "Conv2D"),
        ("1.body.0", "Conv2D"),
        ("1.body.1", "BatchNorm2D"),
        ("1.body.2", "ReLU"),
        ("1.body.3", "Conv2D"),
        ("1.body.4", "BatchNorm2D"),
        ("1.shortcut.0", "Conv2D"),
        ("1.shortcut.1", "BatchNorm2D"),
        ("2", "ReLU"),
    ]
    flat = sc.Sequential([sc.ReLU(), sc.Tanh()])
    assert [p for p, _ in flat.named_layers()] == ["0", "1"]


def test_single_layer_children_have_no_index():
    block = sc.Residual(conv(3, 3, bias=False), shortcut=bn(3))
    model = sc.Sequential([block])
    assert list(model.state_dict())[:2] == ["0.body.weight", "0.shortcut.weight"]
    assert list(model.state_dict()) == list(twin(model).state_dict())


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_config_round_trip_and_layer_from_config(kind, rng):
    model = model_of(BLOCKS[kind])
    cfg = json.loads(json.dumps(model.config()))
    rebuilt = sc.Sequential.from_config(cfg)
    assert rebuilt.config() == model.config()
    rebuilt.load_state_dict(model.state_dict())
    x = rng.standard_normal((2, 3, 6, 6))
    np.testing.assert_array_equal(rebuilt.eval().forward(x), model.eval().forward(x))
    block = sc.nn.layers.layer_from_config(cfg["layers"][1])
    assert type(block) is type(model.layers[1])


def test_checkpoint_round_trip_of_a_nested_model_with_dropout(tmp_path, rng):
    inner = sc.Residual([conv(3, 3), sc.Dropout(0.5, rng=3)])
    model = sc.Sequential(
        [conv(3, 3), sc.Parallel([[inner], [sc.Dropout(0.3, rng=4), conv(3, 3, k=1)]])],
        input_shape=(3, 5, 5),
    )
    x = rng.standard_normal((2, 3, 5, 5))
    model.forward(x)  # advance the generators past their seeds
    sc.save(model, tmp_path / "m.npz")
    loaded = sc.load(tmp_path / "m.npz")
    assert loaded.config() == model.config()
    for (ka, a), (kb, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert ka == kb
        np.testing.assert_array_equal(a, b)
    # same Dropout masks next: the layers' generator states were saved and restored
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    rngs = sc.checkpoint.npz.layer_rng_states(model)
    assert set(rngs) == {"1.branches.0.0.body.1", "1.branches.1.0"}


def test_train_eval_astype_zero_grad_reach_the_leaves(rng):
    model = model_of(nested)
    model.eval()
    assert all(not la.training for _, la in model.named_layers())
    model.train()
    assert all(la.training for _, la in model.named_layers())
    model.astype(np.float32)
    assert model.dtype == np.float32
    assert all(p.dtype == np.float32 for p in model.parameters())
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x)))
    assert any(np.any(g) for g in model.gradients())
    model.zero_grad()
    assert not any(np.any(g) for g in model.gradients())


def test_input_grad_skip_with_blocks(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    for model in (model_of(identity_block), sc.Sequential([identity_block(), sc.ReLU()])):
        y = model.forward(x)
        assert model.backward(np.ones_like(y), input_grad=False) is None
        expected = {k: la.grads[n].copy() for k, la, n in model.named_leaf_parameters()}
        model.forward(x)
        model.backward(np.ones_like(y))
        for k, la, n in model.named_leaf_parameters():
            np.testing.assert_array_equal(la.grads[n], expected[k])


def test_summary_indents_blocks_with_shapes_and_counts():
    model = sc.Sequential([conv(3, 3), projection_block(3, 4), sc.Flatten()], input_shape=(3, 6, 6))
    text = model.summary()
    lines = text.splitlines()
    block_row = next(line for line in lines if line.startswith("1 "))
    assert "Residual" in block_row and "(N, 4, 3, 3)" in block_row
    assert f"{model.layers[1].num_params():,}" in block_row
    sub = next(line for line in lines if "1.shortcut.0" in line)
    assert sub.startswith("  ") and "(N, 4, 3, 3)" in sub and "12" in sub
    assert "1.body.4" in text and f"total parameters: {model.num_params():,}" in text


def test_optimizer_steps_equal_torchs_on_a_residual_net(rng):
    model = sc.Sequential(
        [
            *(conv(1, 4, bias=False), bn(4), sc.ReLU(), projection_block(4, 6), sc.ReLU()),
            *(sc.GlobalAvgPool2D(), sc.Flatten(), sc.Dense(6, 3, dtype=F64, rng=0)),
        ],
        input_shape=(1, 8, 8),
    )
    net = twin(model)
    opt = sc.optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    topt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fn = sc.CrossEntropyLoss()
    for _ in range(4):
        x = rng.standard_normal((6, 1, 8, 8))
        y = rng.integers(0, 3, 6)
        fn.forward(model.forward(x), y)
        model.backward(fn.backward(), input_grad=False)
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    theirs = net.state_dict()
    for key, value in model.state_dict().items():
        assert_close(np.asarray(value, dtype=F64), theirs[key].double(), key, rel=1e-8)


def test_residual_refuses_mismatched_shapes():
    block = sc.Residual([conv(3, 4)])
    with pytest.raises(sc.ShapeError, match="projection shortcut"):
        block.forward(np.zeros((1, 3, 4, 4)))
    with pytest.raises(sc.ShapeError, match="projection shortcut"):
        sc.Sequential([block]).output_shapes((3, 4, 4))


def test_parallel_checks():
    with pytest.raises(sc.ConfigError, match="merge"):
        sc.Parallel([sc.ReLU()], merge="mul")
    with pytest.raises(sc.ConfigError, match="non-empty"):
        sc.Parallel([])
    with pytest.raises(sc.ShapeError, match="differ"):
        sc.Parallel([conv(3, 2), conv(3, 3)], merge="add").forward(np.zeros((1, 3, 4, 4)))
    with pytest.raises(sc.ShapeError, match="channels"):
        sc.Parallel([conv(3, 2), conv(3, 2, s=2)]).forward(np.zeros((1, 3, 4, 4)))
    with pytest.raises(sc.ConfigError, match="expected a layer"):
        sc.Residual([object()])


def test_deeply_nested_config_is_refused_not_a_recursion_error():
    spec = {"type": "ReLU", "config": {}}
    for _ in range(MAX_DEPTH + 5):
        spec = {"type": "Residual", "config": {"body": [spec], "shortcut": None}}
    with pytest.raises(sc.ConfigError, match="nested deeper"):
        sc.nn.layers.layer_from_config(spec)
    spec = {"type": "ReLU", "config": {}}
    for _ in range(MAX_DEPTH - 1):  # as deep as allowed still builds
        spec = {"type": "Residual", "config": {"body": [spec], "shortcut": None}}
    assert isinstance(sc.nn.layers.layer_from_config(spec), sc.Residual)


def test_state_shapes_of_blocks_and_batchnorm1d():
    block = sc.Residual([bn(3), bn(3, affine=False)], shortcut=bn(3))
    shapes = sc.Residual.state_shapes(block.config())
    assert shapes == {k: v.shape for k, v in block.named_tensors()}
    par = sc.Parallel([[bn(2)], sc.BatchNorm2D(4)])
    assert sc.Parallel.state_shapes(par.config()) == {k: v.shape for k, v in par.named_tensors()}
    bn1 = sc.BatchNorm1D(5)
    assert sc.BatchNorm1D.state_shapes(bn1.config()) == {k: v.shape for k, v in bn1.named_tensors()}


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_matches_torch_and_finite_differences(training, rng):
    layer = sc.BatchNorm1D(5, dtype=F64)
    layer.params["weight"][:] = rng.standard_normal(5)
    layer.params["bias"][:] = rng.standard_normal(5)
    layer.forward(rng.standard_normal((7, 5)) * 3 + 1)  # running statistics away from 0/1
    layer.train(training)
    tl = torch.nn.BatchNorm1d(5).double()
    tl.load_state_dict({k: torch.tensor(v) for k, v in layer.named_tensors()})
    tl.train(training)
    x = rng.standard_normal((6, 5))
    xt = torch.tensor(x, requires_grad=True)
    yt = tl(xt)
    assert_close(layer.forward(x), yt, "forward")
    dy = rng.standard_normal((6, 5))
    yt.backward(torch.tensor(dy))
    assert_close(layer.backward(dy), xt.grad, "dL/dx")
    assert_close(layer.grads["weight"], tl.weight.grad, "dL/dweight")
    assert_close(layer.grads["bias"], tl.bias.grad, "dL/dbias")
    assert_close(layer.buffers["running_var"], tl.running_var, "running_var")
    result = sc.gradcheck(layer, rng.standard_normal((4, 5)))
    assert result.ok, str(result)
    with pytest.raises(sc.ShapeError, match="2-D"):
        layer.forward(np.zeros((2, 5, 1, 1)))
