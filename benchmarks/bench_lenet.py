"""LeNet-5 side by side: scratchcnn vs PyTorch — ``bench_speed.py --net lenet5``.

    python benchmarks/bench_lenet.py [--threads 2] [--rounds 7] [--seconds 0.5] [--json FILE]

Kept under its old name; the method and every option are ``bench_speed.py``'s.
"""

from __future__ import annotations

from _threads import THREADS  # noqa: F401  first: pins the BLAS thread count

# isort: split

import torch
from bench_speed import main


def torch_lenet() -> torch.nn.Sequential:
    """The same LeNet-5 as ``scratchcnn.nn.zoo.lenet5`` (max pooling)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


if __name__ == "__main__":
    main(default_nets=["lenet5"])
