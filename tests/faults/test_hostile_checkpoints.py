"""Hostile checkpoints and run folders (issue 9): crafted zips, size bombs in configs,
metadata fuzzed over every field, special files, and interrupted overwrites.

The crafted files are built here, by the test, so that a fix must hold for the whole class of
file, not for one sample. Every command that takes a checkpoint (info, evaluate, predict, plot,
train --resume) is run on every case in one child process (``cli_driver.py``), which reports
each command's status and stderr and its own peak memory: status 0 or 2, one stderr line, no
hang, and a peak under ``PEAK_MB``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scratchcnn as sc
from scratchcnn.checkpoint.npz import META_KEY, _digest, checkpoint_bytes
from scratchcnn.cli import main

from .conftest import captured_error, child_env, run_cli

#: Peak resident memory allowed for the child that runs every command on every case. The
#: child's own baseline (Python, NumPy, Pillow, matplotlib, the data) is about 150 MB, and
#: glibc may keep up to 128 MiB of freed memory resident (``scratchcnn.parallel.allocator``); the
#: crafted files would take gigabytes if anything in them were trusted.
PEAK_MB = 512
HERE = Path(__file__).parent
LOCAL = struct.Struct("<4sHHHHHIIIHH")
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
EOCD = struct.Struct("<4sHHHHIIH")


# --- the good run everything is crafted from ----------------------------------------------------
@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: shapes_net on the shapes toy, one epoch (seconds)."""
    out = tmp_path_factory.mktemp("good") / "run"
    argv = ["train", "--model", "shapes_net", "--dataset", "shapes", "--epochs", "1"]
    result = run_cli(*argv, "--batch-size", "64", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def good(good_run: Path) -> bytes:
    return (good_run / "model.npz").read_bytes()


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop(META_KEY).tobytes()), arrays


def repack(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A correctly sealed checkpoint with correct digests: a crafted file, not a damaged one."""
    meta = {**meta, "sha256": {k: _digest(v) for k, v in arrays.items()}}
    blob = json.dumps(meta).encode()
    return checkpoint_bytes({**arrays, META_KEY: np.frombuffer(blob, np.uint8)})


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


# --- zip tricks, written byte by byte ------------------------------------------------------------
def sealed(body: bytes, central: bytes, n: int, cd_offset: int | None = None) -> bytes:
    """``body`` + ``central`` + an end record with scratchcnn's SHA-256 seal as its comment:
    the seal proves nothing about who wrote a file."""
    cd_offset = len(body) if cd_offset is None else cd_offset
    prefix = b"scratchcnn-sha256:"
    head = body + central + EOCD.pack(b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset, 82)
    head += prefix
    return head + hashlib.sha256(head).hexdigest().encode()


def central_entry(name: bytes, crc: int, size: int, offset: int) -> bytes:
    return (
        CENTRAL.pack(
            b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, size, size, len(name), 0, 0, 0, 0, 0, offset
        )
        + name
    )


def plain_zip(entries: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(local headers + data, central directory) of stored entries."""
    body, central = b"", b""
    for name, data in entries.items():
        raw, crc = name.encode(), zlib.crc32(data)
        central += central_entry(raw, crc, len(data), len(body))
        body += LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(raw), 0)
        body += raw + data
    return body, central


def overlap_bomb(k: int = 1000, payload_bytes: int = 1 << 20) -> bytes:
    """``k`` entries that all hold the same 1 MB .npy array, with correct CRCs: each local
    header's extra field runs over the headers after it, up to the shared payload. A reader
    that trusts the directory builds k arrays, a gigabyte, from a ~1.1 MB file."""
    names = [f"model/{i}.weight.npy".encode() for i in range(k)]
    start = sum(LOCAL.size + len(n) for n in names)  # where the payload begins
    payload = npy(np.zeros(payload_bytes // 4, np.float32))
    crc, body, offsets = zlib.crc32(payload), b"", []
    for name in names:
        offsets.append(len(body))
        extra = start - (len(body) + LOCAL.size + len(name))
        size = len(payload)
        body += LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, crc, size, size, len(name), extra)
        body += name
    body += payload
    central = b"".join(
        central_entry(name, crc, len(payload), off)
        for name, off in zip(names, offsets, strict=True)
    )
    return sealed(body, central, k)


def zip_cases(good: bytes) -> dict[str, bytes]:
    meta, arrays = unpack(good)
    entries = {f"{k}.npy": npy(v) for k, v in arrays.items()}
    entries[f"{META_KEY}.npy"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    body, central = plain_zip(entries)
    n = len(entries)
    cases = {"overlap-bomb.npz": overlap_bomb()}
    # Two entries sharing one byte.
    a, b = npy(np.zeros(4, np.float32)), npy(np.ones(4, np.float32))
    bod, _ = plain_zip({"a.npy": a, "b.npy": b})
    second = LOCAL.size + 5 + len(a)
    cen = central_entry(b"a.npy", zlib.crc32(bod[35 : 35 + len(a) + 1]), len(a) + 1, 0)
    cen += central_entry(b"b.npy", zlib.crc32(b), len(b), second)
    cases["overlap-one-byte.npz"] = sealed(bod, cen, 2)
    # A size far beyond the file (zip64 extra field), and an offset beyond it.
    raw = b"model/9.weight.npy"
    small, _ = plain_zip({raw.decode(): bytes(16)})
    big = CENTRAL.pack(
        b"PK\x01\x02", 45, 45, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), 20, 0, 0, 0, 0, 0
    )
    big += raw + struct.pack("<HHQQ", 1, 16, 1 << 40, 1 << 40)
    cases["huge-declared-size.npz"] = sealed(small, big, 1)
    far = central_entry(b"x.npy", 0, 10, 1 << 31)
    cases["entry-outside-file.npz"] = sealed(body, far + central, n + 1)
    cases["central-directory-outside.npz"] = sealed(body, central, n, cd_offset=1 << 31)
    cases["count-lies.npz"] = sealed(body, central, n + 5)
    # Too many entries (each a tiny valid array).
    many = {f"model/{i}.w.npy": npy(np.zeros(1, np.uint8)) for i in range(10_050)}
    cases["too-many-entries.npz"] = sealed(*plain_zip(many), len(many))
    # Entries that claim a huge array in a small body, one duplicated name.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**3)}
    )
    cases["npy-header-bomb.npz"] = sealed(
        *plain_zip({**entries, "model/0.weight.npy": header.getvalue() + bytes(64)}), n
    )
    dup_body, dup_central = plain_zip(entries)
    cases["duplicate-names.npz"] = sealed(dup_body, dup_central + dup_central[: 46 + 18], n + 1)
    return cases


# --- configs and metadata that ask for too much ------------------------------------------------
def _with_model(meta: dict, layers: list | None = None, **model) -> dict:
    config = {**meta["model"], **model}
    if layers is not None:
        config["layers"] = layers
    return {**meta, "model": config}


def meta_cases(good: bytes) -> dict[str, bytes]:
    meta, arrays = unpack(good)
    layers = meta["model"]["layers"]
    relu = {"type": "ReLU", "config": {}}

    def nested(depth: int) -> dict:
        spec = relu
        for _ in range(depth):
            spec = {"type": "ReLU", "config": {"body": spec}}
        return spec

    conv_wide = {
        "type": "Conv2D",
        "config": {"in_channels": 1, "out_channels": 100_000, "kernel_size": 1},
    }
    wide = {"model/0.weight": np.zeros((100_000, 1, 1, 1), np.float32)}
    wide["model/0.bias"] = np.zeros(100_000, np.float32)
    history = meta["extra"]["history"]
    changes: dict[str, tuple[dict, dict[str, np.ndarray]]] = {
        "dense-12000-no-weights": (
            _with_model(
                meta,
                [
                    *layers,
                    {"type": "Dense", "config": {"in_features": 12000, "out_features": 12000}},
                ],
            ),
            arrays,
        ),
        "input-12000x12000": (_with_model(meta, input_shape=[1, 12000, 12000]), arrays),
        "input-zero": (_with_model(meta, input_shape=[1, 0, 5]), arrays),
        "input-negative": (_with_model(meta, input_shape=[1, -5, 5]), arrays),
        "input-rank-2": (_with_model(meta, input_shape=[5, 5]), arrays),
        "activation-bomb": (
            _with_model(meta, [conv_wide], input_shape=[1, 28, 28]),
            {**wide, **{k: v for k, v in arrays.items() if k.startswith("optim/")}},
        ),
        "kernel-1e9": (
            _with_model(
                meta, [{**layers[0], "config": {**layers[0]["config"], "kernel_size": 10**9}}]
            ),
            arrays,
        ),
        "stride-1e12": (
            _with_model(
                meta, [{**layers[0], "config": {**layers[0]["config"], "stride": [1, 10**12]}}]
            ),
            arrays,
        ),
        "private-elementwise": (_with_model(meta, [{"type": "_Elementwise"}, *layers]), arrays),
        "private-pool": (
            _with_model(meta, [{"type": "_Pool2D", "config": {"kernel_size": 2}}, *layers]),
            arrays,
        ),
        "base-class": (_with_model(meta, [{"type": "Layer"}, *layers]), arrays),
        "dtype-syntax": (
            _with_model(meta, [{**layers[0], "config": {**layers[0]["config"], "dtype": "f4,(2"}}]),
            arrays,
        ),
        "nested-40-deep": (_with_model(meta, [nested(40), *layers]), arrays),
        "20000-layers": (_with_model(meta, [relu] * 20_000 + layers), arrays),
        "rng-huge-int": (
            {
                **meta,
                "rng": {"loader": {**meta["rng"]["loader"], "state": {"state": 2**200, "inc": 1}}},
            },
            arrays,
        ),
        "rng-unknown-generator": (
            {**meta, "rng": {"loader": {**meta["rng"]["loader"], "bit_generator": "os.system"}}},
            arrays,
        ),
        "history-1e308": (
            {**meta, "extra": {**meta["extra"], "history": [{**history[0], "train_loss": 1e308}]}},
            arrays,
        ),
        "history-10**400": (
            {
                **meta,
                "extra": {**meta["extra"], "history": [{**history[0], "test_accuracy": 10**400}]},
            },
            arrays,
        ),
        "momentum-7": (
            {
                **meta,
                "optimizer": {
                    **meta["optimizer"],
                    "hyper": {**meta["optimizer"]["hyper"], "momentum": 7},
                },
            },
            arrays,
        ),
        "betas-1-1": (
            {
                **meta,
                "optimizer": {"type": "Adam", "hyper": {"lr": 0.1, "betas": [1, 1]}, "steps": 3},
            },
            {k: v for k, v in arrays.items() if not k.startswith("optim/")},
        ),
        "t-max-0": ({**meta, "scheduler": {**meta["scheduler"], "T_max": 0}}, arrays),
        "steps-negative": ({**meta, "optimizer": {**meta["optimizer"], "steps": -1}}, arrays),
        "metadata-5mb": ({**meta, "extra": {**meta["extra"], "pad": "x" * (5 << 20)}}, arrays),
        "unknown-field": ({**meta, "loader_position": 3}, arrays),
    }
    return {f"{name}.npz": repack(m, a) for name, (m, a) in changes.items()}


# --- the commands, run in one child -----------------------------------------------------------
def drive(cases: list[list[str]], tmp_path: Path) -> tuple[list[dict], float]:
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    result = subprocess.run(
        [sys.executable, str(HERE / "cli_driver.py"), str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(1, PYTHONPATH=str(HERE.parent.parent)),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    return report["results"], report["peak_mb"]


def check_refused(results: list[dict]) -> None:
    """Every command: status 2 and one line ``scratchcnn: error: ...``."""
    bad = [
        r
        for r in results
        if r["status"] != 2
        or len(r["stderr"].splitlines()) != 1
        or not r["stderr"].startswith("scratchcnn: error: ")
    ]
    assert not bad, json.dumps(bad[:3], indent=1)[:4000]


def run_folder(base: Path, name: str, data: bytes | None, good_run: Path) -> Path:
    """A copy of the good run folder whose model.npz is ``data`` (or a special file)."""
    folder = base / name
    folder.mkdir()
    for item in ("run.json", "metrics.jsonl"):
        (folder / item).write_bytes((good_run / item).read_bytes())
    if data is not None:
        (folder / "model.npz").write_bytes(data)
    return folder


def commands(path: Path, png: Path, folder: Path | None) -> list[list[str]]:
    argv = [["info", str(path)], ["evaluate", str(path)], ["predict", str(path), str(png)]]
    if folder is not None:
        argv += [["plot", str(folder)], ["train", "--out", str(folder), "--resume", "--quiet"]]
    return argv


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    return path


def test_crafted_files_every_command_one_line_bounded_memory(tmp_path, good, good_run, png):
    """Zip tricks and size bombs: every command refuses every file, within PEAK_MB."""
    cases = {**zip_cases(good), **meta_cases(good)}
    argv: list[list[str]] = []
    for i, (name, data) in enumerate(sorted(cases.items())):
        path = tmp_path / name
        path.write_bytes(data)
        # plot and train --resume need a run folder: every third case, to keep it quick.
        folder = run_folder(tmp_path, f"run-{name}", data, good_run) if i % 3 == 0 else None
        argv += commands(path, png, folder)
    results, peak = drive(argv, tmp_path)
    check_refused(results)
    assert peak < PEAK_MB, peak
    assert len(results) > 100  # every case ran
    assert max(len(d) for d in cases.values()) < 6 << 20  # small files, all of them


def test_the_crafted_files_are_refused_for_the_right_reason(tmp_path, good):
    """In process: each class of trick is named by its own message."""
    expect = {
        "overlap-bomb.npz": "corrupt checkpoint (entries",
        "overlap-one-byte.npz": "overlap",
        "huge-declared-size.npz": "more than the file holds there",
        "entry-outside-file.npz": "starts outside the archive's data",
        "central-directory-outside.npz": "the central directory is not where the end record",
        "count-lies.npz": "central directory",
        "too-many-entries.npz": "more than the limit of 10,000",
        "npy-header-bomb.npz": "its header declares float64 (1000000000, 1000)",
        "duplicate-names.npz": "corrupt checkpoint",
        "dense-12000-no-weights.npz": "missing keys: 5.weight, 5.bias",
        "input-12000x12000.npz": "model.input_shape must be (C, H, W)",
        "input-zero.npz": "model.input_shape must be",
        "input-negative.npz": "model.input_shape must be",
        "input-rank-2.npz": "cannot run on its input shape",
        "activation-bomb.npz": "would output (100000, 28, 28) per image",
        "kernel-1e9.npz": "kernel_size must be an integer in [1, 4096]",
        "stride-1e12.npz": "stride must be an integer in [1, 4096]",
        "private-elementwise.npz": "unknown layer type '_Elementwise'",
        "private-pool.npz": "unknown layer type '_Pool2D'",
        "base-class.npz": "unknown layer type 'Layer'",
        "dtype-syntax.npz": 'dtype must be "float32" or "float64", got \'f4,(2\'',
        "nested-40-deep.npz": "nested more than 32 levels deep",
        "20000-layers.npz": "more than 10000 layers",
        "rng-huge-int.npz": "rng['loader'].state.state must be an integer field of the right size",
        "rng-unknown-generator.npz": "bit_generator must be one of PCG64",
        "history-1e308.npz": "extra.history[0].train_loss must be a finite number",
        "history-10**400.npz": "extra.history[0].test_accuracy must be null or a number in [0, 1]",
        "momentum-7.npz": "optimizer 'hyper' 'momentum' must be a number in [0, 1), got 7",
        "betas-1-1.npz": "optimizer 'hyper' 'betas' must be a pair of numbers in [0, 1)",
        "t-max-0.npz": "scheduler 'T_max' must be a positive integer, got 0",
        "steps-negative.npz": "optimizer 'steps' must be a non-negative integer, got -1",
        "metadata-5mb.npz": "more than the 4,194,304-byte limit",
        "unknown-field.npz": "unknown fields ['loader_position']",
    }
    cases = {**zip_cases(good), **meta_cases(good)}
    assert set(cases) == set(expect)
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(sc.CheckpointError) as err:
            sc.load_checkpoint(path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{path}: "), message
        assert expect[name] in message, (name, message)


def special_files(base: Path) -> dict[str, Path]:
    fifo = base / "fifo.npz"
    os.mkfifo(fifo)
    loop_a, loop_b = base / "loop-a.npz", base / "loop-b.npz"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    dangling = base / "dangling.npz"
    dangling.symlink_to(base / "nowhere")
    folder = base / "folder.npz"
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(base / "sock.npz"))  # the socket file stays after close
    sock.close()
    return {
        "socket": base / "sock.npz",
        "dev-zero": Path("/dev/zero"),
        "dev-null": Path("/dev/null"),
        "fifo": fifo,
        "loop": loop_a,
        "dangling": dangling,
        "directory": folder,
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")
def test_special_files_are_refused_without_blocking(tmp_path, good_run, png):
    files = special_files(tmp_path)
    argv: list[list[str]] = []
    for name, path in files.items():
        folder = run_folder(tmp_path, f"run-{name}", None, good_run)
        if name != "directory":
            (folder / "model.npz").symlink_to(path)
        else:
            (folder / "model.npz").mkdir()
        argv += commands(path, png, folder)
    results, peak = drive(argv, tmp_path)
    check_refused(results)
    assert peak < PEAK_MB, peak
    text = {r["argv"][1]: r["stderr"] for r in results if r["argv"][0] == "info"}
    assert "is a character device, not a regular checkpoint file" in text["/dev/zero"]
    assert "is a FIFO (named pipe), not a regular checkpoint file" in text[str(files["fifo"])]
    assert "Too many levels of symbolic links" in text[str(files["loop"])]
    assert "no such checkpoint file" in text[str(files["dangling"])]
    assert "is a directory, not a checkpoint file" in text[str(files["directory"])]
    assert "is a socket, not a regular checkpoint file" in text[str(files["socket"])]


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path, good):
    path = tmp_path / "big.npz"
    path.write_bytes(good)
    with pytest.raises(sc.CheckpointError, match=r"more than the 1,000-byte limit"):
        sc.load_checkpoint(path, max_bytes=1000)
    sparse = tmp_path / "sparse.npz"
    with open(sparse, "wb") as fh:  # 3 GiB on paper, nothing on disk
        fh.truncate(3 << 30)
    with pytest.raises(sc.CheckpointError, match=r"3,221,225,472 bytes, more than the"):
        sc.load_checkpoint(sparse)


# --- metadata fuzzed over every field ------------------------------------------------------------
def _paths(value, prefix=()):
    """Every path into a JSON value (object keys and list indices), the root excluded."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = list(enumerate(value))[:3]  # the first few items of long lists (RNG keys)
    else:
        return
    for key, item in items:
        yield (*prefix, key)
        yield from _paths(item, (*prefix, key))


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**130), max_value=2**130)
    | st.sampled_from([0, 1, -1, 2**31, 2**63, 10**400, 0.5, 1e308, -1e308, 1e-320])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "float16", "f4,(2", "_Elementwise", "ReLU", "PCG64", "same"])
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def good_meta(good: bytes):
    meta, arrays = unpack(good)
    return meta, arrays, sorted(_paths(meta), key=repr)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_metadata_loads_or_is_refused_in_one_line(tmp_path, good_meta, capsys, data):
    """Any JSON value at any place of the metadata (every field, nested ones included): the
    checkpoint loads, or is refused with one CheckpointError line; ``info`` then prints it or
    says why not, never a traceback (no OverflowError, SyntaxError, MemoryError ...)."""
    meta, arrays, paths = good_meta
    path_in_meta = data.draw(st.sampled_from(paths), label="field")
    value = data.draw(JSON, label="value")
    crafted = _replace(meta, path_in_meta, value)
    if path_in_meta == ("sha256",) or path_in_meta[:1] == ("sha256",):
        blob = json.dumps(crafted).encode()
        file = checkpoint_bytes({**arrays, META_KEY: np.frombuffer(blob, np.uint8)})
    else:
        file = repack(crafted, arrays)
    target = tmp_path / "fuzz.npz"
    target.write_bytes(file)
    try:
        sc.load_checkpoint(target)
    except sc.CheckpointError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{target}: ")
    status = main(["info", str(target)])
    if status == 2:
        captured_error(capsys)
    else:
        assert status == 0
        capsys.readouterr()


# --- the layer registry -------------------------------------------------------------------------
def test_a_user_layer_cannot_shadow_a_built_in(tmp_path):
    class ReLU(sc.Layer):  # a user's own layer with a built-in's name
        def forward(self, x):
            return x * 2

        def backward(self, dy):
            return dy * 2

    assert sc.nn.layers.LAYER_TYPES["ReLU"] is sc.ReLU
    qualified = f"{__name__}.test_a_user_layer_cannot_shadow_a_built_in.<locals>.ReLU"
    assert sc.nn.layers.LAYER_TYPES[qualified] is ReLU
    model = sc.Sequential([sc.ReLU(), ReLU()], input_shape=(1, 2, 2))
    sc.save(model, tmp_path / "m.npz")
    loaded = sc.load(tmp_path / "m.npz")
    assert type(loaded.layers[0]) is sc.ReLU and type(loaded.layers[1]) is ReLU
    meta, _ = unpack((tmp_path / "m.npz").read_bytes())
    assert [s["type"] for s in meta["model"]["layers"]] == ["ReLU", qualified]


def test_a_missing_user_layer_and_private_classes_are_clear_errors():
    with pytest.raises(sc.ConfigError, match=r"unknown layer type 'mylib\.Scale': a custom layer"):
        sc.nn.layers.layer_from_config({"type": "mylib.Scale"})
    for private in ("_Elementwise", "_Pool2D", "scratchcnn.nn.layers.pooling._Pool2D"):
        with pytest.raises(sc.ConfigError, match="unknown layer type"):
            sc.nn.layers.layer_from_config({"type": private, "config": {"kernel_size": 2}})
    assert not any(part.startswith("_") for k in sc.nn.layers.LAYER_TYPES for part in k.split("."))


def test_old_checkpoints_with_bare_user_names_still_load(tmp_path):
    """Before user layers were saved qualified, their bare class name was written."""

    class LegacyNamedDoubler(sc.Layer):
        @classmethod
        def state_shapes(cls, config):
            return {}

        def forward(self, x):
            return x * 2

        def backward(self, dy):
            return dy * 2

    sc.save(sc.Sequential([LegacyNamedDoubler()]), tmp_path / "m.npz")
    meta, arrays = unpack((tmp_path / "m.npz").read_bytes())
    meta["model"]["layers"][0]["type"] = "LegacyNamedDoubler"
    (tmp_path / "old.npz").write_bytes(repack(meta, arrays))
    assert type(sc.load(tmp_path / "old.npz").layers[0]) is LegacyNamedDoubler


def test_state_shapes_match_every_built_in_layer():
    """The contract checkpoint loading relies on: without allocating, each built-in says the
    shapes its constructor will allocate."""
    layers = [
        sc.Conv2D(3, 4, (3, 2), stride=2, padding=1),
        sc.Conv2D(2, 5, 1, bias=False),
        sc.Conv2D(4, 8, 3, groups=2, dilation=2, padding=((1, 0), (2, 1))),
        sc.GlobalAvgPool2D(),
        sc.Residual([sc.Conv2D(2, 2, 3, padding=1), sc.BatchNorm2D(2)]),
        sc.Residual(
            [sc.Conv2D(2, 4, 3, stride=2, padding=1)],
            shortcut=sc.Sequential([sc.Conv2D(2, 4, 1, stride=2), sc.BatchNorm2D(4)]),
        ),
        sc.Parallel([[sc.Conv2D(2, 3, 1)], sc.Sequential([sc.Conv2D(2, 1, 3, padding=1)])]),
        sc.BatchNorm1D(5),
        sc.Dense(7, 3),
        sc.Dense(2, 1, bias=False),
        sc.BatchNorm2D(6),
        sc.BatchNorm2D(2, affine=False),
        sc.MaxPool2D(2),
        sc.AvgPool2D(3, stride=1),
        sc.Flatten(),
        sc.Dropout(0.3),
        sc.ReLU(),
        sc.LeakyReLU(0.1),
        sc.Sigmoid(),
        sc.Tanh(),
        sc.Softmax(),
        sc.LogSoftmax(),
        sc.Rescale(2.0, 1.0),
        sc.Normalize([0.5, 0.4], [0.2, 0.3]),
        # issue 24
        sc.Clip(-1.0, None),
        sc.ReLU6(),
        sc.Hardsigmoid(),
        sc.Hardswish(),
        sc.SiLU(),
        sc.GELU("tanh"),
        sc.LayerNorm2D(3),
        sc.LayerNorm2D(2, affine=False),
        sc.ChannelScale(4),
        sc.ChannelSlice(1, 3),
        sc.ChannelShuffle(2),
        sc.Gate([sc.GlobalAvgPool2D(), sc.Conv2D(2, 2, 1), sc.Sigmoid()]),
        sc.DenseConcat(sc.Sequential([sc.BatchNorm2D(2), sc.Conv2D(2, 3, 3)])),
    ]
    for layer in layers:
        expected = {k: v.shape for k, v in layer.named_tensors()}
        assert type(layer).state_shapes(layer.config()) == expected, layer
    builtin = {k for k in sc.nn.layers.LAYER_TYPES if "." not in k}
    assert builtin <= {type(la).__name__ for la in layers} | {"Rescale"}, builtin


# --- run folders -------------------------------------------------------------------------------
QUICK = ["--model", "shapes_net", "--dataset", "shapes", "--batch-size", "64", "--quiet"]


def test_overwrite_sets_the_old_run_aside_before_writing_anything(tmp_path, monkeypatch):
    """A new run killed in its first epoch leaves the old run whole in D.old-1 and nothing of
    it in D: --resume then starts the new run, never the old weights under new settings."""
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    import scratchcnn.training.job as cli  # where the train command calls fit

    def killed(*args, **kwargs):
        assert not (out / "model.npz").exists()  # the old checkpoint is gone from D already
        raise KeyboardInterrupt  # the process dies here, in epoch 1

    monkeypatch.setattr(cli, "fit", killed)
    assert (
        main(["train", *QUICK, "--epochs", "1", "--lr", "0.3", "--out", str(out), "--overwrite"])
        == 130
    )
    monkeypatch.undo()
    aside = tmp_path / "run.old-1"
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == old
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert json.loads((out / "run.json").read_text())["lr"] == 0.3
    assert main(["train", "--epochs", "1", "--out", str(out), "--resume"]) == 0
    ckpt = sc.load_checkpoint(out / "model.npz")
    assert ckpt.extra["run"]["lr"] == 0.3 and ckpt.epoch == 1
    # A second overwrite takes the next free name.
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert (tmp_path / "run.old-2" / "model.npz").exists()


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys):
    """What the old --overwrite left behind (an old checkpoint under a new run.json): refused."""
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    settings_ = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**settings_, "lr": 0.3, "seed": 4}))
    before = (out / "model.npz").read_bytes()
    assert main(["train", "--epochs", "2", "--out", str(out), "--resume"]) == 2
    assert captured_error(capsys) == (
        f"scratchcnn: error: {out / 'model.npz'}: was written with other settings than the run "
        "being resumed (lr: checkpoint 0.05, run.json 0.3; seed: checkpoint 0, run.json 4); "
        "--resume refuses to continue it: use --overwrite to start over, or another --out"
    )
    assert (out / "model.npz").read_bytes() == before
    assert main(["train", "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "pick one" in captured_error(capsys)


def test_resume_with_more_epochs_stretches_the_saved_schedule(tmp_path):
    """T_max is a saved setting (as in torch); resuming a finished 2-epoch cosine run for 4
    epochs stretches it to 4 (the rate goes on from where the stretched curve stands at
    epoch 2) instead of training epoch 3 at the bottom of the old curve, lr 0."""
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "2", "--out", str(out)]) == 0
    assert main(["train", "--epochs", "4", "--out", str(out), "--resume"]) == 0
    ckpt = sc.load_checkpoint(out / "model.npz")
    assert ckpt.scheduler_state["T_max"] == 4 and ckpt.scheduler_state["epoch"] == 4
    lrs = [m["lr"] for m in ckpt.extra["history"]]
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.025)
    assert lrs[2] == pytest.approx(0.025)  # cos(pi * 2 / 4): half the base rate, not 0
    assert lrs[3] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / 4)) / 2)


def test_run_files_follow_the_umask(tmp_path):
    model = sc.Sequential([sc.Dense(2, 1)])
    old = os.umask(0o022)
    try:
        sc.save(model, tmp_path / "a.npz")
        assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o644
        os.umask(0o077)
        sc.save(model, tmp_path / "b.npz")
        assert stat.S_IMODE((tmp_path / "b.npz").stat().st_mode) == 0o600
        (tmp_path / "a.npz").chmod(0o640)  # replacing a file keeps its permissions
        sc.save(model, tmp_path / "a.npz")
        assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_overwrite_refuses_to_move_the_current_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    monkeypatch.chdir(out)
    assert main(["train", *QUICK, "--epochs", "1", "--out", ".", "--overwrite"]) == 2
    assert "holds the current folder" in captured_error(capsys)
    assert (out / "model.npz").exists()


def test_overwrite_killed_for_real_never_mixes_runs(tmp_path, good_run):
    """A real process, SIGKILLed as soon as the new run.json is on disk: the old run is whole
    in D.old-1, and whatever checkpoint D holds was written under D's run.json."""
    out = tmp_path / "run"
    out.mkdir()
    for item in good_run.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = [*QUICK, "--epochs", "3", "--lr", "0.2", "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchcnn", "train", *argv],
        env=child_env(1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(6000):  # at most a minute
            try:
                if json.loads((out / "run.json").read_text())["lr"] == 0.2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert {p.name: p.read_bytes() for p in (tmp_path / "run.old-1").iterdir()} == old
    assert json.loads((out / "run.json").read_text())["lr"] == 0.2
    if (out / "model.npz").exists():  # the kill came after an epoch of the new run
        assert sc.load_checkpoint(out / "model.npz").extra["run"]["lr"] == 0.2
    result = run_cli("train", "--out", out, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert sc.load_checkpoint(out / "model.npz").extra["run"]["lr"] == 0.2
