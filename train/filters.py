"""Data filters that run locally: audio level and faces per frame.

Optical flow, jitter and scene cuts are in :mod:`.filters_motion`, voices per track in
:mod:`.filters_speakers`, SyncNet pairing in :mod:`.filters_sync`. Each returns a number (reported for
every clip, kept or dropped) so thresholds can be tuned from the prepare report instead of guessed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["audio_rms_db", "faces_per_frame"]


def audio_rms_db(wave: torch.Tensor | np.ndarray) -> float:
    """RMS level of a waveform in dBFS (``-inf`` for digital silence)."""
    x = np.asarray(wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else wave, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(x * x)))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


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
