"""Motion filters from dense optical flow (OpenCV Farneback) and colour histograms.

One pass over a window's frames, downscaled to :data:`MOTION_WIDTH` px wide, gives three numbers per
window (all reported for every clip, kept or dropped):

* ``motion`` — mean flow magnitude in px/frame (how much moves; a still clip ~0, a pan of ``d`` px per
  frame ~``d``);
* ``jitter`` — mean change of the *global* motion (the median flow vector, i.e. the camera) from one
  frame pair to the next, px/frame². A steady pan or a talking head has ~0; a shaking camera or frames
  shifted at random has about the shift size. Median flow ignores the moving mouth and head;
* ``cut`` — the largest colour-histogram jump between consecutive frames (Bhattacharyya distance of
  16×16 hue-saturation histograms, 0 = identical, 1 = disjoint), with ``cut_frame`` where it happens,
  plus ``warp_error``: the largest mean absolute grey-level residual after warping one frame onto the
  next with its flow (a cut between two shots of similar colours still leaves what the flow cannot
  explain).

The thresholds are measured in docs/training.md ("Data filters").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MotionStats", "motion_stats", "MOTION_WIDTH"]

MOTION_WIDTH = 256  # frames are downscaled to this width (scores are in its pixels)
_HIST_BINS = (16, 16)


@dataclass
class MotionStats:
    """What :func:`motion_stats` measured on one window (px at :data:`MOTION_WIDTH` wide)."""

    motion: float
    jitter: float
    cut: float
    cut_frame: int
    warp_error: float

    def as_metrics(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _small(frame: np.ndarray, width: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    return cv2.resize(frame, (width, max(8, int(round(h * width / w)))), interpolation=cv2.INTER_AREA)


def _hist(small_rgb: np.ndarray) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(small_rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(_HIST_BINS), [0, 180, 0, 256])
    return cv2.normalize(hist, hist, 1.0, 0.0, cv2.NORM_L1)


def _warp_residual(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray) -> float:
    """Mean ``|cur − prev(x − flow)|`` over the frame (grey levels 0–255): ``flow`` maps prev → cur."""
    import cv2

    h, w = cur.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    # backward warp: the pixel of cur at (x, y) came from prev at (x, y) − flow (flow sampled at cur)
    warped = cv2.remap(prev, gx - flow[..., 0], gy - flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(cur.astype(np.float32) - warped.astype(np.float32)).mean())


def motion_stats(frames: np.ndarray, stride: int = 1, width: int = MOTION_WIDTH) -> MotionStats:
    """Motion, jitter and scene-cut scores of ``uint8 [T, H, W, 3]`` RGB frames.

    Flow is computed between frames ``(i, i + stride)`` and divided by ``stride``; histograms compare
    every pair of consecutive frames (a cut is never skipped by the stride).
    """
    import cv2

    t = frames.shape[0]
    if t < 2:
        return MotionStats(0.0, 0.0, 0.0, 0, 0.0)
    stride = max(1, min(int(stride), t - 1))
    smalls = [_small(f, width) for f in frames]
    grays = [cv2.cvtColor(s, cv2.COLOR_RGB2GRAY) for s in smalls]
    hists = [_hist(s) for s in smalls]
    jumps = [cv2.compareHist(hists[i], hists[i + 1], cv2.HISTCMP_BHATTACHARYYA) for i in range(t - 1)]
    magnitudes, global_moves, residuals = [], [], []
    for i in range(0, t - stride, stride):
        flow = cv2.calcOpticalFlowFarneback(grays[i], grays[i + stride], None, pyr_scale=0.5, levels=3, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
        magnitudes.append(float(np.linalg.norm(flow, axis=-1).mean()) / stride)
        global_moves.append(np.median(flow.reshape(-1, 2), axis=0) / stride)
        residuals.append(_warp_residual(grays[i], grays[i + stride], flow))
    moves = np.asarray(global_moves)
    jitter = float(np.linalg.norm(np.diff(moves, axis=0), axis=1).mean()) if len(moves) > 1 else 0.0
    k = int(np.argmax(jumps))
    return MotionStats(motion=float(np.mean(magnitudes)), jitter=jitter, cut=float(jumps[k]), cut_frame=k + 1,
                       warp_error=float(max(residuals)))
