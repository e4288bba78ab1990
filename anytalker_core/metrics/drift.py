"""The drift report of a long clip: how each window compares with the start image and with the audio.

Per window (the spans a long-clip run writes, :attr:`..generation.window_plan.Window.emit_span`):

``delta_e``
    CIE76 colour difference (Euclidean distance in CIELAB, :mod:`..generation.colour`) between the
    window's mean colour and the start image's. About 2.3 is a just-noticeable difference; colour drift
    shows as a value that grows window after window.
``identity_<face>``
    Face-shape similarity to the same person in the start image, in 0..1: the face's landmarks (jaw,
    brows, nose, eyes of the 68-point layout; the mouth is left out because it moves with speech) are
    centred, scaled to unit size and rotated onto the start face's (orthogonal Procrustes);
    ``1 − sqrt(disparity)`` (one minus the remaining RMS distance; a face stretched 1.4× scores ≈ 0.88). This is geometry from the offline landmark model
    (MediaPipe, or InsightFace), not a face-recognition embedding: it catches a face that melts, changes
    shape or is replaced, not a subtle change of identity.
``mouth_<face>``, ``audio_<face>``, ``sync_<face>``
    Mouth-motion energy (mean absolute change per frame of the inner-lip opening, in units of the
    inter-ocular distance), the speaker's audio energy in the window (RMS of the clip's audio while that
    person speaks, from the speaking intervals; the whole window without them), and the Pearson
    correlation of the lip opening with the audio's RMS envelope over those frames (lip sync that decays
    after each window shows as a falling value).
``interactivity``
    The window's Interactivity (listeners' eye and brow motion, :mod:`.interactivity`), ``None`` when the
    window is invalid (a face missing) or nobody listens in it.

The start image's faces are found with the same landmark model; faces are matched left to right.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..constants import SAMPLE_RATE
from ..errors import InputError
from ..generation.colour import delta_e76, lab_stats
from .interactivity import FaceObservation, compute_interactivity, normalize_intervals, side_names
from .landmarks import INSIGHTFACE_106_FOR_68

log = logging.getLogger(__name__)

__all__ = ["DriftReport", "WindowDrift", "drift_report", "window_spans", "shape_similarity", "mouth_opening",
           "plot_drift"]

# 68-point indices: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47 (the mouth, 48-67, moves with speech)
_SHAPE_68 = tuple(range(0, 48))
_SHAPE_106 = tuple(INSIGHTFACE_106_FOR_68[i] for i in _SHAPE_68)
_LIP_TOP, _LIP_BOTTOM = INSIGHTFACE_106_FOR_68[62], INSIGHTFACE_106_FOR_68[66]  # inner lips, centre
_EYE_LEFT, _EYE_RIGHT = INSIGHTFACE_106_FOR_68[36], INSIGHTFACE_106_FOR_68[45]  # outer eye corners


@dataclass
class WindowDrift:
    """One window's row (see the module docstring for each value; per-face values keyed by side)."""

    index: int
    start: int
    end: int
    delta_e: float
    identity: dict[str, float | None] = field(default_factory=dict)
    mouth: dict[str, float | None] = field(default_factory=dict)
    audio: dict[str, float | None] = field(default_factory=dict)
    sync: dict[str, float | None] = field(default_factory=dict)
    interactivity: float | None = None

    def row(self, fps: float) -> dict[str, Any]:
        row: dict[str, Any] = {"window": self.index + 1, "frames": f"{self.start}-{self.end - 1}",
                               "time_s": f"{self.start / fps:.1f}-{self.end / fps:.1f}", "delta_e": self.delta_e}
        for name, values in (("identity", self.identity), ("mouth", self.mouth), ("audio", self.audio),
                             ("sync", self.sync)):
            for side, value in values.items():
                row[f"{name}_{side}"] = value
        row["interactivity"] = self.interactivity
        return row


@dataclass
class DriftReport:
    """Per-window drift of one clip."""

    windows: list[WindowDrift]
    sides: tuple[str, ...]
    fps: float

    def rows(self) -> list[dict[str, Any]]:
        return [w.row(self.fps) for w in self.windows]

    def markdown(self) -> str:
        rows = self.rows()
        keys = list(rows[0])
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            lines.append("| " + " | ".join(_fmt(r[k]) for k in keys) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, stem: str) -> list[Path]:
        """``<stem>.csv``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``."""
        from .plots import save_png

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        csv_path = out_dir / f"{stem}.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        md_path = out_dir / f"{stem}.md"
        md_path.write_text(self.markdown())
        return [csv_path, md_path, save_png(plot_drift(self, title=stem), out_dir / f"{stem}.png")]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def window_spans(num_frames: int, window_frames: int = 81, overlap_frames: int | None = None) -> list[tuple[int, int]]:
    """The frame spans a long-clip run with these settings wrote (its windows' emit spans); for a clip whose
    length is not ``4n+1`` the last span takes the remainder."""
    from ..generation.window_plan import plan_windows

    if num_frames < 1:
        raise InputError("drift report: the clip has no frames")
    planned = num_frames if (num_frames - 1) % 4 == 0 else num_frames + (4 - (num_frames - 1) % 4)
    spans = [w.emit_span for w in plan_windows(planned, window_frames, overlap_frames)]
    spans = [(a, min(b, num_frames)) for a, b in spans if a < num_frames]
    return spans


def _normalised_shape(points: np.ndarray) -> np.ndarray | None:
    pts = np.asarray(points, np.float64)
    if not np.isfinite(pts).all():
        return None
    pts = pts - pts.mean(0)
    size = math.sqrt(float((pts ** 2).sum()))
    return pts / size if size > 1e-9 else None


def shape_similarity(landmarks: np.ndarray, reference: np.ndarray) -> float | None:
    """Similarity of two faces' shape points (106-layout ``[106, 2]`` landmarks), in 0..1: ``1 − sqrt(d)`` with
    ``d`` the Procrustes disparity (the squared residual of unit-size shapes after the best rotation), i.e.
    one minus the RMS residual."""
    a = _normalised_shape(landmarks[list(_SHAPE_106)])
    b = _normalised_shape(reference[list(_SHAPE_106)])
    if a is None or b is None:
        return None
    singular = np.linalg.svd(b.T @ a, compute_uv=False)  # of the optimal rotation a -> b
    disparity = 1.0 - float(singular.sum()) ** 2  # both centred, unit size (as scipy.spatial.procrustes)
    return float(np.clip(1.0 - math.sqrt(max(disparity, 0.0)), 0.0, 1.0))


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip opening over the inter-ocular distance (NaN when the points are missing)."""
    lm = np.asarray(landmarks, np.float64)
    eyes = float(np.linalg.norm(lm[_EYE_LEFT] - lm[_EYE_RIGHT]))
    gap = float(np.linalg.norm(lm[_LIP_TOP] - lm[_LIP_BOTTOM]))
    return gap / eyes if eyes > 1e-6 and math.isfinite(gap) else float("nan")


def _by_side(faces: Sequence[FaceObservation], n: int) -> list[FaceObservation] | None:
    if len(faces) < n:
        return None
    largest = sorted(faces, key=lambda f: -f.area)[:n]
    return sorted(largest, key=lambda f: float(np.nanmean(f.landmarks[:, 0])))


def _rms_envelope(wave: np.ndarray | None, sample_rate: int, fps: float, num_frames: int) -> np.ndarray | None:
    if wave is None:
        return None
    wave = np.asarray(wave, np.float64).reshape(-1)
    out = np.zeros(num_frames)
    hop = sample_rate / fps
    for t in range(num_frames):
        chunk = wave[int(round(t * hop)):int(round((t + 1) * hop))]
        out[t] = math.sqrt(float((chunk ** 2).mean())) if chunk.size else 0.0
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def drift_report(frames: np.ndarray, fps: float, start_image: np.ndarray,
                 observations: Sequence[Sequence[FaceObservation]], start_faces: Sequence[FaceObservation],
                 spans: Sequence[tuple[int, int]], *, audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE,
                 intervals: Mapping[str, Sequence[Sequence[float]]] | None = None, num_faces: int = 2
                 ) -> DriftReport:
    """The drift report (see the module docstring).

    Args:
        frames: uint8 ``[T, H, W, 3]``.
        fps: frame rate.
        start_image: uint8 ``[H', W', 3]`` (any size; colour statistics are size independent).
        observations: per frame, the faces found (from :func:`.landmarks.observe_frames`).
        start_faces: the faces found in the start image.
        spans: ``(start, end)`` frame spans, one per window (:func:`window_spans`).
        audio: the clip's mono audio ``[S]`` at ``sample_rate`` (optional).
        intervals: speaking intervals ``{side: [[start_s, end_s], ...]}`` (optional).
        num_faces: people in the clip.
    """
    sides = side_names(num_faces)
    speaking_spans = normalize_intervals(intervals, sides)
    if len(observations) != len(frames):
        raise InputError(f"drift report: {len(observations)} landmark frames for {len(frames)} video frames")
    reference_colour = lab_stats(np.asarray(start_image))
    ref_faces = _by_side(start_faces, num_faces)
    if ref_faces is None:
        log.warning("drift report: %d face(s) in the start image, expected %d; identity is not measured",
                    len(start_faces), num_faces)
    envelope = _rms_envelope(audio, sample_rate, fps, len(frames))
    times = np.arange(len(frames)) / fps
    speaking = {s: np.zeros(len(frames), bool) for s in sides}
    for s in sides:
        for a, b in speaking_spans[s]:
            speaking[s] |= (times >= a) & (times <= b)
    faces_by_frame = [_by_side(f, num_faces) for f in observations]
    windows = []
    for k, (lo, hi) in enumerate(spans):
        row = WindowDrift(index=k, start=lo, end=hi, delta_e=delta_e76(lab_stats(frames[lo:hi]), reference_colour))
        for n, side in enumerate(sides):
            faces = [f[n] if f is not None else None for f in faces_by_frame[lo:hi]]
            sims = [shape_similarity(f.landmarks, ref_faces[n].landmarks) for f in faces
                    if f is not None and ref_faces is not None]
            sims = [s for s in sims if s is not None]
            row.identity[side] = float(np.mean(sims)) if sims else None
            opening = np.array([mouth_opening(f.landmarks) if f is not None else np.nan for f in faces])
            steps = np.abs(np.diff(opening))
            row.mouth[side] = float(np.nanmean(steps)) if np.isfinite(steps).any() else None
            if envelope is None:
                row.audio[side] = row.sync[side] = None
                continue
            # the speaker's frames when intervals are known, else the whole window
            who = speaking[side][lo:hi] if any(speaking_spans.values()) else np.ones(hi - lo, bool)
            env = envelope[lo:hi]
            row.audio[side] = float(math.sqrt(float((env[who] ** 2).mean()))) if who.any() else None
            row.sync[side] = _pearson(opening[who], env[who]) if who.any() else None
        shifted = {s: [[a - lo / fps, b - lo / fps] for a, b in speaking_spans[s]] for s in sides}
        result = compute_interactivity(observations[lo:hi], fps, shifted, frames.shape[1:3], num_faces=num_faces)
        row.interactivity = result.score if result.valid else None
        windows.append(row)
    return DriftReport(windows=windows, sides=sides, fps=float(fps))


def plot_drift(report: DriftReport, title: str = "", dpi: int = 100) -> np.ndarray:
    """ΔE, identity similarity, mouth/audio energy and Interactivity per window → uint8 RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 7.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True)
    x = np.array([w.index + 1 for w in report.windows])

    def values(get):
        return np.array([np.nan if get(w) is None else get(w) for w in report.windows], dtype=np.float64)

    axes[0].plot(x, values(lambda w: w.delta_e), marker="o", color="tab:red")
    axes[0].axhline(2.3, color="gray", lw=0.8, ls="--", label="just noticeable (2.3)")
    axes[0].set_ylabel("ΔE76 to start", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    for side in report.sides:
        axes[1].plot(x, values(lambda w, s=side: w.identity.get(s)), marker="o", label=side)
        axes[2].plot(x, values(lambda w, s=side: w.mouth.get(s)), marker="o", label=f"mouth {side}")
        audio = values(lambda w, s=side: w.audio.get(s))
        if np.isfinite(audio).any():
            scale = np.nanmax(values(lambda w, s=side: w.mouth.get(s))) / max(np.nanmax(audio), 1e-9)
            axes[2].plot(x, audio * (scale if np.isfinite(scale) else 1.0), ls="--", label=f"audio {side} (scaled)")
    axes[1].set_ylabel("face shape sim.", fontsize=8)
    axes[1].set_ylim(0, 1.02)
    axes[2].set_ylabel("mouth motion", fontsize=8)
    axes[3].plot(x, values(lambda w: w.interactivity), marker="o", color="tab:green")
    axes[3].set_ylabel("Interactivity", fontsize=8)
    axes[3].set_xlabel("window", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[1:3]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"drift per window  {title}".strip(), fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
