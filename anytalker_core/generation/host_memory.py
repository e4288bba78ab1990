"""Host (CPU) memory between the stages of a generation: what glibc's allocator keeps, and handing it back.

glibc's ``malloc`` keeps the pages of freed heap blocks mapped, and serves blocks below its *mmap
threshold* from that heap; the threshold rises (up to 32 MiB) to the size of every large block freed, so
after the first few a stage's multi-MiB buffers come from the heap too. Resident memory then depends on
how earlier stages left the heap, not only on what is alive: after the audio stage of a 3-minute clip
the process held ~40 MiB of freed pages into the first window, and one window's decode made its
resident size grow by anything from 14 to 42 MiB for the same live buffers (BENCHMARKS.md, "Long clips").

- :func:`release_freed_memory` (``malloc_trim(0)``, ~ms) after each stage that frees a lot: the library
  calls it after the audio stage, after the conditioning and at each long-clip window's motion-frame
  encode and end.
- :func:`serve_large_blocks_from_mmap` fixes the threshold, so that every block of ``threshold`` bytes or
  more is its own mapping, returned whole when freed: a process-wide setting, for programs that own their
  process (the ``anytalker`` command calls it); a library inside another program (ComfyUI) leaves its
  host's allocator alone.

Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging

__all__ = ["LARGE_BLOCK_BYTES", "release_freed_memory", "serve_large_blocks_from_mmap"]

log = logging.getLogger(__name__)

#: blocks from this size up are mapped on their own by :func:`serve_large_blocks_from_mmap`: above the
#: VAE's per-chunk activations at small sizes (≤ 1 MiB), below a window's video buffers (8 MiB at 64×128)
LARGE_BLOCK_BYTES = 4 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 -- both exist in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> None:
    """Hand the heap pages of freed blocks back to the system (glibc's ``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def serve_large_blocks_from_mmap(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (and its heap-top trim threshold at 16 × that, so
    small blocks do not make the heap shrink and grow); returns False where that is not possible.

    A block of ``threshold`` bytes or more then costs a fresh mapping (page faults) every time: a few per
    long-clip window, no measurable CPU time (BENCHMARKS.md), for a resident peak that no longer depends
    on the heap's history."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, int(16 * threshold)))
    if ok:
        log.debug("host memory: blocks of %d MiB and more come from mmap", threshold >> 20)
    return ok
