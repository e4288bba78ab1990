"""Evaluation metrics for generated talking videos.

* :mod:`.interactivity` — the AnyTalker *Interactivity* score (eye and brow motion of the listeners),
  computed from per-frame face observations exactly as the reference benchmark does.
* :mod:`.landmarks` — landmark sources for it: InsightFace 106-point (optional) or MediaPipe face mesh
  (offline, mapped onto the InsightFace eye/brow points).
* :mod:`.syncnet` — SyncNet (Chung & Zisserman) Sync-C / Sync-D and the per-speaker Sync-C*.
* :mod:`.runner` — a folder of videos + speaking intervals -> tables and plots; ``score_video`` for one clip.
* :mod:`.command` — ``anytalker evaluate``.

Importing this package is light: numpy only. Heavy libraries load inside the functions that need them.
"""

from __future__ import annotations

from .interactivity import (
    EYE_BROW_INDICES,
    FaceObservation,
    InteractivityResult,
    compute_interactivity,
)
from .runner import VideoScore, evaluate_folder, score_video

__all__ = [
    "EYE_BROW_INDICES",
    "FaceObservation",
    "InteractivityResult",
    "compute_interactivity",
    "VideoScore",
    "evaluate_folder",
    "score_video",
]
