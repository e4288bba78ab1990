"""A clip's training windows: re-timing to the training frame rate, ``4n+1``-frame windows (their count and
sample ids), the training size of their frames and the cover-resize to it, and the container probes that
count frames without decoding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from anytalker_core.errors import InputError
from anytalker_core.sampling.sizes import target_size

from .config import PrepareConfig

__all__ = ["clip_size", "resample_indices", "frames_for_training", "resize_cover", "probe_fps", "probe_frames",
           "window_id", "window_count"]


def clip_size(frame_hw, cfg: PrepareConfig) -> tuple[int, int]:
    """The training size ``(H, W)`` of a clip whose frames are ``frame_hw``: the size inference gives the same
    image (:func:`anytalker_core.sampling.target_size`: area <= ``max_area``, aspect kept, sides multiples of
    ``size_multiple``)."""
    return target_size(int(frame_hw[0]), int(frame_hw[1]), max_area=cfg.max_area, multiple=cfg.size_multiple)


def resample_indices(num_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source frame index shown at each output frame time (nearest earlier frame)."""
    if src_fps <= 0 or dst_fps <= 0:
        raise InputError(f"frame rates must be positive, got {src_fps} -> {dst_fps}")
    duration = num_frames / src_fps
    count = int(math.floor(duration * dst_fps + 1e-6))
    idx = np.floor(np.arange(count) * src_fps / dst_fps + 1e-6).astype(np.int64)
    return idx[idx < num_frames]


def frames_for_training(available: int, max_frames: int) -> int:
    """The largest ``4n + 1`` ≤ ``min(available, max_frames)`` (0 if fewer than 1 frame)."""
    n = min(available, max_frames)
    return 0 if n < 1 else (n - 1) // 4 * 4 + 1


def resize_cover(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` to cover ``size_hw`` and centre-crop to it exactly."""
    import cv2

    th, tw = size_hw
    h, w = frames.shape[1:3]
    scale = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    out = np.empty((frames.shape[0], th, tw, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (nw, nh), interpolation=interp)[y0:y0 + th, x0:x0 + tw]
    return out


def probe_fps(path: Path) -> float | None:
    """The video stream's frame rate without decoding (None if it cannot be read here)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return float(rate) if rate else None
    except (av.error.FFmpegError, IndexError, OSError, ValueError):
        return None  # read_video reports the problem with a clear message


def probe_frames(path: Path) -> int | None:
    """The video stream's frame count from the container, without decoding (None if it does not say)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and stream.time_base and rate:
                return int(math.ceil(float(stream.duration * stream.time_base) * float(rate)))
    except (av.error.FFmpegError, IndexError, OSError, ValueError):
        pass
    return None


def window_id(clip_id: str, seg: int, cfg: PrepareConfig) -> str:
    """Sample id of window ``seg`` of a clip. Window 0 keeps the clip's id when every window is taken (caches
    of the first-window-only default named it so: re-running prepare on them adds the other windows)."""
    plain = cfg.segments_per_clip == 1 or (cfg.segments_per_clip == 0 and seg == 0)
    return clip_id if plain else f"{clip_id}__s{seg:03d}"


def window_count(frames: int, cfg: PrepareConfig) -> int:
    """Windows prepare cuts from ``frames`` frames at the training frame rate (0: too short)."""
    length = frames_for_training(frames, cfg.max_frames)
    if length < cfg.min_frames:
        return 0
    count = max(1, frames // length)
    return min(cfg.segments_per_clip, count) if cfg.segments_per_clip > 0 else count
