"""Host (CPU) memory between the stages of a generation: handing back what glibc's allocator keeps.

glibc's ``malloc`` keeps the pages of freed heap blocks mapped, and serves blocks below its *mmap
threshold* from that heap; the threshold rises (up to 32 MiB) to the size of every large block freed, so
after the first few a stage's multi-MiB buffers come from the heap too. Resident memory then depends on
how earlier stages left the heap, not only on what is alive: after the audio stage of a 3-minute clip
the process held ~40 MiB of freed pages into the first window, and each motion-frame encode ~19 MiB into
its window's decode (BENCHMARKS.md, "Long clips").

:func:`release_freed_memory` (``malloc_trim(0)``, ~ms) runs after each stage that frees a lot: the
library calls it after the audio stage, after the conditioning and at each long-clip window's
motion-frame encode and end. It changes no allocator setting, so inside another program (ComfyUI) it
leaves its host's allocator as it was. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

__all__ = ["release_freed_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap pages of freed blocks back to the system (glibc's ``malloc_trim(0)``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
