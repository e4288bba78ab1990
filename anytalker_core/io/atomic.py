"""The one way files are written: to a temporary file beside the target, flushed to disk, then renamed.

A reader (or a crash, or Ctrl-C half-way) never sees a half-written file: ``path`` is either the old
file, absent, or the complete new one. Every writer in the project (model exports, videos, previews,
training caches, run state) goes through :func:`atomic_path`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from .file_mode import default_file_mode

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "save_safetensors_atomic"]


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path in ``path``'s folder; when the block ends without an error it is
    flushed to disk and renamed onto ``path``, otherwise it is deleted.

    ``suffix`` ends the temporary name (e.g. ``".png"`` for writers that pick a format by extension).
    The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 -> what open() would give (0666 minus umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON, indented, keys sorted (stable diffs), newline-terminated."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
                            ) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_path` (tensors made contiguous)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata is not None else None)
    return Path(path)
