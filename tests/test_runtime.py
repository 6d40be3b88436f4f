"""The allocator tuning: ``import scratchcnn`` changes no process-wide setting; training
(``fit``, so ``scratchcnn train`` too) tunes glibc's allocator on glibc Linux, unless
SCRATCHCNN_MALLOC_TUNING=0."""

import os
import subprocess
import sys

import pytest

FIT = """
import numpy as np
import scratchcnn.parallel.allocator as r, scratchcnn as sc
from scratchcnn.data import Dataset
from scratchcnn.training import fit
print(r._tuned)
model = sc.Sequential([sc.Flatten(), sc.Dense(4, 2)], input_shape=(1, 2, 2))
data = Dataset(np.zeros((4, 1, 2, 2), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"], "tiny")
fit(model, data, epochs=1, batch_size=2, progress=False)
print(r._tuned)
"""


def _tuned(env_value: str | None) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}
    if env_value is not None:
        env["SCRATCHCNN_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_allocator_tuned_when_training_starts_not_on_import():
    import platform

    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _tuned(None) == ["None", expected]  # untouched by the import, tuned by fit
    assert _tuned("0") == ["None", "False"]
