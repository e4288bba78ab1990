"""Data filters that run locally: audio level, optical-flow motion, faces per frame.

Each returns a number (reported for every clip, kept or dropped) so thresholds can be tuned from
the prepare report instead of guessed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["audio_rms_db", "motion_score", "faces_per_frame", "MOTION_WIDTH"]

MOTION_WIDTH = 256  # frames are downscaled to this width before optical flow (scores are in its pixels)


def audio_rms_db(wave: torch.Tensor | np.ndarray) -> float:
    """RMS level of a waveform in dBFS (``-inf`` for digital silence)."""
    x = np.asarray(wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else wave, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(x * x)))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def _gray_small(frame: np.ndarray, width: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    scale = width / w
    small = cv2.resize(frame, (width, max(8, int(round(h * scale)))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


def motion_score(frames: np.ndarray, stride: int = 2, width: int = MOTION_WIDTH) -> float:
    """Mean optical-flow magnitude (Farneback) in pixels per frame, measured at ``width`` px wide.

    ``frames``: ``uint8 [T, H, W, 3]``. Pairs ``(i, i + stride)`` are compared and the magnitude is
    divided by ``stride``. A still clip scores ~0; a camera pan of ``d`` px/frame (at ``width``) ~``d``.
    """
    import cv2

    if frames.shape[0] < 2:
        return 0.0
    stride = max(1, min(stride, frames.shape[0] - 1))
    scores = []
    prev = _gray_small(frames[0], width)
    for i in range(stride, frames.shape[0], stride):
        cur = _gray_small(frames[i], width)
        flow = cv2.calcOpticalFlowFarneback(prev, cur, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                            poly_n=5, poly_sigma=1.2, flags=0)
        scores.append(float(np.linalg.norm(flow, axis=-1).mean()) / stride)
        prev = cur
    return float(np.mean(scores))


def faces_per_frame(detector, frames: np.ndarray, frame_indices: Sequence[int],
                    min_face_fraction: float = 0.0) -> list[list[tuple[float, float, float, float]]]:
    """Run the face detector on the given frames; boxes (xyxy, left to right) large enough to count.

    ``min_face_fraction``: faces whose box covers less than this fraction of the frame are ignored
    (background people, posters).
    """
    h, w = frames.shape[1:3]
    out = []
    for i in frame_indices:
        boxes = [b.xyxy for b in detector.detect(np.ascontiguousarray(frames[i]))]
        boxes = [b for b in boxes if (b[2] - b[0]) * (b[3] - b[1]) >= min_face_fraction * h * w]
        out.append(sorted(boxes, key=lambda b: b[0]))
    return out
