"""Damaged, foreign and hostile checkpoint files: every one is refused with one line that
names the file and the problem, and nothing in them is ever unpickled or trusted."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.checkpoint.npz import META_KEY, _digest, checkpoint_bytes
from scratchcnn.cli import main
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import shapes_net
from scratchcnn.training import fit, make_optimizer, make_scheduler

from .conftest import captured_error, error_line, run_cli


def train_small(out: Path, model: sc.Sequential | None = None, epochs: int = 2, resume=False):
    model = model or shapes_net(seed=0)
    opt = make_optimizer("sgd", model, 0.1, momentum=0.9)
    return fit(
        model,
        load_dataset("shapes", "train")[:96],
        test_data=load_dataset("shapes", "test")[:32],
        epochs=epochs,
        batch_size=32,
        optimizer=opt,
        scheduler=make_scheduler("cosine", opt, 4),
        seed=3,
        out_dir=out,
        resume=resume,
        progress=False,
    )


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real checkpoint: weights, momentum, scheduler, loader RNG, history."""
    out = tmp_path_factory.mktemp("good")
    train_small(out)
    return (out / "model.npz").read_bytes()


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a checkpoint's bytes, read with plain numpy."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop(META_KEY).tobytes())
    return meta, arrays


def repack(meta: dict, arrays: dict[str, np.ndarray], digests: bool = True) -> bytes:
    """A correctly sealed checkpoint of ``meta`` and ``arrays`` (hashes recomputed): what a
    crafted file, not a damaged one, looks like."""
    meta = dict(meta)
    if digests:
        meta["sha256"] = {k: _digest(v) for k, v in arrays.items()}
    blob = json.dumps(meta).encode()
    return checkpoint_bytes({**arrays, META_KEY: np.frombuffer(blob, np.uint8)})


def refused(path: Path) -> str:
    """The message of the CheckpointError that loading ``path`` raises."""
    with pytest.raises(sc.CheckpointError) as err:
        sc.load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


META = "malformed checkpoint metadata: "
SEAL_MISMATCH = (
    "corrupt checkpoint: the file's SHA-256 does not match the one it was saved with "
    "(damaged on disk or in a copy, or edited)"
)


def test_the_good_checkpoint_loads(tmp_path, good):
    path = tmp_path / "model.npz"
    path.write_bytes(good)
    ckpt = sc.load_checkpoint(path)
    assert ckpt.epoch == 2 and ckpt.optimizer_state["steps"] == 6
    # Still a plain .npz: numpy alone reads it (allow_pickle=False).
    meta, arrays = unpack(good)
    assert meta["sealed"] is True and "model/0.weight" in arrays


def test_every_truncation_is_refused(tmp_path, good):
    path = tmp_path / "cut.npz"
    kinds = {
        "empty file, not a checkpoint",
        "truncated checkpoint (only N bytes)",
        "truncated or corrupt checkpoint (the end of the archive is missing or damaged)",
        "truncated or corrupt checkpoint: its closing SHA-256 seal is missing or damaged",
    }
    seen = set()
    for n in range(len(good)):
        path.write_bytes(good[:n])
        message = re.sub(r"only \d+ bytes", "only N bytes", refused(path))
        assert message in kinds, (n, message)
        seen.add(message)
    assert seen == kinds


def test_every_single_bit_flip_is_refused(tmp_path, good):
    path = tmp_path / "flipped.npz"
    counts: dict[str, int] = {}
    for pos in range(len(good)):
        data = bytearray(good)
        data[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(data))
        message = refused(path)
        counts[message] = counts.get(message, 0) + 1
    # Almost every flip breaks the file-wide SHA-256; flips in the seal's own prefix or the
    # zip's closing record are caught by the structure checks.
    assert counts[SEAL_MISMATCH] > 0.95 * len(good), counts


def test_random_damage_is_refused(tmp_path, good):
    rng = np.random.default_rng(5)
    path = tmp_path / "damaged.npz"
    for _ in range(200):
        data = bytearray(good)
        at = int(rng.integers(0, len(data) - 16))
        data[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        if bytes(data) == good:
            continue
        path.write_bytes(bytes(data))
        refused(path)


def test_empty_missing_and_directory(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert refused(empty) == "empty file, not a checkpoint"
    assert refused(tmp_path / "missing.npz") == "no such checkpoint file"
    assert refused(tmp_path) == "is a directory, not a checkpoint file"


class _Boom:
    """Unpickling this would create a marker file: the proof that nothing is unpickled."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    boom = _Boom()
    boom.marker = marker
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": boom}, protocol=4))
    assert refused(path) == (
        "is a Python pickle, not a scratchcnn checkpoint; refusing to load it (unpickling can "
        "run arbitrary code, and scratchcnn checkpoints never use pickle)"
    )
    # The same payload inside an .npz, as an object array.
    npz = tmp_path / "object.npz"
    meta = {"format": "scratchcnn-checkpoint", "version": 1, "model": {"layers": []}}
    np.savez(
        npz,
        __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        **{"model/0.weight": np.array([boom], dtype=object)},
    )
    assert refused(npz) == (
        "entry 'model/0.weight.npy' is an object array, which only pickle could load; "
        "refusing to load it"
    )
    single = tmp_path / "weights.npy"
    np.save(single, np.zeros(3))
    assert refused(single) == (
        "is a single .npy array, not a scratchcnn checkpoint (.npz written by scratchcnn.save "
        "or `scratchcnn train`)"
    )
    assert not marker.exists()


def test_a_pytorch_checkpoint_is_refused(tmp_path):
    import torch

    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    assert refused(path) == (
        "is a PyTorch checkpoint (pickle inside), not a scratchcnn checkpoint; refusing to load it"
    )


def test_other_files_are_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    assert (
        refused(text) == "not a scratchcnn checkpoint (not an .npz archive; starts with b'hello')"
    )
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    assert refused(plain) == "not a scratchcnn checkpoint (no __meta__ entry)"
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert refused(other) == "not a scratchcnn checkpoint (entry 'readme.txt' is not a .npy array)"


def test_newer_and_unknown_format_versions(tmp_path, good):
    meta, arrays = unpack(good)
    path = tmp_path / "v.npz"
    path.write_bytes(repack({**meta, "version": 2}, arrays))
    assert refused(path) == (
        "checkpoint format version 2 is newer than this scratchcnn supports (1); upgrade "
        "scratchcnn to load it"
    )
    for version in (0, "1", None, True):
        path.write_bytes(repack({**meta, "version": version}, arrays))
        assert refused(path) == f"unknown checkpoint format version {version!r}"
    path.write_bytes(repack({**meta, "format": "keras"}, arrays))
    assert refused(path) == "not a scratchcnn checkpoint (format 'keras')"


def test_arrays_that_do_not_fit_the_architecture(tmp_path, good):
    """Checked against the config's ``state_shapes`` before any layer is built: missing,
    unexpected and mis-shaped keys, in one line."""
    meta, arrays = unpack(good)
    arrays = {k: v for k, v in arrays.items() if not k.startswith("optim/")}
    del arrays["model/0.bias"]
    arrays["model/9.weight"] = np.zeros(3, np.float32)
    arrays["model/4.weight"] = np.zeros((1, 5), np.float32)
    path = tmp_path / "misfit.npz"
    path.write_bytes(repack({**meta, "optimizer": None}, arrays))
    assert refused(path) == (
        "cannot rebuild the model: the arrays in the file do not fit its config (missing keys: "
        "0.bias | unexpected keys: 9.weight | mis-shaped: 4.weight: file (1, 5) vs config (1, 4))"
    )


def test_a_tampered_array_is_caught_by_its_own_digest(tmp_path, good):
    """Even with a valid file seal (a crafted file), every array must match its SHA-256."""
    meta, arrays = unpack(good)
    arrays["model/4.bias"] = arrays["model/4.bias"] + 1
    path = tmp_path / "t.npz"
    path.write_bytes(repack(meta, arrays, digests=False))
    assert refused(path) == "array 'model/4.bias' is corrupt (SHA-256 mismatch)"


def test_non_finite_weights_are_refused(tmp_path, good):
    meta, arrays = unpack(good)
    arrays["model/0.weight"] = np.full_like(arrays["model/0.weight"], np.nan)
    path = tmp_path / "nan.npz"
    path.write_bytes(repack(meta, arrays))
    assert (
        refused(path) == "cannot rebuild the model: load_state_dict: 0.weight contains NaN or inf"
    )


def sealed_zip(entries: dict[str, bytes]) -> bytes:
    """A zip of raw entries, sealed as a checkpoint is: what an attacker can build."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        zf.comment = b"scratchcnn-sha256:" + b"0" * 64
    body = buf.getvalue()[:-64]
    return body + hashlib.sha256(body).hexdigest().encode()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_an_entry_declaring_a_huge_array_is_refused_without_allocating_it(tmp_path, good):
    meta, arrays = unpack(good)
    entries = {f"{k}.npy": npy(v) for k, v in arrays.items()}
    entries[f"{META_KEY}.npy"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    entries["model/0.weight.npy"] = header.getvalue() + bytes(36)
    path = tmp_path / "huge.npz"
    path.write_bytes(sealed_zip(entries))
    assert refused(path) == (
        "entry 'model/0.weight.npy' holds 36 bytes of data but its header declares float64 "
        "(1000000000000,) (8000000000000 bytes)"
    )


def test_compressed_and_duplicate_entries_are_refused(tmp_path, good):
    _, arrays = unpack(good)
    path = tmp_path / "z.npz"
    np.savez_compressed(path, **arrays)
    assert refused(path) == "entry 'model/0.weight.npy' is compressed; checkpoints are not"
    entries = {"a.npy": npy(np.zeros(2))}
    data = sealed_zip(entries)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["a.npy"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a.npy", npy(np.zeros(2)))
        zf.writestr("a.npy", npy(np.ones(2)))
    path.write_bytes(buf.getvalue())
    assert refused(path) == "corrupt checkpoint (duplicate entries)"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"sha256": []}, "'sha256' must map array names to SHA-256 hex digests"),
        ({"model": "lenet5"}, "'model' must be the model's config (a JSON object)"),
        ({"epoch": -1}, "'epoch' must be a non-negative integer, got -1"),
        ({"epoch": "2"}, "'epoch' must be a non-negative integer, got '2'"),
        ({"extra": []}, "'extra' must be a JSON object, got list"),
        ({"rng": "x"}, "'rng' must be a JSON object, got str"),
        ({"optimizer": {"type": "SGD"}}, "optimizer 'hyper' must map names to numbers"),
        (
            {"optimizer": {"type": "SGD", "hyper": {"lr": "fast"}, "steps": 1}},
            "optimizer 'hyper' 'lr' must be a number >= 0, got 'fast'",
        ),
        (
            {"optimizer": {"type": "SGD", "hyper": {"lr": 0.1}, "steps": -3}},
            "optimizer 'steps' must be a non-negative integer, got -3",
        ),
        ({"scheduler": 7}, "'scheduler' must be a JSON object"),
    ],
)
def test_malformed_metadata(tmp_path, good, change, message):
    meta, arrays = unpack(good)
    path = tmp_path / "meta.npz"
    path.write_bytes(repack({**meta, **change}, arrays, digests="sha256" not in change))
    assert refused(path) == f"malformed checkpoint metadata: {message}"


def test_metadata_that_is_not_json_or_not_an_object(tmp_path, good):
    _, arrays = unpack(good)
    path = tmp_path / "m.npz"
    for blob, message in [
        (b'{"format": NaN}', "corrupt checkpoint metadata (NaN is not allowed)"),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b"[1, 2]", "not a scratchcnn checkpoint (format None)"),
        (b"\xff\xfe", None),
    ]:
        path.write_bytes(checkpoint_bytes({**arrays, META_KEY: np.frombuffer(blob, np.uint8)}))
        got = refused(path)
        if message is None:
            assert got.startswith("corrupt checkpoint metadata ("), got
        else:
            assert got == message


def test_the_seal_cannot_be_stripped_silently(tmp_path, good):
    """A sealed checkpoint whose seal is gone (cut off, or its prefix damaged) is refused;
    a checkpoint written without a seal (scratchcnn before it had one) still loads."""
    path = tmp_path / "s.npz"
    stripped = good.replace(b"scratchcnn-sha256:", b"scratchcnn-sha257:")
    path.write_bytes(stripped)
    assert refused(path) == (
        "truncated or corrupt checkpoint: its closing SHA-256 seal is missing or damaged"
    )
    meta, arrays = unpack(good)
    legacy = {k: v for k, v in meta.items() if k != "sealed"}
    legacy["sha256"] = {k: _digest(v) for k, v in arrays.items()}
    np.savez(path, __meta__=np.frombuffer(json.dumps(legacy).encode(), np.uint8), **arrays)
    assert sc.load_checkpoint(path).epoch == 2


def test_bit_identical_bytes_for_the_same_state(tmp_path):
    """No timestamps inside: the same state gives the same file, byte for byte."""
    model = shapes_net(seed=1)
    sc.save(model, tmp_path / "a.npz", epoch=1)
    sc.save(model, tmp_path / "b.npz", epoch=1)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


# --- resuming from checkpoints that do not fit the run -------------------------------------
def test_resume_refuses_another_architecture_naming_the_layer(tmp_path):
    train_small(tmp_path, epochs=1)
    other = sc.Sequential(
        [sc.Conv2D(1, 2, 3), sc.ReLU(), sc.MaxPool2D(2, stride=1), sc.Flatten(), sc.Dense(8, 1)],
        input_shape=(1, 5, 5),
    )
    with pytest.raises(sc.CheckpointError) as err:
        train_small(tmp_path, model=other, resume=True)
    assert str(err.value) == (
        f"{tmp_path / 'model.npz'}: the checkpoint's architecture differs from the model being "
        "trained (layer 0: checkpoint Conv2D(1, 1, kernel_size=(3, 3), stride=(1, 1)), model "
        "Conv2D(1, 2, kernel_size=(3, 3), stride=(1, 1))); use a new --out folder or the same "
        "--model"
    )


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "optimizer",
            {"type": "Adam", "hyper": {"lr": 0.1}, "steps": 3},
            "optimizer state does not fit: optimizer state is for 'Adam', not SGD",
        ),
        (
            "optimizer",
            {"type": "SGD", "hyper": {"lr": 0.1, "step": 1}, "steps": 3},
            "optimizer state does not fit: hyper-parameters ['step'] are not SGD's "
            "(['lr', 'max_grad_norm', 'momentum', 'nesterov', 'weight_decay'])",
        ),
        (
            "scheduler",
            {"type": "StepLR", "epoch": 1, "base_lr": 0.1},
            "scheduler state is for 'StepLR', not CosineAnnealingLR",
        ),
        (
            "scheduler",
            {"type": "CosineAnnealingLR", "epoch": "one", "base_lr": 0.1},
            f"{META}scheduler 'epoch' must be a non-negative integer, got 'one'",
        ),
        (
            "rng",
            {"loader": {"bit_generator": "MT19937", "state": {}}},
            f"{META}rng['loader'].state must be an object with exactly the fields key, pos, "
            "got {}",
        ),
        (
            "rng",
            {"loader": {"bit_generator": "PCG64", "state": "zero"}},
            f"{META}rng['loader'] must be an object with exactly the fields has_uint32, state, "
            "uinteger, got {'state': 'zero'}",
        ),
        (
            "extra",
            {"history": [{"epoch": 1}]},
            f"{META}extra.history[0] lacks ['lr', 'seconds', 'test_accuracy', 'test_loss', "
            "'train_accuracy', 'train_loss']",
        ),
        (
            "extra",
            {"history": "all good"},
            f"{META}extra.history must be a list of epochs, got 'all good'",
        ),
        ("epoch", None, "checkpoint has no epoch number; cannot resume from it"),
    ],
)
def test_resume_refuses_training_state_that_does_not_fit(tmp_path, good, field, value, message):
    meta, arrays = unpack(good)
    if field == "optimizer":
        arrays = {k: v for k, v in arrays.items() if not k.startswith("optim/")}
    (tmp_path / "model.npz").write_bytes(repack({**meta, field: value}, arrays))
    with pytest.raises(sc.CheckpointError) as err:
        train_small(tmp_path, epochs=3, resume=True)
    text = str(err.value)
    prefix = f"{tmp_path / 'model.npz'}: "
    assert text.startswith(prefix) and "\n" not in text, text
    assert text == prefix + message


# --- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "evaluate", "predict"])
def test_cli_refuses_each_bad_checkpoint_in_one_line(tmp_path, good, capsys, command):
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((5, 5), np.uint8)).save(png)
    meta, arrays = unpack(good)
    cases = {
        "empty.npz": (b"", "empty file, not a checkpoint"),
        "cut.npz": (
            good[: len(good) // 2],
            "truncated or corrupt checkpoint (the end of the archive is missing or damaged)",
        ),
        "flip.npz": (good[:100] + bytes([good[100] ^ 4]) + good[101:], SEAL_MISMATCH),
        "new.npz": (
            repack({**meta, "version": 7}, arrays),
            "checkpoint format version 7 is newer than this scratchcnn supports (1); upgrade "
            "scratchcnn to load it",
        ),
        "pickle.npz": (
            pickle.dumps({"a": 1}, protocol=4),
            "is a Python pickle, not a scratchcnn checkpoint; refusing to load it (unpickling "
            "can run arbitrary code, and scratchcnn checkpoints never use pickle)",
        ),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        argv = [command, str(path)] + ([str(png)] if command == "predict" else [])
        assert main(argv) == 2
        assert captured_error(capsys) == f"scratchcnn: error: {path}: {message}"


def test_cli_resume_from_a_damaged_checkpoint_is_one_line(tmp_path, good):
    """As a real process: a damaged model.npz in --out stops --resume before any training."""
    out = tmp_path / "run"
    result = run_cli(
        "train", "--model", "shapes_net", "--dataset", "shapes", "--epochs", "1", "--out", out
    )
    assert result.returncode == 0, result.stderr
    data = (out / "model.npz").read_bytes()
    (out / "model.npz").write_bytes(data[:-100])
    result = run_cli("train", "--epochs", "2", "--out", out, "--resume")
    assert error_line(result) == (
        f"scratchcnn: error: {out / 'model.npz'}: truncated or corrupt checkpoint (the end of "
        "the archive is missing or damaged)"
    )
    assert (out / "model.npz").read_bytes() == data[:-100]  # left for the user to inspect


def test_cli_resume_with_another_model_and_no_run_settings(tmp_path, capsys):
    """Without run.json the command line's settings are the run's: the checkpoint's recorded
    settings must be the same, before any model weight is touched."""
    out = tmp_path / "run"
    quick = ["--epochs", "1", "--limit", "64", "--quiet", "--out", str(out)]
    assert main(["train", *quick]) == 0
    (out / "run.json").unlink()
    assert main(["train", "--model", "tiny_cnn", *quick, "--resume"]) == 2
    assert captured_error(capsys) == (
        f"scratchcnn: error: {out / 'model.npz'}: was written with other settings than the run "
        "being resumed (model: checkpoint 'lenet5', run.json 'tiny_cnn'); --resume refuses to "
        "continue it: use --overwrite to start over, or another --out"
    )
