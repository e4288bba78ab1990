"""Parity runner for the ``interactivity`` fixture group (reference ``calculate_interactivity.py``).

The fixture stores the detections the reference was fed (``landmarks [T, N, 106, 2]``,
``bboxes_xyxy [T, N, 4]``, ``present_b [T, N]``) and its results. We feed the same detections through
:func:`anytalker_core.metrics.interactivity.compute_interactivity` and compare ``score``, ``per_face``
(rtol from the json) and ``score_b`` (exact; an invalid clip maps to the reference's −1).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from . import Comparison, Fixture, compare, compare_exact
from ..metrics.interactivity import FaceObservation, compute_interactivity, side_names

#: golden tensors read as inputs (the tracked faces)
INPUTS = ("landmarks", "bboxes_xyxy", "present_b")

REFERENCE_NUM_FACES = 2


def _rtol(fixture: Fixture, key: str, default: float = 1e-5) -> float:
    text = str(fixture.meta.get("tolerance", {}).get(key, ""))
    match = re.search(r"rtol\s*([0-9.eE+-]+)", text)
    return float(match.group(1)) if match else default


def _observations(landmarks: np.ndarray, boxes: np.ndarray, present: np.ndarray) -> list[list[FaceObservation]]:
    """Per frame, the faces marked present (identity order does not matter to the metric)."""
    frames = []
    for t in range(landmarks.shape[0]):
        frames.append([FaceObservation(box=boxes[t, i], landmarks=landmarks[t, i])
                       for i in range(landmarks.shape[1]) if present[t, i]])
    return frames


def run(fixture: Fixture) -> list[Comparison]:
    params = fixture.meta["params"]
    tensors = fixture.tensors
    landmarks = tensors["landmarks"].numpy()
    boxes = tensors["bboxes_xyxy"].numpy()
    # the reference hard-codes two faces (left/right): with more detections it keeps the two largest,
    # with fewer it returns -1; the stored identity count must not change that
    num_faces = REFERENCE_NUM_FACES
    kwargs = dict(
        fps=float(params["fps"]),
        intervals=params.get("speaker_intervals"),
        frame_size=(int(params["frame_height"]), int(params["frame_width"])),
        num_faces=num_faces,
        target_size=int(params.get("target_size", 224)),
    )
    all_present = np.ones(landmarks.shape[:2], dtype=bool)
    result_a = compute_interactivity(_observations(landmarks, boxes, all_present), **kwargs)
    present_b = tensors["present_b"].numpy().astype(bool)
    result_b = compute_interactivity(_observations(landmarks, boxes, present_b), **kwargs)

    expected_score = tensors["score"]
    expected_faces = tensors["per_face"]
    rtol_score = _rtol(fixture, "score")
    rtol_faces = _rtol(fixture, "per_face")
    out = []
    score = torch.tensor([result_a.reference_score()], dtype=torch.float64)
    cmp = compare("score", score, expected_score, 0.0, rtol_score)
    if not result_a.valid:
        cmp.detail += f"  ours invalid: {result_a.reason}"
    out.append(cmp)
    # per_face is stored in side order; compare by side name so a missing side fails loudly
    names = [name for name, _ in fixture.meta.get("results", {}).get("scenario_a", {}).get("per_face", [])]
    if not names and expected_faces.numel():
        names = list(side_names(num_faces))[: expected_faces.numel()]
    ours = result_a.reference_per_face()
    if [name for name, _ in ours] == names:
        faces = torch.tensor([value for _, value in ours], dtype=torch.float64)
        out.append(compare("per_face", faces, expected_faces, 0.0, rtol_faces))
    else:
        out.append(Comparison("per_face", math.inf, math.inf, False,
                              f"sides {[name for name, _ in ours]} != expected {names}"))
    score_b = torch.tensor([result_b.reference_score()], dtype=torch.float64)
    if bool((tensors["score_b"] == -1).all()):
        out.append(compare_exact("score_b", score_b, tensors["score_b"]))
    else:
        out.append(compare("score_b", score_b, tensors["score_b"], 0.0, _rtol(fixture, "score")))
    if not result_b.valid:
        out[-1].detail += f"  ({result_b.reason})"
    return out
