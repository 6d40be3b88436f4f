"""scratchcnn export / import / train --init, end to end; no output file left on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import scratchcnn as sc
from scratchcnn.cli import main
from scratchcnn.nn.zoo import lenet5
from tests.onnx.helpers import graph_model, rel_err, run_ort, save

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture
def ckpt(tmp_path):
    return sc.save(lenet5(seed=0), tmp_path / "model.npz", extra={"classes": CLASSES})


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scratchcnn: error: "), err
    return err


def test_export_then_import_round_trip(ckpt, tmp_path, capsys, rng):
    onnx_path, back = tmp_path / "m.onnx", tmp_path / "back.npz"
    assert main(["export", str(ckpt), str(onnx_path), "--opset", "13"]) == 0
    assert "opset 13" in capsys.readouterr().out
    model = sc.load(ckpt)
    x = rng.uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    assert rel_err(run_ort(onnx_path, x), model.predict(x)) <= 1e-5
    assert main(["import", str(onnx_path), str(back)]) == 0
    assert "12 layers" in capsys.readouterr().out
    loaded = sc.load_checkpoint(back)
    assert loaded.extra["classes"] == CLASSES  # carried through the ONNX metadata
    assert loaded.model.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(loaded.model.predict(x), model.predict(x))
    # The imported checkpoint is a normal one: info, predict and export work on it.
    assert main(["info", str(back)]) == 0
    assert "total parameters: 61,706" in capsys.readouterr().out
    assert main(["export", str(back), str(tmp_path / "again.onnx")]) == 0


def test_import_drops_a_final_softmax_and_takes_class_names(tmp_path, capsys):
    nodes = [
        helper.make_node("Gemm", ["x", "B"], ["z"]),
        helper.make_node("Softmax", ["z"], ["y"]),
    ]
    path = save(graph_model(nodes, ["N", 4], None, {"B": np.ones((4, 3), np.float32)}),
                tmp_path / "s.onnx")  # fmt: skip
    out = tmp_path / "s.npz"
    assert main(["import", str(path), str(out), "--classes", "a, b,c"]) == 0
    assert "dropped the final Softmax" in capsys.readouterr().out
    ckpt = sc.load_checkpoint(out)
    assert [type(la).__name__ for la in ckpt.model] == ["Dense"]
    assert ckpt.extra["classes"] == ["a", "b", "c"]
    assert main(["import", str(path), str(tmp_path / "x.npz"), "--classes", "a,b"]) == 2
    assert "--classes gives 2 class names but the model has output shape (N, 3)" in _err(capsys)
    assert not (tmp_path / "x.npz").exists()


def test_import_of_unsupported_graph_is_one_line_and_no_file(tmp_path, capsys):
    nodes = [helper.make_node("Resize", ["x"], ["y"], name="/up/Resize")]
    path = save(graph_model(nodes, ["N", 3, 4, 4]), tmp_path / "u.onnx")
    out = tmp_path / "u.npz"
    assert main(["import", str(path), str(out)]) == 2
    assert 'node "/up/Resize" (Resize) is not supported' in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.onnx"]


def test_export_failures_leave_no_file(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "missing.npz"), str(out)]) == 2
    assert "no such checkpoint" in _err(capsys)
    ckpt = sc.save(lenet5(seed=0), tmp_path / "c.npz")
    assert main(["export", str(ckpt), str(out), "--opset", "9"]) == 2
    assert "opset 9 is not supported" in _err(capsys)
    assert not out.exists()


@pytest.mark.slow
def test_train_init_from_an_imported_model(ckpt, tmp_path, capsys):
    onnx_path, imported = tmp_path / "m.onnx", tmp_path / "imported.npz"
    assert main(["export", str(ckpt), str(onnx_path)]) == 0
    assert main(["import", str(onnx_path), str(imported)]) == 0
    run = tmp_path / "run"
    args = ["train", "--init", str(imported), "--epochs", "1", "--limit", "256", "--quiet"]
    assert main([*args, "--out", str(run)]) == 0
    settings = json.loads((run / "run.json").read_text())
    assert settings["init"] == str(imported) and settings["model"] is None
    trained = sc.load(run / "model.npz")
    start = sc.load(imported)
    assert [type(a) for a in trained] == [type(b) for b in start]
    assert not np.array_equal(trained[0].params["weight"], start[0].params["weight"])
    # --resume of an --init run rebuilds the same network from run.json.
    assert main(["train", "--out", str(run), "--epochs", "2", "--resume", "--quiet"]) == 0
    assert sc.load_checkpoint(run / "model.npz").epoch == 2
    # The same network named by --model is accepted; export works on the result.
    assert main([*args, "--model", "lenet5", "--out", str(tmp_path / "r2")]) == 0
    assert main(["export", str(run / "model.npz"), str(tmp_path / "t.onnx")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--model", "tiny_cnn"], "holds another network than --model tiny_cnn"),
        (["--dataset", "shapes"], r"takes images \(1, 28, 28\) but data set 'shapes'"),
    ],
)
def test_train_init_refuses_what_does_not_fit(ckpt, tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    assert main(["train", "--init", str(ckpt), "--out", str(out), "--quiet", *extra]) == 2
    assert __import__("re").search(match, _err(capsys))
    assert not out.exists()


def test_train_init_gives_a_model_with_other_outputs_a_new_head(tmp_path, capsys):
    """A 3-class model on 10-class data: its Dense head is replaced (issue 24); a model
    whose last layer with parameters is not a head is refused in one line."""
    ckpt = sc.save(lenet5(num_classes=3, seed=0), tmp_path / "three.npz")
    out = tmp_path / "run"
    args = ["train", "--init", str(ckpt), "--epochs", "1", "--limit", "64", "--out", str(out)]
    assert main(args) == 0
    assert "new head (layer 11): 10 outputs in place of 3" in capsys.readouterr().out
    assert sc.load_checkpoint(out / "model.npz").model.layers[11].out_features == 10
    odd = sc.Sequential(
        [sc.Conv2D(1, 3, 3), sc.Flatten(), sc.BatchNorm1D(3 * 26 * 26)], input_shape=(1, 28, 28)
    )
    ckpt = sc.save(odd, tmp_path / "odd.npz")
    out = tmp_path / "run2"
    assert main(["train", "--init", str(ckpt), "--out", str(out), "--quiet"]) == 2
    assert "Dense or a 1x1 Conv2D" in _err(capsys)
    assert not out.exists()
