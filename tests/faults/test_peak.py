"""The bounded-memory tests measure the driver's own peak, not the one it inherits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

# A parent holding 400 MB starts a child; the child reports ru_maxrss and its own peak.
PARENT = f"""
import subprocess, sys
big = b"\\x01" * (400 << 20)  # written, so resident
child = '''
import resource, sys
sys.path.insert(0, {str(HERE)!r})
from peak import own_peak_kib
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, own_peak_kib())
'''
out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
print(out.stdout)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_own_peak_is_not_the_parents():
    out = subprocess.run(
        [sys.executable, "-c", PARENT], capture_output=True, text=True, check=True, timeout=60
    )
    inherited, own = map(int, out.stdout.split())
    assert inherited > 400 << 10  # KiB: Linux hands the parent's peak to the child...
    assert own < 100 << 10  # ...but the child's own address space peaked far lower
