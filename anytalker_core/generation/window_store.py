"""The work folder of a long clip: every finished window persisted atomically, so a killed run resumes.

Layout: ``<root>/<key>/`` with ``inputs.json`` (what the key was made from, for people) and one
``window_NNNN.npz`` per finished window holding ``emitted`` (uint8 ``[n, H, W, 3]``: the clip frames the
window wrote, see :attr:`.window_plan.Window.emit_span`) and ``tail`` (uint8 ``[M, H, W, 3]``: the motion
frames the next window starts from; empty for the last window). Each file is written through
:func:`~anytalker_core.io.atomic.atomic_path`, so a window is either wholly there or absent.

The key (:func:`run_key`) hashes everything that decides the frames: the conditioning tensors (which
stand for the image, the faces, the prompts and the encoders), the timeline's audio features, the
sampling and long-clip settings, and a fingerprint of the DiT's weights. Change any of them and the run
gets a new folder; the same inputs find the windows already written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import InputError
from ..io.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["WindowStore", "run_key", "module_fingerprint"]

_FORMAT = 1


def _update(h: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place (no copy of the bytes)
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"array{a.shape}{a.dtype}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())


def module_fingerprint(module: torch.nn.Module | None) -> str:
    """A cheap fingerprint of a model's weights: every parameter's name, shape, dtype and first 256 values."""
    if module is None:
        return "none"
    h = hashlib.blake2b(digest_size=16)
    for name, p in module.state_dict().items():
        flat = p.detach().reshape(-1)[:256].to("cpu", torch.float32)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat.numpy().tobytes())
    return h.hexdigest()


def run_key(settings: dict[str, Any], tensors: Iterable[torch.Tensor | np.ndarray]) -> str:
    """A 32-hex-digit key of ``settings`` (JSON-able) and ``tensors`` (hashed bit for bit)."""
    h = hashlib.blake2b(digest_size=16)
    _update(h, {"format": _FORMAT, **settings})
    for t in tensors:
        _update(h, t)
    return h.hexdigest()


class WindowStore:
    """Finished windows of one run, in ``root/key`` (created on first use).

    Args:
        root: the work folder (e.g. ``.out.windows`` next to the output file).
        key: from :func:`run_key`.
        description: JSON-able summary written to ``inputs.json``.
    """

    def __init__(self, root: str | Path, key: str, description: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"work folder '{self.root}': cannot create it ({exc.strerror}); choose a writable "
                             "folder for the finished windows") from None
        info = self.folder / "inputs.json"
        if description is not None and not info.exists():
            self._atomic_write(info, json.dumps(description, indent=1, default=str).encode())

    def _path(self, index: int) -> Path:
        return self.folder / f"window_{index:04d}.npz"

    def _atomic_write(self, path: Path, data: bytes | None = None, arrays: dict[str, np.ndarray] | None = None
                      ) -> None:
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            if arrays is not None:
                np.savez(f, **arrays)
            else:
                f.write(data or b"")

    def save(self, index: int, emitted: np.ndarray, tail: np.ndarray | None) -> None:
        """Persist window ``index`` (atomically)."""
        empty = np.zeros((0, *emitted.shape[1:]), np.uint8)
        self._atomic_write(self._path(index), arrays={"emitted": np.ascontiguousarray(emitted, np.uint8),
                                                      "tail": empty if tail is None else np.ascontiguousarray(tail)})

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """``(emitted, tail or None)`` of a finished window, or ``None`` when it is not there (or unreadable)."""
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                emitted, tail = data["emitted"], data["tail"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("work folder: %s is unreadable (%s); window %d is generated again", path, exc, index + 1)
            return None
        return emitted, (tail if len(tail) else None)

    def finished(self, count: int) -> int:
        """How many leading windows (0, 1, ...) of ``count`` are already written."""
        done = 0
        while done < count and self._path(done).is_file():
            done += 1
        return done

    def remove(self) -> None:
        """Delete this run's folder (and the work folder when nothing else is left in it)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass
