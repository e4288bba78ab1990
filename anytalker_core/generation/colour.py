"""Colour matching of generated frames to the start image, in CIELAB (perceptual) space.

Chained windows re-encode decoded frames, and every VAE round trip shifts the colours a little; over a
minute the shifts add up (the "colour shift after about a minute" users of InfiniteTalk and MultiTalk
report). Each window is therefore matched to the **start image**: the window's pixels, converted to CIELAB
(D65, ``L`` 0..100, ``a``/``b`` about −128..127), get the per-channel mean and standard deviation of the
start image (Reinhard et al.'s statistics transfer, done in Lab rather than lαβ):

``lab' = (lab − mean_window) · clip(std_ref / std_window, 1/r, r) + mean_ref``  (``r`` = :data:`MAX_GAIN`)

One transform per window (statistics over all of its frames), so frames inside a window do not flicker;
the overlap cross-fade (:mod:`.window_plan`) smooths the step between windows. The colour conversion is
OpenCV's float32 ``RGB ↔ Lab`` (the same formulas as scikit-image's ``rgb2lab``, much faster); statistics
are computed on a strided subsample of the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["LabStats", "MAX_GAIN", "rgb_to_lab", "lab_to_rgb", "lab_stats", "match_colour", "delta_e76"]

MAX_GAIN = 2.0          # the std ratio is limited to 1/2 .. 2 (a flat window is not stretched into noise)
_SAMPLE_PIXELS = 65536  # pixels per frame that enter the statistics (strided subsample)


@dataclass(frozen=True)
class LabStats:
    """Per-channel CIELAB statistics: ``mean [3]`` and ``std [3]`` (L, a, b)."""

    mean: np.ndarray
    std: np.ndarray


def _as_uint8_frames(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"{what}: expected uint8 RGB frames [T, H, W, 3] (or one [H, W, 3] image), got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    return frames


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., H, W, 3]`` → float32 CIELAB (D65) of the same shape."""
    import cv2

    image = np.asarray(image)
    flat = image.reshape(-1, image.shape[-2], 3) if image.ndim > 3 else image
    lab = cv2.cvtColor(np.ascontiguousarray(flat, dtype=np.float32) / np.float32(255.0), cv2.COLOR_RGB2Lab)
    return lab.reshape(image.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB ``[..., H, W, 3]`` → uint8 RGB (out-of-gamut values clipped)."""
    import cv2

    flat = lab.reshape(-1, lab.shape[-2], 3) if lab.ndim > 3 else lab
    rgb = cv2.cvtColor(np.ascontiguousarray(flat, dtype=np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).reshape(lab.shape)


def lab_stats(frames: np.ndarray) -> LabStats:
    """CIELAB mean and std of uint8 RGB ``frames [T, H, W, 3]`` (or one image), over a pixel subsample."""
    frames = _as_uint8_frames(frames, "colour statistics")
    h, w = frames.shape[1:3]
    step = max(1, int(np.ceil(np.sqrt(h * w / _SAMPLE_PIXELS))))
    total = np.zeros(3, np.float64)
    squares = np.zeros(3, np.float64)
    count = 0
    for frame in frames:
        lab = rgb_to_lab(frame[::step, ::step]).reshape(-1, 3).astype(np.float64)
        total += lab.sum(0)
        squares += (lab * lab).sum(0)
        count += lab.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return LabStats(mean=mean.astype(np.float32), std=std.astype(np.float32))


def match_colour(frames: np.ndarray, reference: LabStats, strength: float = 1.0) -> np.ndarray:
    """Give ``frames`` (uint8 ``[T, H, W, 3]``) the CIELAB mean/std of ``reference`` (one transform for all
    frames, see the module docstring). ``strength`` in 0..1 mixes the transform with the identity.

    Returns new uint8 frames of the same shape.
    """
    frames = _as_uint8_frames(frames, "colour matching")
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"colour match strength must be between 0 and 1, got {strength}")
    source = lab_stats(frames)
    gain = np.clip(reference.std / np.maximum(source.std, 1e-3), 1.0 / MAX_GAIN, MAX_GAIN)
    gain = (1.0 - strength) + strength * gain
    target = source.mean + strength * (reference.mean - source.mean)
    offset = target - source.mean * gain  # lab' = (lab - mean_window) * gain + target
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        lab = rgb_to_lab(frame)
        out[i] = lab_to_rgb(lab * gain.astype(np.float32) + offset.astype(np.float32))
    return out


def delta_e76(a: LabStats | np.ndarray, b: LabStats | np.ndarray) -> float:
    """CIE76 colour difference (Euclidean distance in CIELAB) between two mean colours."""
    ma = a.mean if isinstance(a, LabStats) else np.asarray(a, np.float64)
    mb = b.mean if isinstance(b, LabStats) else np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(ma, np.float64) - np.asarray(mb, np.float64)))
