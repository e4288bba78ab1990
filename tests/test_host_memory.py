"""Host memory between stages (anytalker_core.generation.host_memory), judged by the kernel's resident size.

Run in a fresh interpreter (the heap is the process's): a freed multi-MiB block that glibc serves from
its heap stays resident until ``release_freed_memory``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")

_SCRIPT = textwrap.dedent("""
    import ctypes, json, os
    from anytalker_core.generation import host_memory
    page = os.sysconf("SC_PAGE_SIZE")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page / 2**20
    def touch(p, n):
        ctypes.memset(p, 1, n)
    big = libc.malloc(16 << 20); touch(big, 16 << 20); libc.free(big)   # glibc's threshold rises to 16 MiB
    block = libc.malloc(8 << 20); touch(block, 8 << 20)
    pin = libc.malloc(4096); touch(pin, 4096)                            # a live block after it
    before = rss(); libc.free(block); freed = rss()
    host_memory.release_freed_memory(); trimmed = rss()
    print(json.dumps({"dropped_at_free": before - freed, "dropped_at_release": freed - trimmed}))
""")


def _run() -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_freed_heap_block_stays_resident_until_released():
    r = _run()
    assert r["dropped_at_free"] < 1  # free(): glibc keeps the 8 MiB of pages
    assert r["dropped_at_release"] > 7  # malloc_trim(0) hands them back

