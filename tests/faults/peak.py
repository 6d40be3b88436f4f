"""This process's own peak resident memory, for the drivers that test bounded memory.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not it for a child of a large process: Linux keeps
the high-water mark across ``exec``, and Python's ``subprocess`` (vfork, then exec) hands
the child the *parent's* peak. A child of a 600 MB process reports 625 MB while its own
peak is 76 MB; in CI the pytest process had grown past 512 MB, and a bounded-memory test
failed on the parent's memory. ``VmHWM`` in /proc/self/status belongs to this process's own
address space, which exec made new.
"""

from __future__ import annotations

import resource


def own_peak_kib() -> int:
    """Peak resident memory of this process's own address space, in KiB (Linux: VmHWM;
    elsewhere ``ru_maxrss``, which is KiB on Linux and the BSDs)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
