"""The AnyTalker *Interactivity* score: how much the listeners move their eyes and brows.

Semantics follow the reference benchmark (``benchmark/calculate_interactivity.py::
compute_video_average_motion_distance`` in the authors' code) step by step, so that given the same
detections the score matches it to float32 rounding (checked by the ``interactivity`` golden fixture):

Pass 1 (crop size)
    In every frame with at least ``num_faces`` detections (the ``num_faces`` largest by box area are
    kept), each box is made square (side ``max(w, h)``, same centre, shifted back inside the frame,
    then clamped). ``crop_size = max(int(side) over all such boxes, target_size)``.

Pass 2 (motion)
    Per frame, the faces (again the largest ``num_faces``) are ordered left to right twice: the landmark
    sets by their mean x, the boxes by ``x1``; box ``i`` is paired with landmark set ``i``. Side ``i`` is
    the i-th face from the left (``left``/``right`` for two faces). For each side present:

    * box centre ``c_t`` (of the square box): if it is more than 10 px from the last stable centre, the
      stable centre is used instead; the first centre is taken as is, later ones are smoothed
      ``centre = 0.7 * c_t + 0.3 * centre_{t-1}``; the stable centre becomes the new centre unless ``c_t``
      was an outlier;
    * landmarks are moved into the crop of side ``crop_size`` around the centre and scaled to
      ``target_size`` (224) px, in float32;
    * if their mean point distance to the last stable landmarks is above 10, the stable landmarks replace
      them (and stay the stable ones);
    * motion at frame ``t`` = mean L2 displacement of the 22 eye and brow points between frame ``t-1`` and
      ``t`` (the previous frame's possibly replaced points). Frame ``t`` counts for a side iff that side is
      not speaking at time ``t / fps`` (``s <= t/fps <= e`` for any of its intervals), with weight
      ``1/fps``. The first frame of a side has no motion and no weight.

    ``score = sum(motion * w) / sum(w)`` over all sides; ``per_face`` likewise per side.

Invalid clips
    The reference returns −1 when the number of faces ever differs from the first non-zero count, or that
    count is not 2 (``num_faces``), or nothing was counted. Here that is an :class:`InteractivityResult`
    with ``status == "invalid"``, ``score None`` and a ``reason`` naming the frame;
    :meth:`InteractivityResult.reference_score` gives the reference's −1.

The core takes plain per-frame observations (boxes + 106-point landmarks), so it is independent of any
detector; :mod:`.landmarks` turns video frames into observations.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

# InsightFace 2d106det indices of the eye and eyebrow points used by the reference, in its order:
# brow of the image-left face side (5), brow of the image-right side (5), image-left eye (6), image-right eye (6).
EYE_BROW_INDICES: tuple[int, ...] = (
    43, 48, 49, 51, 50,
    102, 103, 104, 105, 101,
    35, 41, 42, 39, 37, 36,
    89, 95, 96, 93, 91, 90,
)
NUM_LANDMARKS = 106

Intervals = Mapping[str, Sequence[Sequence[float]]]


@dataclass(frozen=True)
class FaceObservation:
    """One face in one frame.

    Attributes:
        box: ``[4]`` detection box ``x1, y1, x2, y2`` in image pixels.
        landmarks: ``[106, 2]`` InsightFace-layout ``(x, y)`` landmarks in image pixels. Rows that a
            landmark source cannot provide are NaN; the 22 eye/brow rows must be finite.
    """

    box: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float64).reshape(-1)
        lm = np.asarray(self.landmarks, dtype=np.float32)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InputError(f"face box must be 4 finite numbers x1, y1, x2, y2, got {self.box!r}")
        if lm.shape != (NUM_LANDMARKS, 2):
            raise InputError(f"face landmarks must have shape [{NUM_LANDMARKS}, 2] (InsightFace 106-point "
                             f"layout, image pixels), got {tuple(lm.shape)}")
        if not np.isfinite(lm[list(EYE_BROW_INDICES)]).all():
            raise InputError("face landmarks: the 22 eye and brow points must be finite (NaN is only allowed "
                             "for points the landmark source does not provide)")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", lm)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return float((x2 - x1) * (y2 - y1))


@dataclass
class InteractivityResult:
    """Outcome of :func:`compute_interactivity`.

    Attributes:
        status: ``"ok"`` or ``"invalid"``.
        score: duration-weighted mean listener eye/brow motion (224-px crop pixels per frame); ``None``
            when invalid.
        per_face: side name -> that side's score (only sides with at least one counted frame).
        reason: why the clip is invalid ("" when ok).
        sides: side names, left to right (``("left", "right")`` for two faces).
        fps: frame rate used for the timeline.
        crop_size: the unified crop side in image pixels (pass 1).
        motion: ``float64 [T, N]`` per-frame motion of each side (NaN where none was measured).
        counted: ``bool [T, N]`` frames that entered the score.
        speaking: ``bool [T, N]`` frames inside that side's speaking intervals.
    """

    status: str
    score: float | None
    per_face: dict[str, float]
    reason: str = ""
    sides: tuple[str, ...] = ()
    fps: float = 0.0
    crop_size: int = 0
    motion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    counted: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    speaking: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))

    @property
    def valid(self) -> bool:
        return self.status == "ok"

    def reference_score(self) -> float:
        """The score as the reference reports it: −1.0 for an invalid clip."""
        return float(self.score) if self.valid and self.score is not None else -1.0

    def reference_per_face(self) -> list[tuple[str, float]]:
        """``[(side, score), ...]`` as the reference returns it (empty for an invalid clip)."""
        return list(self.per_face.items()) if self.valid else []


def side_names(num_faces: int) -> tuple[str, ...]:
    """Names of the faces from the left: ``left, right`` for two, ``face1 … faceN`` otherwise."""
    if num_faces == 2:
        return ("left", "right")
    return tuple(f"face{i + 1}" for i in range(num_faces))


def normalize_intervals(intervals: Intervals | None, sides: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """Validate speaking intervals ``{side: [[start_s, end_s], ...]}``; missing sides never speak.

    Keys must be side names (for two faces ``left``/``right``; ``speakerK`` is accepted for ``faceK``, as
    ``anytalker split-voices`` writes them); unknown keys are an error so that a typo does not silently
    count a speaker as a listener.
    """
    out: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
    if intervals is None:
        return out
    if not isinstance(intervals, Mapping):
        raise InputError(f"speaking intervals must be a mapping {{side: [[start, end], ...]}}, got "
                         f"{type(intervals).__name__}")
    for key, segs in intervals.items():
        if isinstance(key, str) and key.startswith("speaker") and "face" + key[len("speaker"):] in out:
            key = "face" + key[len("speaker"):]
        if key not in out:
            raise InputError(f"speaking intervals: unknown side '{key}' (expected one of {', '.join(sides)})")
        if segs is None:
            continue
        for seg in segs:
            try:
                start, end = (float(v) for v in seg)
            except (TypeError, ValueError):
                raise InputError(f"speaking intervals['{key}']: each interval must be [start_s, end_s], "
                                 f"got {seg!r}") from None
            if not (math.isfinite(start) and math.isfinite(end)):
                raise InputError(f"speaking intervals['{key}']: interval {seg!r} is not finite")
            if end < start:
                raise InputError(f"speaking intervals['{key}']: interval {seg!r} ends before it starts")
            out[key].append((start, end))
    return out


def speaking_mask(intervals: Mapping[str, Sequence[tuple[float, float]]], sides: Sequence[str],
                  num_frames: int, fps: float) -> np.ndarray:
    """``bool [T, N]``: side n speaks at frame t iff ``s <= t/fps <= e`` for one of its intervals."""
    mask = np.zeros((num_frames, len(sides)), dtype=bool)
    for n, side in enumerate(sides):
        for t in range(num_frames):
            t_sec = (t + 0.0) / fps
            mask[t, n] = any(s <= t_sec <= e for s, e in intervals.get(side, ()))
    return mask


def make_square_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int
                    ) -> tuple[float, float, float, float]:
    """Square box of side ``max(w, h)`` about the same centre, moved back inside the frame, then clamped."""
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1)
    nx1, ny1, nx2, ny2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    if nx1 < 0:
        nx1, nx2 = 0, side
    if ny1 < 0:
        ny1, ny2 = 0, side
    if nx2 > width:
        nx2, nx1 = width, width - side
    if ny2 > height:
        ny2, ny1 = height, height - side
    return max(0, nx1), max(0, ny1), min(width, nx2), min(height, ny2)


def _largest(faces: Sequence[FaceObservation], n: int) -> list[FaceObservation]:
    faces = list(faces)
    if len(faces) > n:
        faces = sorted(faces, key=lambda f: f.area, reverse=True)[:n]
    return faces


def _mean_x(face: FaceObservation) -> float:
    xs = face.landmarks[:, 0]
    finite = np.isfinite(xs)
    return xs.mean() if finite.all() else xs[finite].mean()


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    d = np.linalg.norm(a - b, axis=-1)
    finite = np.isfinite(d)
    return d.mean() if finite.all() else d[finite].mean()


def unified_crop_size(frames: Sequence[Sequence[FaceObservation]], frame_size: tuple[int, int],
                      num_faces: int = 2, target_size: int = 224) -> int:
    """Pass 1: the crop side shared by all faces and frames (at least ``target_size``)."""
    height, width = frame_size
    best = 0
    for faces in frames:
        faces = _largest(faces, num_faces)
        if len(faces) < num_faces:
            continue
        for face in faces:
            sx1, _, sx2, _ = make_square_box(*(float(v) for v in face.box), width, height)
            best = max(best, int(sx2 - sx1))
    return max(best, target_size)


def compute_interactivity(
    frames: Sequence[Sequence[FaceObservation]],
    fps: float,
    intervals: Intervals | None,
    frame_size: tuple[int, int],
    num_faces: int = 2,
    target_size: int = 224,
    outlier_px: float = 10.0,
    ema_alpha: float = 0.7,
) -> InteractivityResult:
    """Interactivity of one clip from per-frame face observations.

    Args:
        frames: per video frame, the faces found in it (any order; an empty list = no face).
        fps: the clip's frame rate (frame t is at ``t / fps`` seconds).
        intervals: speaking intervals ``{side: [[start_s, end_s], ...]}`` (inclusive ends); sides are
            ``left``/``right`` for two faces, ``face1…faceN`` otherwise. ``None``: nobody speaks.
        frame_size: ``(height, width)`` of the frames in pixels (boxes are clamped to it).
        num_faces: faces every frame must show (2 in the reference benchmark).
        target_size: side of the normalised face crop (224 in the reference).
        outlier_px: centre and landmark outlier threshold (10 in the reference).
        ema_alpha: weight of the new box centre in the smoothing (0.7 in the reference).
    Returns:
        :class:`InteractivityResult` (``status "invalid"`` with a reason where the reference gives −1).
    """
    if not isinstance(num_faces, int) or num_faces < 1:
        raise InputError(f"num_faces must be a positive integer, got {num_faces!r}")
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(float(fps)) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps!r}")
    fps = float(fps)
    height, width = (int(v) for v in frame_size)
    if height <= 0 or width <= 0:
        raise InputError(f"frame_size must be (height, width) > 0, got {frame_size!r}")
    sides = side_names(num_faces)
    segs = normalize_intervals(intervals, sides)
    num_frames = len(frames)
    speaking = speaking_mask(segs, sides, num_frames, fps)
    motion = np.full((num_frames, num_faces), np.nan)
    counted = np.zeros((num_frames, num_faces), dtype=bool)

    crop_size = unified_crop_size(frames, (height, width), num_faces, target_size)
    half = crop_size / 2
    scale = np.float32(target_size / crop_size)
    eye_brow = list(EYE_BROW_INDICES)

    centre: list[tuple[float, float] | None] = [None] * num_faces
    stable_centre: list[tuple[float, float] | None] = [None] * num_faces
    prev_lm: list[np.ndarray | None] = [None] * num_faces
    stable_lm: list[np.ndarray | None] = [None] * num_faces
    motion_sum = [0.0] * num_faces
    weight_sum = [0.0] * num_faces
    total_motion = 0.0
    total_weight = 0.0
    expected: int | None = None
    reason = ""

    for t, faces in enumerate(frames):
        faces = _largest(faces, num_faces)
        count = len(faces)
        if expected is None and count > 0:
            expected = count
        if expected is not None and not reason:
            if count != expected:
                reason = (f"face count changed at frame {t}: {count} face{'s' * (count != 1)} "
                          f"instead of {expected}")
            elif expected != num_faces:
                reason = (f"frame {t} shows {count} face{'s' * (count != 1)}; exactly {num_faces} "
                          f"{'is' if num_faces == 1 else 'are'} required in every frame")

        by_landmarks = sorted(faces, key=_mean_x)
        by_box = sorted(faces, key=lambda f: f.box[0])
        for n in range(min(count, num_faces)):
            lm = by_landmarks[n].landmarks
            box = make_square_box(*(float(v) for v in by_box[n].box), width, height)
            # --- box centre: outlier rejection + EMA
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            outlier = False
            if stable_centre[n] is not None:
                scx, scy = stable_centre[n]
                if np.sqrt((cx - scx) ** 2 + (cy - scy) ** 2) > outlier_px:
                    outlier = True
                    cx, cy = scx, scy
            if centre[n] is None:
                centre[n] = (cx, cy)
            else:
                pcx, pcy = centre[n]
                centre[n] = (ema_alpha * cx + (1 - ema_alpha) * pcx, ema_alpha * cy + (1 - ema_alpha) * pcy)
            if not outlier:
                stable_centre[n] = centre[n]
            # --- landmarks in the target_size crop (float32, as the reference)
            ox, oy = centre[n][0] - half, centre[n][1] - half
            crop_lm = lm.copy()
            crop_lm[:, 0] -= np.float32(ox)
            crop_lm[:, 1] -= np.float32(oy)
            crop_lm *= scale
            lm_outlier = False
            if stable_lm[n] is not None and _mean_distance(crop_lm, stable_lm[n]) > outlier_px:
                lm_outlier = True
                crop_lm = stable_lm[n].copy()
            if prev_lm[n] is not None:
                disp = crop_lm[eye_brow] - prev_lm[n][eye_brow]
                step = float(max(0.0, float(np.linalg.norm(disp, axis=-1).mean())))
                motion[t, n] = step
                if not speaking[t, n]:
                    w = 1.0 / fps
                    counted[t, n] = True
                    total_motion += step * w
                    total_weight += w
                    motion_sum[n] += step * w
                    weight_sum[n] += w
            prev_lm[n] = crop_lm
            if not lm_outlier:
                stable_lm[n] = crop_lm.copy()

    if expected is None:
        reason = f"no face was found in any of the {num_frames} frames"
    elif not reason and total_weight == 0:
        reason = ("no frame could be scored: every face speaks in every frame, or the clip is shorter "
                  "than 2 frames")
    per_face = {sides[n]: motion_sum[n] / weight_sum[n] for n in range(num_faces) if weight_sum[n] > 0}
    common = dict(sides=sides, fps=fps, crop_size=crop_size, motion=motion, counted=counted, speaking=speaking)
    if reason:
        log.info("interactivity: invalid clip (%s)", reason)
        return InteractivityResult(status="invalid", score=None, per_face={}, reason=reason, **common)
    return InteractivityResult(status="ok", score=total_motion / total_weight, per_face=per_face, **common)
