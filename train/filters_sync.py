"""Audio–face pairing by SyncNet confidence (the paper pairs each voice with its face by Sync-C).

Every speaker track of a window is scored against every face's mouth crop (``syncnet_python``'s
crop, :func:`anytalker_core.metrics.syncnet.crop_face_track`, on boxes interpolated between the
checked frames): ``confidence[i][k]`` is Sync-C of face ``i`` (left to right) with track ``k``.
A track is dropped

* ``sync_swapped`` — another face fits it well (Sync-C ≥ ``min_confidence``) and better than its own by
  more than ``margin`` (tracks in the wrong order, or two faces' tracks exchanged);
* ``sync_low`` — its own face's Sync-C is below ``min_confidence`` (a wrong voice, dubbed or
  unrelated audio);
* ``sync_offset`` — the best audio–video offset is more than ``max_offset`` frames (25 fps) away
  from 0 (audio out of sync).

Tracks with less than ``min_speech_s`` of speech in the window (the person listens) are not judged:
a silent track says nothing about whose mouth it belongs to. The weights are the user's SyncNet
(``syncnet_v2.model``); nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SyncCheck", "SyncPairing", "interpolate_boxes", "pair_tracks_with_faces"]


@dataclass
class SyncCheck:
    """Thresholds of the pairing filter (prepare config keys ``min_sync_confidence``, ``sync_margin``,
    ``max_sync_offset``, ``min_sync_speech_s``)."""

    min_confidence: float
    margin: float
    max_offset: int
    min_speech_s: float


@dataclass
class SyncPairing:
    """``confidence[i][k]`` / ``offset[i][k]``: face ``i`` against track ``k``; ``judged[k]``: whether
    track ``k`` had enough speech to be judged; ``reason``/``detail`` of a drop (``None`` = kept)."""

    confidence: list[list[float]]
    offset: list[list[int]]
    judged: list[bool]
    reason: str | None = None
    detail: str = ""

    def as_metrics(self) -> dict:
        return {"sync_c": [[round(c, 3) for c in row] for row in self.confidence], "sync_offset": self.offset}


def interpolate_boxes(checked: list[int], boxes: list[list[tuple[float, float, float, float]] | None],
                      num_faces: int, num_frames: int) -> np.ndarray:
    """Per-frame boxes ``[num_faces, num_frames, 4]`` from the boxes of the checked frames that hold the
    expected number of faces (``None`` entries are skipped), linearly interpolated (held at the ends)."""
    known = [(i, b) for i, b in zip(checked, boxes) if b is not None and len(b) == num_faces]
    if not known:
        raise ValueError("no checked frame holds the expected number of faces")
    xs = np.array([i for i, _ in known], dtype=np.float64)
    values = np.array([b for _, b in known], dtype=np.float64)  # [K, N, 4]
    t = np.arange(num_frames, dtype=np.float64)
    out = np.empty((num_faces, num_frames, 4))
    for n in range(num_faces):
        for c in range(4):
            out[n, :, c] = np.interp(t, xs, values[:, n, c])
    return out


def pair_tracks_with_faces(model, frames: np.ndarray, fps: float, face_boxes: np.ndarray,
                           tracks: list[torch.Tensor], speech_s: list[float], check: SyncCheck,
                           names: list[str], should_stop=None) -> SyncPairing:
    """Score every track against every face and decide (see the module docstring).

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB window at ``fps``; face_boxes: ``[N, T, 4]`` xyxy per frame.
        tracks: ``N`` mono 16 kHz tracks aligned with frame 0; speech_s: seconds of speech in each.
        names: how the report names each track (``speaker track 0 (a.wav)``).
    """
    from anytalker_core.metrics.syncnet import crop_face_track, retime_indices, sync_matrix

    idx = retime_indices(len(frames), fps)
    frames_25 = np.asarray(frames)[idx]
    crops = [crop_face_track(frames_25, face_boxes[n][idx]) for n in range(face_boxes.shape[0])]
    results = sync_matrix(model, crops, [t.float().numpy() for t in tracks], should_stop=should_stop)
    conf = [[r.confidence for r in row] for row in results]
    offset = [[r.offset for r in row] for row in results]
    judged = [s >= check.min_speech_s for s in speech_s]
    pairing = SyncPairing(conf, offset, judged)
    n = len(tracks)
    for k in range(n):
        if not judged[k]:
            continue
        own = conf[k][k]
        others = [(conf[i][k], i) for i in range(n) if i != k]
        if others:
            best, face = max(others)
            if best >= check.min_confidence and best > own + check.margin:
                pairing.reason = "sync_swapped"
                pairing.detail = (f"{names[k]} fits face {face + 1} (from the left) better than its own face {k + 1}: "
                                  f"Sync-C {best:.2f} vs {own:.2f} (margin {check.margin})")
                return pairing
        if own < check.min_confidence:
            pairing.reason = "sync_low"
            pairing.detail = (f"{names[k]} against face {k + 1}: Sync-C {own:.2f} < {check.min_confidence} "
                              "(a wrong voice, or audio that does not belong to this face)")
            return pairing
        if abs(offset[k][k]) > check.max_offset:
            pairing.reason = "sync_offset"
            pairing.detail = (f"{names[k]} against face {k + 1}: audio-video offset {offset[k][k]} frames at 25 fps "
                              f"(more than {check.max_offset})")
            return pairing
    return pairing
