"""Hostile input, round 3: the doors added since the checkpoint reader was hardened (run
folders, plots, pictures, writers, TensorBoard, thread counts, safetensors, imported models).

Every case is generated here. The command-line cases run through ``scratchcnn.cli.main`` in
one child process (``hostile_driver.py``) with an address-space cap of 2 GiB and a 60-second
alarm per case, and each must end with status 0 or 2, exactly one stderr line on status 2
(none on 0), no traceback, nothing partial on disk, and device nodes and symlink targets
untouched.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.checkpoint.safetensors import load_weights
from scratchcnn.errors import CheckpointError, FileWriteError
from scratchcnn.nn.zoo import shapes_net

from .conftest import child_env, cli, error_line, run, run_cli, temp_files

DRIVER = Path(__file__).with_name("hostile_driver.py")
MEMORY_CAP = 2 << 30  # bytes of address space for the child (LeNet training needs < 1 GiB)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="FIFOs, rlimits: Linux")


def _capped() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def drive(tmp_path: Path, cases: list[tuple[list[str], int]]) -> list[dict]:
    """Run every ``(argv, expected status)`` in one capped child; check the contract."""
    (tmp_path / "cases.json").write_text(json.dumps([[str(a) for a in c] for c, _ in cases]))
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "cases.json"), str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=child_env(1, MPLBACKEND="Agg"),
        preexec_fn=_capped,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads((tmp_path / "r.json").read_text())["cases"]
    wrong = []
    for case, (_, want) in zip(got, cases, strict=True):
        where = " ".join(case["argv"])
        lines = case["stderr"].splitlines()
        if case["status"] != want:
            wrong.append((where, case["status"], case["stderr"] or case["stdout"][-300:]))
        elif want == 2 and not (len(lines) == 1 and lines[0].startswith("scratchcnn: error: ")):
            wrong.append((where, "not one error line", lines))
        elif want == 0 and lines:
            wrong.append((where, "output on stderr", lines))
    assert not wrong, wrong
    return got


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished two-epoch shapes_net run folder (model.npz, run.json, metrics.jsonl)."""
    out = tmp_path_factory.mktemp("run") / "r0"
    argv = ("train", "--model", "shapes_net", "--dataset", "shapes", "--limit", "64")
    result = run_cli(*argv, "--epochs", "2", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def _copy_run(run_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in run_dir.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _replace(path: Path, by: str) -> None:
    """Swap a run file for a FIFO, a link to /dev/zero, or JSON nested 100,000 deep."""
    path.unlink()
    if by == "fifo":
        os.mkfifo(path)
    elif by == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)


# --------------------------------------------------------------------------- run folders
def test_special_and_crafted_run_files(tmp_path, run_dir):
    """run.json and metrics.jsonl that are FIFOs, /dev/zero or nested 100,000 deep: one line
    each, no hang (a FIFO would block a plain open), no RecursionError."""
    cases = []
    for by in ("fifo", "dev-zero", "deep"):
        resumed = _copy_run(run_dir, tmp_path / f"resume-{by}")
        _replace(resumed / "run.json", by)
        cases.append((["train", "--out", resumed, "--resume", "--epochs", "3", "--quiet"], 2))
        plotted = _copy_run(run_dir, tmp_path / f"plot-run-{by}")
        _replace(plotted / "run.json", by)
        cases.append((["plot", plotted], 2))
        metrics = _copy_run(run_dir, tmp_path / f"plot-metrics-{by}")
        _replace(metrics / "metrics.jsonl", by)
        cases.append((["plot", metrics], 2))
    got = drive(tmp_path, cases)
    assert "FIFO" in got[0]["stderr"] and "character device" in got[3]["stderr"]
    assert "recursion" in got[8]["stderr"] or "not valid JSON" in got[8]["stderr"]


def _metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_plot_survives_huge_losses_infinite_and_thousands_of_grad_norms(tmp_path, run_dir):
    """A loss of 1e308 (matplotlib's tick arithmetic overflows), an inf gradient norm, and
    10,000 grad-norm keys (a 10,000-entry legend took 89 s): status 0, no warning lines."""
    cases = []
    records = _metrics_lines(run_dir)
    variants = {
        "huge-loss": lambda r: r.update(train_loss=1e308, test_loss=1e308),
        "inf-norm": lambda r: r.update(grad_norms={"0.weight": float("inf"), "0.bias": 1.0}),
        "many-keys": lambda r: r.update(
            grad_norms={f"layer{i}.weight": 1.0 + r["epoch"] for i in range(10_000)}
        ),
    }
    for name, change in variants.items():
        folder = _copy_run(run_dir, tmp_path / name)
        lines = []
        for record in records:
            record = dict(record)
            change(record)
            lines.append(json.dumps(record))  # json writes inf as Infinity, as Python reads
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        cases.append((["plot", folder], 0))
    drive(tmp_path, cases)
    for name in variants:
        assert (tmp_path / name / "curves.png").stat().st_size > 10_000
        assert (tmp_path / name / "grad_norms.png").stat().st_size > 10_000
        assert temp_files(tmp_path / name) == []


# --------------------------------------------------------------------------- writers
def test_writers_refuse_devices_symlinks_folders_and_their_own_input(tmp_path, run_dir):
    model = run_dir / "model.npz"
    before = model.read_bytes()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    onnx_file = tmp_path / "m.onnx"
    explain_out = tmp_path / "explain"
    explain_out.mkdir()
    (explain_out / "saliency.png").symlink_to(target)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((5, 5), np.uint8)).save(image)
    cases = [
        (["export", model, model], 2),
        (["export", model, "/dev/null"], 2),
        (["export", model, link], 2),
        (["export", model, dangling], 2),
        (["export", model, fifo], 2),
        (["export", model, tmp_path], 2),
        (["export", model, onnx_file], 0),
        (["import", onnx_file, onnx_file], 2),
        (["explain", model, image, "--out", explain_out], 2),
    ]
    got = drive(tmp_path, cases)
    assert "is also the input" in got[0]["stderr"]
    assert "character device" in got[1]["stderr"]
    assert "symbolic link" in got[2]["stderr"] and "symbolic link" in got[3]["stderr"]
    assert "FIFO" in got[4]["stderr"] and "directory" in got[5]["stderr"]
    assert model.read_bytes() == before
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert link.is_symlink() and target.read_text() == "keep me"
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert (explain_out / "saliency.png").is_symlink()
    assert temp_files(tmp_path) == [] and temp_files(explain_out) == []


def test_save_applies_the_loaders_checks(tmp_path):
    """What we write, we can read: a model the loader would refuse is not written at all."""

    def refused(model: sc.Sequential, **extra) -> str:
        path = tmp_path / "x.npz"
        with pytest.raises(CheckpointError) as err:
            sc.save(model, path, **extra)
        assert not path.exists() and temp_files(tmp_path) == []
        assert str(err.value).startswith(f"{path}: not written: ")
        return str(err.value)

    inf = shapes_net(seed=0)
    inf.layers[0].params["weight"][0, 0, 0, 0] = np.inf  # as float64 1e300 becomes in float32
    assert "NaN or inf" in refused(inf)
    assert "extra.classes" in refused(shapes_net(seed=0), extra={"classes": ["x" * 1000]})
    wide = sc.Sequential([sc.Conv2D(1, 1, 3, padding=4096)], input_shape=(1, 5, 5))
    assert "more than 16,777,216 values" in refused(wide)
    strided = sc.Sequential([sc.Conv2D(1, 1, 3, stride=2**31)], input_shape=(1, 5, 5))
    assert "stride" in refused(strided)
    block = sc.ReLU()
    for _ in range(40):  # residual blocks nested 40 deep
        block = sc.Residual(sc.Sequential([block]))
    assert "nested more than" in refused(sc.Sequential([block], input_shape=(1, 4, 4)))
    sched_model = shapes_net(seed=0)
    opt = sc.optim.SGD(sched_model, lr=0.1)
    sched = sc.optim.CosineAnnealingLR(opt, T_max=10**20)
    assert "T_max" in refused(sched_model, optimizer=opt, scheduler=sched)


def test_epochs_beyond_what_a_checkpoint_records_are_refused_up_front():
    result = run_cli("train", "--epochs", str(10**20), "--limit", "64")
    line = error_line(result)
    assert "--epochs" in line and "2,147,483,647" in line


def test_safetensors_dtype_that_is_not_a_string(tmp_path):
    model = shapes_net(seed=0)
    for dtype in (["F32"], {"a": 1}, 3):
        header = {
            key: {"dtype": dtype, "shape": list(v.shape), "data_offsets": [0, v.nbytes]}
            for key, v in list(model.state_dict().items())[:1]
        }
        blob = json.dumps(header).encode()
        path = tmp_path / "w.safetensors"
        path.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(64))
        with pytest.raises(CheckpointError, match="has dtype"):
            load_weights(model, path)


# --------------------------------------------------------------------------- pictures
def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death

    return apply


def test_pictures_on_a_full_disk_leave_the_earlier_ones_whole(tmp_path, run_dir):
    folder = _copy_run(run_dir, tmp_path / "run")
    assert run_cli("plot", folder).returncode == 0
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    assert len(before) == 6
    result = run(cli("plot", folder), preexec_fn=_limit_file_size(20_000))
    assert "cannot write it (File too large)" in error_line(result)
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == before
    assert temp_files(folder) == []


def test_tensorboard_on_a_full_disk_stops_training_with_one_line(tmp_path):
    pytest.importorskip("tensorboardX")  # the [tensorboard] extra; installed by the tests
    out = tmp_path / "tb"
    argv = ("train", "--model", "shapes_net", "--dataset", "shapes", "--limit", "64")
    result = run(
        cli(*argv, "--epochs", "200", "--quiet", "--tensorboard", "--out", out),
        preexec_fn=_limit_file_size(30_000),
        timeout=300,  # before: the writer thread died and training blocked for ever
    )
    line = error_line(result)
    assert "cannot write TensorBoard events (File too large)" in line
    assert sc.load_checkpoint(out / "model.npz").epoch >= 1  # the last checkpoint is whole


# --------------------------------------------------------------------------- models
def test_models_that_cannot_serve_a_command_say_so(tmp_path):
    from PIL import Image

    image = tmp_path / "d.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(image)
    mlp = tmp_path / "mlp.npz"
    sc.save(sc.Sequential([sc.Flatten(), sc.Dense(784, 10)], input_shape=(784,)), mlp)
    huge = tmp_path / "huge.npz"  # two x1e30 rescales: 1e60 overflows float32
    layers = [sc.Rescale(1e30, 0), sc.Rescale(1e30, 0), sc.Flatten(), sc.Dense(784, 10)]
    sc.save(sc.Sequential(layers, input_shape=(1, 28, 28)), huge)
    cases = [
        (["predict", mlp, image], 2),
        (["explain", mlp, image, "--out", tmp_path / "e1"], 2),
        (["predict", huge, image], 2),
        (["predict", huge, image, "--json"], 2),
        (["explain", huge, image, "--out", tmp_path / "e2"], 2),
        (["evaluate", huge, "--dataset", "mnist-5k"], 2),
    ]
    got = drive(tmp_path, cases)
    assert "takes (N, 784), not images" in got[0]["stderr"]
    assert all("not finite" in c["stderr"] for c in got[2:])
    assert all("nan" not in c["stdout"].lower() for c in got)


def test_names_from_files_cannot_drive_the_terminal(tmp_path):
    """Class names with an ANSI escape, a carriage return and a newline: printed escaped, on
    the lines they belong to."""
    from PIL import Image

    image = tmp_path / "d.png"
    Image.fromarray(np.full((5, 5), 200, np.uint8)).save(image)
    ckpt = tmp_path / "m.npz"
    model = sc.Sequential([sc.Flatten(), sc.Dense(25, 2)], input_shape=(1, 5, 5))
    sc.save(model, ckpt, extra={"classes": ["\x1b[2J\x1b[31mred", "two\nscratchcnn: forged"]})
    result = run_cli("predict", ckpt, image)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout
    assert result.stdout.count("\n") == 1 and "two\\nscratchcnn: forged" in result.stdout


def test_thread_counts_beyond_the_cores_are_refused(tmp_path):
    for argv, env in (
        (("--threads", "100000"), {}),
        ((), {"SCRATCHCNN_NUM_THREADS": "100000"}),
    ):
        result = run(
            cli("train", "--limit", "64", "--epochs", "1", "--out", tmp_path / "t", *argv),
            env={**child_env(1), **env},
        )
        assert "ask for at most" in error_line(result)
    assert not (tmp_path / "t" / "model.npz").exists()


def test_writer_check_in_process(tmp_path):
    from scratchcnn.checkpoint import atomic_write_bytes

    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileWriteError, match="symbolic link"):
        atomic_write_bytes(tmp_path / "link", lambda fh: fh.write(b"y"))
    with pytest.raises(FileWriteError, match="is also the input"):
        atomic_write_bytes(tmp_path / "real", lambda fh: fh.write(b"y"), inputs=[tmp_path / "link"])
    assert (tmp_path / "real").read_text() == "x"


# --------------------------------------------------------------------------- ONNX files
def _onnx_model(nodes, in_shape, inits=None, meta=None, elem=1):
    """A graph with input ``x`` (float32 unless ``elem``) and output ``y`` (shape unstated)."""
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, in_shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, meta)
    return model


def _nested_residuals(depth: int):
    """x -> relu -> (... depth blocks, each inside the last ...) + x: Residual in Residual."""
    from onnx import helper

    nodes = []

    def block(k: int, inp: str) -> str:
        nodes.append(helper.make_node("Relu", [inp], [f"h{k}"]))
        inner = block(k - 1, f"h{k}") if k > 1 else f"h{k}"
        nodes.append(helper.make_node("Add", [inner, inp], [f"a{k}"]))
        return f"a{k}"

    nodes.append(helper.make_node("Identity", [block(depth, "x")], ["y"]))
    return _onnx_model(nodes, [1, 1, 4, 4])


def _concat_chain(steps: int):
    """``steps`` times: Concat a 524,288-value constant with itself, Slice the first half
    back. Each result is half the per-value cap; 40 of them exceed the per-graph total."""
    from onnx import helper, numpy_helper

    half = np.tile(np.array([1, -1], np.int64), 1 << 18)
    nodes = [helper.make_node("Constant", [], ["d0"], value=numpy_helper.from_array(half))]
    for i in range(steps):
        nodes.append(helper.make_node("Concat", [f"d{i}", f"d{i}"], [f"c{i}"], axis=0))
        nodes.append(helper.make_node("Slice", [f"c{i}", "s0", "s1"], [f"d{i + 1}"]))
    nodes.append(helper.make_node("Slice", [f"d{steps}", "s0", "two"], ["t"]))
    nodes.append(helper.make_node("Reshape", ["x", "t"], ["y"]))
    inits = {
        "s0": np.array([0], np.int64),
        "s1": np.array([1 << 19], np.int64),
        "two": np.array([2], np.int64),
    }
    return _onnx_model(nodes, [1, 1, 8, 8], inits)


def _hostile_onnx(folder: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (ONNX file, extra import arguments, what the error line must say; "" for a
    file that imports)."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))

    def conv(**attrs):
        w = {"w": np.ones((1, 1, 3, 3), np.float32)}
        return _onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], [1, 1, 8, 8], w)

    gemm = {"b": np.full((4, 3), 10, np.float32)}
    mul = [
        helper.make_node("Mul", ["x", "s"], ["m1"]),
        helper.make_node("Mul", ["m1", "s"], ["m2"]),
        helper.make_node("Flatten", ["m2"], ["f"]),
        helper.make_node("Gemm", ["f", "b"], ["y"]),
    ]
    mul_inits = {"s": np.array(1e30, np.float32), "b": np.ones((784, 10), np.float32)}
    relu2 = [helper.make_node("Relu", ["x"], ["y"])]
    models = {
        # folding: sized before it is allocated (4 TiB, 3 million, 40 x 1 million values)
        "broadcast": (
            [
                const("a", np.zeros((1, 1 << 20), np.float32)),
                const("b", np.zeros((1 << 20, 1), np.float32)),
                helper.make_node("Add", ["a", "b"], ["c"]),
                helper.make_node("Reshape", ["x", "c"], ["y"]),
            ],
            [1, 1, 8, 8],
            None,
            None,
            "folds to 1,099,511,627,776 values; too many",
        ),
        "concat-wide": (
            [
                const("c", np.ones(1000, np.int64)),
                helper.make_node("Concat", ["c"] * 3000, ["d"], axis=0),
                helper.make_node("Reshape", ["x", "d"], ["y"]),
            ],
            [1, 1, 8, 8],
            None,
            None,
            "folds to 3,000,000 values; too many",
        ),
        "dropout-ratio": (
            [helper.make_node("Dropout", ["x", "r"], ["y"])],
            [1, 4],
            {"r": np.array([0.1, 0.2], np.float32)},
            None,
            "input ratio has shape [2]",
        ),
        "cast-nan": (
            [
                const("c", np.array([np.nan, -1], np.float32)),
                helper.make_node("Cast", ["c"], ["ci"], to=TensorProto.INT64),
                helper.make_node("Reshape", ["x", "ci"], ["y"]),
            ],
            [1, 1, 8, 8],
            None,
            None,
            "(Cast): casts NaN or inf to int64",
        ),
        "gemm-alpha": (
            [helper.make_node("Gemm", ["x", "b"], ["y"], alpha=1e38)],
            [1, 4],
            gemm,
            None,
            "(Gemm): weight holds values up to 1e+39",
        ),
        "weights-1e300": (
            [helper.make_node("Gemm", ["x", "b"], ["y"])],
            [1, 4],
            {"b": np.full((4, 3), 1e300)},
            None,
            "beyond the range of float32",
        ),
        "mul-1e60": (mul, [1, 1, 28, 28], mul_inits, None, "scale=1e+60"),
        "deep-classes": (
            relu2,
            [1, 2],
            None,
            {"scratchcnn.classes": "[" * 100_000 + "]" * 100_000},
            "scratchcnn.classes is JSON nested too deeply",
        ),
        "long-class": (
            relu2,
            [1, 2],
            None,
            {"scratchcnn.classes": json.dumps(["x" * 1000, "b"])},
            "of at most 256 characters (it has 1,000)",
        ),
        "outputs-2^30": (
            [helper.make_node("Conv", ["x", "w"], ["y"])],
            [1, 1, 4096, 4096],
            {"w": np.ones((64, 1, 1, 1), np.float32)},
            None,
            "1,073,741,824 values per image, more than the 16,777,216",
        ),
    }
    files: dict[str, tuple[Path, list[str], str]] = {}
    for name, (nodes, shape, inits, meta, want) in models.items():
        path = folder / f"{name}.onnx"
        path.write_bytes(_onnx_model(nodes, shape, inits, meta).SerializeToString())
        files[name] = (path, [], want)
    for name, model, want in (
        ("strides-2^31", conv(strides=[2**31, 2**31]), "strides=[2147483648, 2147483648]"),
        ("pads-2^31", conv(pads=[2**31] * 4), "attribute pads=[2147483648,"),
        ("pads-4096", conv(pads=[4096] * 4), "67,207,204 values per image"),
        ("nested-40", _nested_residuals(40), "nested more than 32 levels deep"),
        ("concat-chain-40", _concat_chain(40), "that the constants computed in one graph"),
        ("concat-chain-5", _concat_chain(5), ""),
    ):
        path = folder / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        files[name] = (path, [], want)
    two = folder / "two-outputs.onnx"
    two.write_bytes(_onnx_model(relu2, [1, 2]).SerializeToString())
    files["classes-long"] = (two, ["--classes", "a," + "b" * 300], "name 2 is 300 characters")
    files["classes-empty"] = (two, ["--classes", "a,,b"], "name 2 of 3 is empty")
    files["classes-count"] = (two, ["--classes", "a,b,c"], "--classes gives 3 class names")
    files["classes-fine"] = (two, ["--classes", "cat, dog"], "")
    mlp = {"b": np.ones((784, 10), np.float32)}
    path = folder / "mlp.onnx"
    gemm_node = [helper.make_node("Gemm", ["x", "b"], ["y"])]
    path.write_bytes(_onnx_model(gemm_node, [1, 784], mlp).SerializeToString())
    files["mlp"] = (path, [], "")
    return files


def test_onnx_files_that_are_not_files_are_refused_unread(tmp_path):
    """A FIFO (blocked for ever), /dev/zero and a link to it (read until memory ran out), a
    folder, and a sparse file beyond protobuf's 2 GiB: one line each, nothing written."""
    pytest.importorskip("onnx")
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    link = tmp_path / "zero.onnx"
    link.symlink_to("/dev/zero")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    sparse = tmp_path / "sparse.onnx"
    with open(sparse, "wb") as fh:
        fh.truncate(2**31 + 10)  # no blocks on disk: only its size is ever looked at
    out = tmp_path / "out"
    out.mkdir()
    sources = {"fifo": fifo, "dev-zero": "/dev/zero", "link": link, "folder": folder}
    sources["sparse"] = sparse
    cases = [(["import", src, out / f"{name}.npz"], 2) for name, src in sources.items()]
    got = drive(tmp_path, cases)
    text = [c["stderr"] for c in got]
    assert "is a FIFO (named pipe), not a regular ONNX file" in text[0]
    assert "is a character device" in text[1] and "is a character device" in text[2]
    assert "is a directory, not an ONNX file" in text[3]
    assert "more than the 2,147,483,647-byte limit for an ONNX file" in text[4]
    assert list(out.iterdir()) == []
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_crafted_onnx_graphs_import_or_refuse_in_one_line(tmp_path):
    """Every crafted graph: status 0 with one line and a checkpoint that loads, or status 2
    with one line naming the problem (no traceback, no numpy warning) and no file at all."""
    pytest.importorskip("onnx")
    files = _hostile_onnx(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (["import", path, out / f"{name}.npz", *extra], 0 if not want else 2)
        for name, (path, extra, want) in files.items()
    ]
    from PIL import Image

    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "d.png")
    # the imported MLP takes (N, 784): predict and explain read images, and say so
    cases.append((["predict", out / "mlp.npz", tmp_path / "d.png"], 2))
    cases.append((["explain", out / "mlp.npz", tmp_path / "d.png", "--out", tmp_path / "e"], 2))
    got = drive(tmp_path, cases)
    wrong = []
    for case, (name, (_, _, want)) in zip(got, files.items(), strict=False):
        if want and want not in case["stderr"]:
            wrong.append((name, want, case["stderr"]))
        if want and (out / f"{name}.npz").exists():
            wrong.append((name, "written anyway"))
        if not want and len(case["stdout"].splitlines()) != 1:
            wrong.append((name, "not one line", case["stdout"]))
    assert not wrong, wrong
    assert all("warning" not in c["stderr"].lower() for c in got)
    assert "takes (N, 784), not images" in got[-2]["stderr"]
    assert "takes (N, 784), not images" in got[-1]["stderr"]
    assert not (tmp_path / "e").exists()
    assert temp_files(out) == []
    imported = {p.stem for p in out.iterdir()}
    assert imported == {"concat-chain-5", "classes-fine", "mlp"}
    for stem in imported:  # what we write, we can read
        sc.load_checkpoint(out / f"{stem}.npz")
    assert sc.load_checkpoint(out / "classes-fine.npz").extra["classes"] == ["cat", "dog"]


class _Deadline:
    """Fail (instead of hanging the suite) if the block takes more than ``seconds``."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        def stop(signum: int, frame: object) -> None:
            raise AssertionError(f"blocked for {self.seconds} s")

        self.previous = signal.signal(signal.SIGALRM, stop)
        signal.alarm(self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


def test_safetensors_from_a_fifo_or_a_device_is_refused_unread(tmp_path):
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    link = tmp_path / "z.safetensors"
    link.symlink_to("/dev/zero")
    for path, what in ((fifo, "FIFO"), (link, "character device"), (tmp_path, "directory")):
        with _Deadline(20), pytest.raises(CheckpointError, match=what):
            load_weights(shapes_net(seed=0), path)


def test_images_are_opened_through_the_guarded_open(tmp_path, monkeypatch):
    """A picture swapped for a FIFO or /dev/zero after the path was checked (simulated by
    skipping that check) is still refused on the open descriptor, never read or waited on."""
    from scratchcnn.data import images
    from scratchcnn.errors import DataError

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    link = tmp_path / "z.png"
    link.symlink_to("/dev/zero")
    monkeypatch.setattr(images, "open_image_file", lambda path: Path(path))
    for path, what in ((fifo, "FIFO"), (link, "character device")):
        with _Deadline(20), pytest.raises(DataError, match=what):
            images.load_image(path, (1, 28, 28))
        with _Deadline(20), pytest.raises(DataError, match=what):
            images.probe_image(path)
