"""glibc's mmap threshold stays fixed under ``stream-sync run`` (service.fix_mmap_threshold).

Each check runs in a fresh interpreter: the threshold is process-wide and glibc adjusts it
once per freed mapped block, so the pytest process's own history would blur the result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from stream_sync.service import fix_mmap_threshold

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

# How many bytes of a 1 MiB allocation made after a 4 MiB block was freed live in mapped
# blocks of their own (mallinfo2().hblkhd): glibc's dynamic threshold rose to 4 MiB with that
# free, so without a fixed threshold the 1 MiB comes from the heap (0 mapped bytes).
_PROBE = """
import ctypes, json, sys
from stream_sync.service import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblkhd
block = bytearray(1 << 20)
mapped = libc.mallinfo2().hblkhd - before
print(json.dumps({"fixed": fixed, "mapped": mapped}))
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> dict[str, int | bool]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    return json.loads(out.stdout)


@glibc
def test_without_a_fixed_threshold_a_freed_burst_moves_large_blocks_to_the_heap() -> None:
    result = _probe("default")
    assert result == {"fixed": False, "mapped": 0}


@glibc
def test_fixed_threshold_keeps_large_blocks_mapped_after_a_burst() -> None:
    result = _probe("fix")
    assert result["fixed"] is True
    assert result["mapped"] >= 1 << 20  # its own pages: returned to the OS when freed


@glibc
def test_the_environment_variable_wins() -> None:
    assert fix_mmap_threshold({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = _probe("fix", env)
    assert result["fixed"] is False
    assert result["mapped"] >= 1 << 20  # glibc applied the variable itself
