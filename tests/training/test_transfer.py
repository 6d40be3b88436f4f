"""Transfer learning (issue 24): ``Sequential.freeze`` / ``replace_head`` and ``train --init
--num-classes --freeze``, on our own models and on a torchvision model imported through ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import kernels
from scratchcnn.cli import main
from scratchcnn.nn.zoo import build_model
from scratchcnn.training.loop import fit
from tests.training.test_your_own_images import COLOURS, make_photos


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "cache"))


def _resnet(seed: int = 0) -> sc.Sequential:
    """resnet8 with BatchNorm statistics away from their initial values."""
    model = build_model("resnet8", seed=seed, num_classes=4, input_shape=(3, 12, 12))
    rng = np.random.default_rng(seed + 1)
    for _, layer in model.named_layers():
        if "running_var" in layer.buffers:
            layer.buffers["running_mean"][...] = rng.normal(
                0, 0.1, layer.buffers["running_mean"].shape
            )
            layer.buffers["running_var"][...] = rng.uniform(
                0.5, 1.5, layer.buffers["running_var"].shape
            )
    return model


def _batch(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 12, 12)).astype(np.float32), np.arange(n) % 4


def _steps(model: sc.Sequential, opt, steps: int = 3) -> None:
    loss_fn = sc.CrossEntropyLoss()
    model.train()
    for k in range(steps):
        x, y = _batch(seed=k)
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()


@pytest.mark.parametrize("mode", ["numpy", "engine"])
def test_frozen_layers_stay_bit_identical_and_the_rest_trains_as_a_model_of_its_own(mode):
    """Training with layers 0..4 frozen is training the rest on the frozen part's eval-mode
    outputs (BatchNorm with its running statistics); the frozen weights, BatchNorm statistics
    and step counts do not change by one bit, even with momentum and weight decay."""
    with kernels.using("numpy" if mode == "numpy" else "auto"):
        model = _resnet().freeze(4)
        assert model.frozen == 5
        before = model.state_dict()
        _steps(model, sc.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.01))
        after = model.state_dict()
        frozen_keys = [k for k in before if int(k.split(".")[0]) < 5]
        assert frozen_keys and all(np.array_equal(before[k], after[k]) for k in frozen_keys)
        assert not np.array_equal(before["11.weight"], after["11.weight"])
        assert not np.array_equal(before["7.body.0.weight"], after["7.body.0.weight"])

        # The same steps on the unfrozen rest, fed the frozen part's eval-mode outputs.
        ref = _resnet()
        body = sc.Sequential(ref.layers[:5]).eval()
        rest = sc.Sequential(ref.layers[5:])
        opt = sc.optim.SGD(rest, lr=0.1, momentum=0.9, weight_decay=0.01)
        loss_fn = sc.CrossEntropyLoss()
        for k in range(3):
            x, y = _batch(seed=k)
            rest.train()
            loss_fn.forward(rest.forward(body.forward(x)), y)
            rest.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        for i, layer in enumerate(rest.layers, start=5):
            for name, arr in layer.named_tensors():
                np.testing.assert_allclose(after[f"{i}.{name}"], arr, rtol=1e-5, atol=1e-6)


def test_no_gradient_is_computed_below_the_first_layer_that_learns():
    model = _resnet().freeze(4)
    calls = []
    for i in (0, 3, 4, 5):
        layer = model.layers[i]
        original = layer.backward

        def counted(dy, *args, i=i, original=original, **kw):
            calls.append(i)
            return original(dy, *args, **kw)

        layer.backward = counted
    loss_fn = sc.CrossEntropyLoss()
    x, y = _batch()
    loss_fn.forward(model.forward(x), y)
    assert model.backward(loss_fn.backward(), input_grad=False) is None
    assert calls == [5]  # layer 5 learns; 4 and below run no backward
    # dL/dx (saliency, explain) still goes through every layer.
    calls.clear()
    loss_fn.forward(model.forward(x), y)
    assert model.backward(loss_fn.backward()).shape == x.shape
    assert calls == [5, 4, 3, 0]


def test_frozen_batchnorm_keeps_its_statistics_and_train_eval_round_trip():
    model = _resnet().freeze(1)
    mean = model.layers[1].buffers["running_mean"].copy()
    model.train()
    assert not model.layers[0].training and not model.layers[1].training
    assert model.layers[2].training and model.layers[3].training
    model.forward(_batch()[0])
    np.testing.assert_array_equal(model.layers[1].buffers["running_mean"], mean)
    assert not np.array_equal(  # an unfrozen BatchNorm does move
        model.layers[3].body.layers[1].buffers["running_mean"],
        _resnet().layers[3].body.layers[1].buffers["running_mean"],
    )
    model.unfreeze()
    assert model.frozen == 0 and model.layers[1].training


def test_optimizer_given_parameters_and_clipping_skip_frozen_layers():
    model = _resnet().freeze(8)
    before = model.state_dict()
    _steps(model, sc.optim.Adam(model.parameters(), lr=0.01, max_grad_norm=0.5))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if int(k.split(".")[0]) < 9)
    trainable = [k for k, _, _ in model.named_trainable_parameters()]
    assert trainable == ["11.weight", "11.bias"]
    assert len(list(model.named_parameters())) > 2  # parameters() lists them all, as torch


def test_freeze_survives_save_load_and_config(tmp_path):
    model = _resnet().freeze(-4)
    path = model.save(tmp_path / "m.npz")
    back = sc.Sequential.load(path)
    assert back.frozen == model.frozen == 9
    assert back.config() == model.config()
    assert "frozen" not in _resnet().config()  # others' configs read as before


def test_a_split_batch_trains_a_frozen_model_as_one_thread_does():
    x = np.random.default_rng(0).standard_normal((32, 3, 12, 12)).astype(np.float32)
    data = sc.data.Dataset(x, np.arange(32) % 4, classes=list("abcd"), name="noise")
    runs = {}
    for threads in (1, 2):
        model = _resnet().freeze(5)
        frozen = {k: v for k, v in model.state_dict().items() if int(k.split(".")[0]) < 6}
        opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
        fit(model, data, epochs=1, batch_size=16, optimizer=opt, progress=False, threads=threads)
        state = model.state_dict()
        assert all(np.array_equal(state[k], v) for k, v in frozen.items())
        runs[threads] = state
    for key, value in runs[1].items():
        np.testing.assert_allclose(runs[2][key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_replace_head_dense_and_1x1_conv():
    model = _resnet().freeze(9)
    model.replace_head(7, rng=0)
    assert model.layers[11].params["weight"].shape == (7, 64)
    assert model.predict(_batch()[0]).shape == (8, 7)
    assert model.frozen == 10
    squeeze = sc.Sequential(
        [sc.Conv2D(3, 8, 3), sc.ReLU(), sc.Conv2D(8, 10, 1), sc.GlobalAvgPool2D(), sc.Flatten()],
        input_shape=(3, 12, 12),
    ).astype(np.float64)
    squeeze.replace_head(2, rng=1)
    head = squeeze.layers[2]
    assert isinstance(head, sc.Conv2D) and head.params["weight"].shape == (2, 8, 1, 1)
    assert head.params["weight"].dtype == np.float64
    assert squeeze.predict(np.zeros((1, 3, 12, 12))).shape == (1, 2)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: m.freeze(12), "does not exist"),
        (lambda m: m.freeze("3.body.0"), "inside block 3"),
        (lambda m: m.freeze(11), "no parameter to train"),
        (lambda m: m.freeze(True), "layer number"),
        (lambda m: m.replace_head(0), "num_classes"),
        (
            lambda m: sc.Sequential([sc.Conv2D(3, 4, 3), sc.BatchNorm2D(4)]).replace_head(2),
            "Dense or a 1x1",
        ),
    ],
)
def test_freeze_and_replace_head_refuse_in_one_line(call, match):
    with pytest.raises(sc.ConfigError, match=match):
        call(_resnet())


def test_schema_refuses_a_bad_frozen_count(tmp_path):
    from scratchcnn.checkpoint.schema import SchemaError, check_model_config

    config = _resnet().config()
    for bad in (True, -1, 12, "3"):
        with pytest.raises(SchemaError, match="frozen"):
            check_model_config({**config, "frozen": bad})
    check_model_config({**config, "frozen": 11})


# --- the command line -------------------------------------------------------------------
def _pretrained(tmp_path: Path) -> Path:
    """A 10-class LeNet-5 trained briefly on colour images (3x16x16): a stand-in for a
    pretrained model with other classes than the user's."""
    model = build_model("lenet5", num_classes=10, input_shape=(3, 16, 16), seed=3)
    return model.save(tmp_path / "pretrained.npz")


def test_train_init_on_a_folder_replaces_the_head_and_freezes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos", per_class=8, size=(20, 24))
    base = _pretrained(tmp_path)
    args = ["train", "--init", str(base), "--data-dir", "photos", "--freeze", "5"]
    assert main([*args, "--epochs", "1", "--batch-size", "8", "--out", "ft"]) == 0
    out = capsys.readouterr().out
    # The images are read at the model's own size and channels.
    assert "(3x16x16 -> 3 classes, " in out
    assert "new head (layer 11): 3 outputs in place of 10" in out
    assert "layers 0-5 frozen (" in out and "fine-tuning: 0.1 x the recipe's rate" in out
    ckpt = sc.load_checkpoint(tmp_path / "ft" / "model.npz")
    assert ckpt.model.frozen == 6 and ckpt.extra["classes"] == list(COLOURS)
    old = sc.load_checkpoint(base).model.state_dict()
    new = ckpt.model.state_dict()
    for key in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert np.array_equal(old[key], new[key]), key
    assert not np.array_equal(old["7.weight"], new["7.weight"])
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["freeze"] == "5" and run["image_size"] == [16, 16] and run["channels"] == 3

    assert main(["info", "ft/model.npz"]) == 0
    info = capsys.readouterr().out
    assert "frozen: layers 0-5" in info
    assert [line.split()[-1] for line in info.splitlines() if line[:2] in ("0 ", "6 ")] == [
        "frozen",
        "0",
    ]
    # Resume goes on with the same head and the same frozen layers.
    assert main(["train", "--out", "ft", "--resume", "--epochs", "2", "--quiet"]) == 0
    again = sc.load_checkpoint(tmp_path / "ft" / "model.npz").model.state_dict()
    assert np.array_equal(again["0.weight"], old["0.weight"])
    assert main(["evaluate", "ft/model.npz", "--data-dir", "photos"]) == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--freeze", "3"], "--freeze: only with --init"),
        (["--num-classes", "3"], "--num-classes: only with --init"),
        (["--init", "P", "--num-classes", "4"], "--num-classes 4, but the data has 3 classes"),
        (["--init", "P", "--freeze", "99"], "--freeze 99: freeze: layer 99 does not exist"),
        (["--init", "P", "--freeze", "11"], "leaves no parameter to train"),
        (["--init", "P", "--freeze", "3.body"], "expected a layer number"),
    ],
)
def test_transfer_options_refuse_in_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos", per_class=10, size=(16, 16))
    base = str(_pretrained(tmp_path))
    extra = [base if a == "P" else a for a in extra]
    try:
        code = main(["train", "--data-dir", "photos", "--epochs", "1", *extra])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("model.npz"))


# --- a torchvision model, imported, fine-tuned, explained and exported --------------------
@pytest.mark.slow
def test_imported_mobilenet_fine_tunes_explains_and_exports(tmp_path, capsys, monkeypatch):
    """torchvision's MobileNetV2 (random weights, 3x32x32) exported by torch with BatchNorm
    kept, imported, fine-tuned with a frozen body on a folder of 3 classes, explained with
    Grad-CAM, exported again and run in onnxruntime."""
    from benchmarks._torchvision import build
    from tests.onnx.helpers import rel_err, run_ort
    from tests.onnx.test_onnx_torchvision import torch_export

    monkeypatch.chdir(tmp_path)
    net = build("mobilenet_v2", width_mult=0.25)
    torch_export(net, (3, 32, 32), tmp_path / "m.onnx", do_constant_folding=False)
    assert main(["import", "m.onnx", "m.npz"]) == 0
    imported = sc.load_checkpoint(tmp_path / "m.npz").model
    assert any(type(la).__name__ == "BatchNorm2D" for _, la in imported.named_layers())
    head = imported.head_index()
    make_photos(tmp_path / "photos", per_class=6, size=(32, 32))
    freeze = str(head - 2)
    args = ["train", "--init", "m.npz", "--data-dir", "photos", "--freeze", freeze]
    assert main([*args, "--epochs", "1", "--batch-size", "6", "--threads", "2", "--out", "ft"]) == 0
    out = capsys.readouterr().out
    assert f"new head (layer {head}): 3 outputs in place of 1000" in out
    tuned = sc.load_checkpoint(tmp_path / "ft" / "model.npz").model
    before, after = imported.state_dict(), tuned.state_dict()
    for key in before:
        if int(key.split(".")[0]) <= int(freeze):
            assert np.array_equal(before[key], after[key]), key

    photo = next((tmp_path / "photos" / "red").iterdir())
    assert main(["predict", "ft/model.npz", str(photo)]) == 0
    printed = capsys.readouterr().out
    assert any(name in printed for name in COLOURS), printed  # by the data's class names
    assert main(["explain", "ft/model.npz", str(photo), "--out", "ex"]) == 0
    assert (tmp_path / "ex" / "gradcam.png").stat().st_size > 0
    assert main(["export", "ft/model.npz", "ft.onnx"]) == 0
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    assert rel_err(run_ort(tmp_path / "ft.onnx", x), tuned.predict(x)) <= 1e-4
    # The frozen body still computes what the imported one did, bit for bit.
    body = sc.Sequential(tuned.layers[: int(freeze) + 1]).eval()
    ref = sc.Sequential(imported.layers[: int(freeze) + 1]).eval()
    np.testing.assert_array_equal(body.predict(x), ref.predict(x))
