"""Hostile inputs from outside: odd and crafted images, special files, crafted IDX headers and
gzip bombs. Every case is generated here (so variants are covered, not one kept file).

The command-line contract is checked on every case with real commands (predict, filters,
evaluate and train with --data-dir), many cases in one driver process: status 0 or 2, at
most one stderr line, never a traceback, no hang, and a peak memory measured against the
same commands on well-formed input.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.data import read_idx, write_idx
from scratchcnn.data.images import MAX_IMAGE_PIXELS, load_grayscale_image, load_image
from scratchcnn.errors import DataError
from scratchcnn.nn.zoo import lenet5

from .conftest import child_env

DRIVER = Path(__file__).with_name("hostile_driver.py")
DIGIT = (1, 28, 28)


# --------------------------------------------------------------------------- generators
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A real decompression bomb written by hand: an 8-bit grey PNG of width x height zero
    pixels, whose zlib stream of (1 + width) * height zero bytes
    compresses about 1000:1 (a 20000 x 20000 image is ~400 KB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    z = zlib.compressobj(9)
    row_block = bytes((1 + width) * min(height, 256))
    parts, done = [], 0
    while done < height:
        n = min(256, height - done)
        parts.append(z.compress(row_block[: (1 + width) * n]))
        done += n
    parts.append(z.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def digit(light_ink: bool = True, size: int = 28) -> np.ndarray:
    """A bar on a background, uint8, ink light (255) on dark (0) or the reverse."""
    img = np.zeros((size, size), np.uint8)
    img[size // 3 : 2 * size // 3, size // 2 - 2 : size // 2 + 2] = 255
    return img if light_ink else 255 - img


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Every odd image, by name."""
    d = tmp_path_factory.mktemp("images")
    out: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        out[name] = d / name
        img.save(out[name], **kw)

    save("plain.png", Image.fromarray(digit(light_ink=False)))
    save("gray16.png", Image.fromarray(digit(light_ink=False).astype(np.uint16) * 257))
    i32 = Image.fromarray(digit(light_ink=False).astype(np.int32) * 257)
    save("int32.tif", i32)
    save("float.tif", Image.fromarray(digit(light_ink=False).astype(np.float32) / 255))
    nan = digit().astype(np.float32)
    nan[0, 0] = np.nan
    save("nan.tif", Image.fromarray(nan))
    rgba = np.zeros((28, 28, 4), np.uint8)  # black ink, transparent everywhere else
    rgba[..., 3] = 255 - digit(light_ink=False)
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    white_ink = rgba.copy()
    white_ink[..., :3] = 255
    save("rgba-white-ink.png", Image.fromarray(white_ink, "RGBA"))
    la = np.stack([np.zeros((28, 28), np.uint8), 255 - digit(light_ink=False)], axis=-1)
    save("la.png", Image.fromarray(la, "LA"))
    save("palette.png", Image.fromarray(digit(light_ink=False)).convert("P"))
    pal = Image.fromarray(digit(light_ink=False)).convert("P")
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    save("palette-transparent.png", pal, transparency=pal.info["transparency"])
    save("cmyk.jpg", Image.fromarray(digit(light_ink=False)).convert("CMYK"))
    save("bilevel.png", Image.fromarray(digit(light_ink=False)).convert("1"))
    first, second = (Image.fromarray(digit(light_ink=False)), Image.fromarray(digit()))
    out["animated.gif"] = d / "animated.gif"
    first.save(out["animated.gif"], save_all=True, append_images=[second], duration=100)
    out["animated.png"] = d / "animated.png"
    first.save(out["animated.png"], save_all=True, append_images=[second])
    whole = out["plain.png"].read_bytes()
    for name, blob in {
        "truncated.png": whole[: len(whole) // 2],
        "header-only.png": whole[:33],
        "empty.png": b"",
        "text.png": b"not an image at all\n",
        "random.jpg": np.random.default_rng(0).bytes(5000),
        "bomb-20000.png": bomb_png(20000, 20000),  # above Pillow's own error limit
        "bomb-10000.png": bomb_png(10000, 10000),  # above Pillow's warning limit
        "bomb-7000.png": bomb_png(7000, 7000),  # above ours only
        # a 60-byte PNG whose (valid, CRC-checked) header claims 2**31-1 squared pixels
        "huge-header.png": b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(bytes(64)))
        + _chunk(b"IEND", b""),
        "bad-crc.png": whole[:16] + struct.pack(">II", 2**31 - 1, 2**31 - 1) + whole[24:],
    }.items():
        out[name] = d / name
        out[name].write_bytes(blob)
    out["folder.png"] = d / "folder.png"
    out["folder.png"].mkdir()
    out["fifo.png"] = d / "fifo.png"
    os.mkfifo(out["fifo.png"])
    out["dev-zero"] = Path("/dev/zero")
    out["missing.png"] = d / "missing.png"
    return out


# --------------------------------------------------------------------------- load_image
def test_16_bit_images_are_scaled_by_their_depth_not_clipped(images):
    plain = load_image(images["plain.png"], DIGIT, invert=False)
    for name in ("gray16.png", "int32.tif", "float.tif"):
        got = load_image(images[name], DIGIT, invert=False)
        np.testing.assert_allclose(got, plain, atol=1e-3, err_msg=name)


def test_16_bit_mid_grey_stays_mid_grey(tmp_path):
    """Pillow's I;16 -> L clamps: 32768 would become 255 (white). Scaled, it is 0.5."""
    Image.fromarray(np.full((28, 28), 32768, np.uint16)).save(tmp_path / "grey.png")
    got = load_image(tmp_path / "grey.png", DIGIT, invert=False)
    np.testing.assert_allclose(got, 32768 / 65535, atol=1e-4)


def test_transparent_images_keep_their_ink(images):
    """Black ink on transparency: composited onto white, then (auto) inverted: exactly the
    plain dark-on-light digit. White ink on transparency: onto black, not inverted."""
    want = load_image(images["plain.png"], DIGIT, invert=None)
    assert want.max() == pytest.approx(1.0) and want[0, 0, 0] == pytest.approx(0.0)
    for name in ("rgba.png", "la.png", "rgba-white-ink.png", "palette-transparent.png"):
        got = load_image(images[name], DIGIT, invert=None)
        np.testing.assert_allclose(got, want, atol=2e-2, err_msg=name)
    # Explicit choices pick the background: --invert is paper (white), --no-invert black.
    on_white = load_image(images["rgba.png"], DIGIT, invert=True)
    np.testing.assert_allclose(on_white, want, atol=2e-2)
    on_black = load_image(images["rgba.png"], DIGIT, invert=False)
    assert on_black.max() < 0.05  # black ink on black: the user asked for it


def test_other_modes_and_first_frames(images):
    want = load_image(images["plain.png"], DIGIT, invert=None)
    for name in ("palette.png", "cmyk.jpg", "bilevel.png", "animated.gif", "animated.png"):
        got = load_image(images[name], DIGIT, invert=None)
        assert got.shape == DIGIT and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=0.1, err_msg=name)
    rgb = load_image(images["rgba.png"], (3, 28, 28), invert=None)
    assert rgb.shape == (3, 28, 28)
    np.testing.assert_allclose(rgb, np.repeat(want, 3, axis=0), atol=2e-2)
    assert load_grayscale_image(images["gray16.png"], 14).shape == (14, 14)


@pytest.mark.parametrize(
    "name,message",
    [
        ("bomb-20000.png", r"20,000x20,000 pixels is larger than the 40,000,000-pixel limit"),
        ("bomb-10000.png", r"10,000x10,000 pixels is larger than"),
        ("bomb-7000.png", r"7,000x7,000 pixels is larger than"),
        ("huge-header.png", r"larger than the 40,000,000-pixel limit"),
        ("bad-crc.png", r"cannot read it as an image"),
        ("truncated.png", r"cannot read it as an image"),
        ("header-only.png", r"cannot read it as an image"),
        ("text.png", r"cannot read it as an image \(cannot identify image file"),
        ("random.jpg", r"cannot read it as an image"),
        ("nan.tif", r"NaN or infinite"),
        ("empty.png", r"empty file \(0 bytes\)"),
        ("folder.png", r"is a directory, expected an image file"),
        ("fifo.png", r"not a regular file"),
        ("dev-zero", r"not a regular file"),
        ("missing.png", r"file not found \(expected an image file\)"),
    ],
)
def test_bad_images_are_one_clear_error(images, recwarn, name, message):
    with pytest.raises(DataError, match=message) as err:
        load_image(images[name], DIGIT)
    assert "\n" not in str(err.value) and str(images[name]) in str(err.value)
    assert not [w for w in recwarn if "Pillow" in str(w.message) or "pixels" in str(w.message)]


def test_the_pixel_limit_is_ours():
    assert MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS  # refused before Pillow would warn


# --------------------------------------------------------------------------- IDX files
def _idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def gzip_bomb(header: bytes, zeros: int) -> bytes:
    """gzip of header + ``zeros`` zero bytes, compressed in chunks (~1000:1)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(header)]
    block = bytes(1 << 22)
    for start in range(0, zeros, len(block)):
        parts.append(z.compress(block[: min(len(block), zeros - start)]))
    parts.append(z.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def idx_cases(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("idx")
    cases = {
        # the product of the dimensions overflows int64 (and any sane size)
        "overflow": _idx_header(0x08, (2**32 - 1, 2**32 - 1, 2**32 - 1)),
        "overflow-f8": _idx_header(0x0E, (2**31, 2**31)),
        # above the size cap, tiny file
        "cap": _idx_header(0x08, (2**20, 32, 33)) + bytes(100),
        # gzip bombs: a small header followed by 256 MB of zeros (~250 KB of gzip)
        "bomb": gzip_bomb(_idx_header(0x08, (10, 28, 28)), 256 << 20),
        "bomb-cap": gzip_bomb(_idx_header(0x08, (2**20, 32, 33)), 64 << 20),
        "short-gz": gzip.compress(_idx_header(0x08, (10, 28, 28)) + bytes(100)),
        "trailing-garbage": gzip.compress(_idx_header(0x08, (2,)) + bytes(2)) + b"garbage",
    }
    out = {}
    for name, blob in cases.items():
        out[name] = d / name
        out[name].write_bytes(blob)
    return out


@pytest.mark.parametrize(
    "name,message",
    [
        ("overflow", r"declares shape 4294967295x4294967295x4294967295 \(.* bytes of data\), "
         r"more than the 1,073,741,824-byte limit"),
        ("overflow-f8", r"more than the 1,073,741,824-byte limit"),
        ("cap", r"declares shape 1048576x32x33"),
        ("bomb", r"extra bytes: expected 7840 bytes of data for shape 10x28x28, found at least"),
        ("bomb-cap", r"declares shape 1048576x32x33"),
        ("short-gz", r"truncated: expected 7840 bytes .* found 100"),
        ("trailing-garbage", r"extra data after the end of the gzip stream"),
    ],
)  # fmt: skip
def test_crafted_idx_headers_and_gzip_bombs(idx_cases, name, message):
    with pytest.raises(DataError, match=message) as err:
        read_idx(idx_cases[name])
    assert "\n" not in str(err.value)


def test_idx_special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(DataError, match="not a regular file"):
            read_idx(path)


# --------------------------------------------------------------------------- the commands
def _mnist_dir(folder: Path, replace: dict[str, Path] | None = None) -> Path:
    """A tiny valid MNIST (IDX, gzipped), with some files replaced by hostile ones."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, n in (("train", 32), ("t10k", 16)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, np.uint8))
    for name, src in (replace or {}).items():
        target = folder / name
        target.unlink()
        if src.is_file():
            target.write_bytes(src.read_bytes())
        else:
            target.symlink_to(src)
    return folder


def _drive(tmp_path: Path, cases: list[list[str]], name: str) -> dict:
    (tmp_path / f"{name}.json").write_text(json.dumps(cases))
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / f"{name}.json"), str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=child_env(1, MPLBACKEND="Agg"),
    )
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "r.json").read_text())


def test_every_command_on_every_hostile_input(tmp_path, images, idx_cases):
    ckpt = tmp_path / "digits.npz"
    sc.save(lenet5(seed=0), ckpt, extra={"run": {"dataset": "mnist"}})
    rgb = tmp_path / "rgb.npz"
    sc.save(sc.Sequential([sc.Flatten(), sc.Dense(3 * 8 * 8, 4)], input_shape=(3, 8, 8)), rgb)
    maps = tmp_path / "maps.npz"  # output (N, 2, 6, 6): not a classifier
    sc.save(sc.Sequential([sc.Conv2D(1, 2, 3)], input_shape=(1, 8, 8)), maps)
    good = _mnist_dir(tmp_path / "good")

    def data_cmds(folder: Path, tag: str) -> list[list[str]]:
        return [
            ["evaluate", str(ckpt), "--dataset", "mnist", "--data-dir", str(folder), "--json"],
            ["train", "--dataset", "mnist", "--data-dir", str(folder), "--epochs", "1",
             "--quiet", "--out", str(tmp_path / f"run-{tag}")],
        ]  # fmt: skip

    def image_cmds(path: Path) -> list[list[str]]:
        return [
            ["predict", str(ckpt), str(path), "--json"],
            ["predict", str(rgb), str(path)],
            ["filters", str(path), "--out", str(tmp_path / "filters")],
        ]

    # Baseline: the same commands on well-formed input, for the memory bound.
    baseline = [
        *image_cmds(images["plain.png"]),
        *image_cmds(images["rgba.png"]),
        ["predict", str(maps), str(images["plain.png"])],
        *data_cmds(good, "good"),
    ]
    base = _drive(tmp_path, baseline, "baseline")
    statuses = [c["status"] for c in base["cases"]]
    assert statuses == [0, 0, 0, 0, 0, 0, 2, 0, 0], base["cases"]

    readable = {"plain.png", "gray16.png", "int32.tif", "float.tif", "rgba.png", "la.png",
                "rgba-white-ink.png", "palette.png", "palette-transparent.png", "cmyk.jpg",
                "bilevel.png", "animated.gif", "animated.png"}  # fmt: skip
    hostile = [cmd for name in sorted(images) for cmd in image_cmds(images[name])]
    expected = [0 if name in readable else 2 for name in sorted(images) for _ in range(3)]
    # A damaged training file: train refuses it, evaluate (test split) does not read it.
    # A damaged test file: both refuse it.
    special = {"fifo": images["fifo.png"], "dev-zero": Path("/dev/zero")}
    for i, src in enumerate([*(idx_cases[k] for k in sorted(idx_cases)), *special.values()]):
        replace = {"train-images-idx3-ubyte.gz": src}
        hostile += data_cmds(_mnist_dir(tmp_path / f"idx-{i}", replace), f"idx-{i}")
        replace = {"t10k-labels-idx1-ubyte.gz": src}
        hostile += data_cmds(_mnist_dir(tmp_path / f"lab-{i}", replace), f"lab-{i}")
        expected += [0, 2, 2, 2]
    got = _drive(tmp_path, hostile, "hostile")

    for case in got["cases"]:
        where = " ".join(case["argv"])
        assert case["status"] in (0, 2), (where, case["status"], case["stderr"])
        lines = case["stderr"].splitlines()
        if case["status"] == 2:
            assert len(lines) == 1 and lines[0].startswith("scratchcnn: error: "), (where, lines)
        else:
            assert lines == [], (where, lines)
    wrong = [
        (" ".join(c["argv"]), c["status"], c["stderr"] or c["stdout"][-200:])
        for c, want in zip(got["cases"], expected, strict=True)
        if c["status"] != want
    ]
    assert not wrong, wrong
    # Peak memory: bounded by what the same commands need on good input, plus a margin far
    # below what an unbounded reader allocates for these files (the 20000x20000 bomb decodes
    # to 400 MB, the IDX gzip bomb to 256 MB, the overflowing header to exabytes).
    margin_kib = 96 * 1024
    print(f"peak RSS: {got['maxrss_kib']} KiB hostile, {base['maxrss_kib']} KiB baseline")
    assert got["maxrss_kib"] < base["maxrss_kib"] + margin_kib, (got["maxrss_kib"], base)
