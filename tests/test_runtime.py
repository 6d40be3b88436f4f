"""The allocator tuning: on by default on glibc Linux, off with SCRATCHCNN_MALLOC_TUNING=0."""

import subprocess
import sys

import pytest


def _tuned(env_value: str | None) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if env_value is not None:
        env["SCRATCHCNN_MALLOC_TUNING"] = env_value
    code = "import scratchcnn.runtime as r, scratchcnn; print(r._tuned)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_allocator_tuned_on_import_unless_disabled():
    import platform

    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _tuned(None) == expected
    assert _tuned("0") == "False"
