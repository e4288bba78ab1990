"""Score clips: :func:`score_video` for one clip (the ComfyUI node calls it) and :func:`evaluate_folder`
for a folder of videos with speaking intervals in the InteractiveEyes JSON format
(``{"clip.mp4": {"left": [[start_s, end_s], ...], "right": [...]}}``) -> CSV, Markdown and PNG plots.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..constants import SAMPLE_RATE
from ..errors import InputError
from .interactivity import FaceObservation, InteractivityResult, compute_interactivity, side_names
from .landmarks import Landmarker, make_landmarker, observe_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


@dataclass
class VideoScore:
    """Scores of one clip.

    Attributes:
        name: clip name (file name in folder runs).
        interactivity: the Interactivity result (``status``, ``score``, ``per_face``, traces).
        sync: SyncNet scores (``SyncSummary``) or ``None`` without weights/audio.
        plot: ``uint8 [H, W, 3]`` motion plot, or ``None``.
        sync_note: why SyncNet was not run ("" when it was).
    """

    name: str
    interactivity: InteractivityResult
    sync: Any = None
    plot: np.ndarray | None = None
    sync_note: str = ""
    drift: Any = None  # a .drift.DriftReport when requested

    @property
    def score(self) -> float | None:
        return self.interactivity.score

    def row(self) -> dict[str, Any]:
        """One table row: clip, status, interactivity, per-face values, Sync-C/D, Sync-C*/D*."""
        res = self.interactivity
        row: dict[str, Any] = {"clip": self.name, "status": res.status, "interactivity": res.score}
        for side in res.sides:
            row[f"interactivity_{side}"] = res.per_face.get(side)
        sync = self.sync
        row["sync_c"] = sync.sync_c if sync is not None else None
        row["sync_d"] = sync.sync_d if sync is not None else None
        row["sync_c_star"] = sync.sync_c_star if sync is not None else None
        row["sync_d_star"] = sync.sync_d_star if sync is not None else None
        row["note"] = res.reason or self.sync_note
        return row

    def summary(self) -> str:
        """Human-readable multi-line summary (for UIs and logs)."""
        res = self.interactivity
        lines = [f"{self.name}: Interactivity " + (f"{res.score:.4f}" if res.valid else f"invalid ({res.reason})")]
        for side in res.sides:
            value = res.per_face.get(side)
            lines.append(f"  {side}: " + (f"{value:.4f}" if value is not None else "n/a (never listening)"))
        sync = self.sync
        if sync is None:
            lines.append(f"  {self.sync_note}" if self.sync_note else "  SyncNet not run")
        else:
            def fmt(v):
                return "n/a" if v is None else f"{v:.3f}"
            lines.append(f"  Sync-C {fmt(sync.sync_c)}  Sync-D {fmt(sync.sync_d)}  "
                         f"Sync-C* {fmt(sync.sync_c_star)}  Sync-D* {fmt(sync.sync_d_star)}")
        return "\n".join(lines)


def parse_intervals_text(text: str | None) -> dict[str, list[list[float]]] | None:
    """Speaking intervals of one clip from JSON text ``{"left": [[s, e], ...], "right": [...]}``.

    Empty text means no intervals (every face listens). Raises :class:`InputError` on malformed JSON.
    """
    if text is None or not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f'speaking intervals: not valid JSON ({exc}); expected {{"left": [[start_s, end_s], ...], '
                         '"right": [...]}}') from None
    if not isinstance(data, dict):
        raise InputError('speaking intervals: expected a JSON object {"left": [[start_s, end_s], ...], "right": [...]}')
    return data


def _face_boxes(observations: Sequence[Sequence[FaceObservation]], num_faces: int) -> dict[str, np.ndarray]:
    """Per side, ``[T, 4]`` boxes left to right; frames where the side is missing reuse the nearest frame."""
    sides = side_names(num_faces)
    num_frames = len(observations)
    boxes = np.full((num_frames, num_faces, 4), np.nan)
    for t, faces in enumerate(observations):
        faces = sorted(faces, key=lambda f: f.area, reverse=True)[:num_faces]
        if len(faces) == num_faces:
            for n, face in enumerate(sorted(faces, key=lambda f: f.box[0])):
                boxes[t, n] = face.box
    out = {}
    for n, side in enumerate(sides):
        valid = np.flatnonzero(np.isfinite(boxes[:, n, 0]))
        if valid.size == 0:
            continue
        nearest = valid[np.abs(np.arange(num_frames)[:, None] - valid[None, :]).argmin(axis=1)]
        out[side] = boxes[nearest, n]
    return out


def score_video(
    frames: np.ndarray,
    fps: float,
    intervals: Mapping[str, Sequence[Sequence[float]]] | None,
    landmark_backend: str | Landmarker = "mediapipe",
    audio: Any = None,
    syncnet_path: str | Path | None = None,
    *,
    sample_rate: int = SAMPLE_RATE,
    insightface_dir: str | Path | None = None,
    num_faces: int = 2,
    make_plot: bool = True,
    name: str = "clip",
    device: str = "cpu",
    syncnet_model: Any = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    drift_spans: Sequence[tuple[int, int]] | None = None,
    start_image: np.ndarray | None = None,
) -> VideoScore:
    """Interactivity (and SyncNet scores when weights and audio are given) of one clip.

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB frames (a float array in 0..1 is accepted too).
        fps: frame rate.
        intervals: speaking intervals ``{"left": [[s, e], ...], "right": [...]}`` in seconds, inclusive.
        landmark_backend: ``"mediapipe"`` (offline), ``"insightface"`` (needs ``insightface_dir``), or a
            :class:`~.landmarks.Landmarker` instance (reused, not closed).
        audio: ``[S]`` mono waveform at ``sample_rate`` (numpy or torch) for SyncNet; ``None`` skips it.
        syncnet_path: ``syncnet_v2.model`` / ``.safetensors``; ``None`` skips SyncNet (unless
            ``syncnet_model`` is given).
        num_faces: faces every frame must show (2 for the benchmark).
        make_plot: also render the motion plot.
        progress / should_stop: ComfyUI-style callbacks (landmark extraction).
        drift_spans: frame spans of the clip's windows (:func:`.drift.window_spans`): also compute the
            per-window drift report (:mod:`.drift`) against ``start_image`` (default: the first frame).
    Returns:
        :class:`VideoScore`.
    """
    if hasattr(frames, "detach"):  # a torch tensor (ComfyUI IMAGE batches are float [T, H, W, 3] in 0..1)
        frames = frames.detach().cpu().float().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputError(f"frames must be an RGB video [T, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise InputError(f"frames must be uint8 0..255 or float 0..1, got {frames.dtype}")
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(float(fps)) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps!r}")

    own = isinstance(landmark_backend, str)
    landmarker = make_landmarker(landmark_backend, insightface_dir) if own else landmark_backend
    try:
        observations = observe_frames(frames, landmarker, progress=progress, should_stop=should_stop)
        start = frames[0] if start_image is None else np.asarray(start_image)
        start_faces = landmarker.detect(start) if drift_spans is not None else []
    finally:
        if own:
            landmarker.close()
    result = compute_interactivity(observations, float(fps), intervals, frames.shape[1:3], num_faces=num_faces)
    drift = None
    if drift_spans is not None:
        from .drift import drift_report

        wave = None if audio is None else (audio.detach().cpu().numpy() if hasattr(audio, "detach") else audio)
        drift = drift_report(frames, float(fps), start, observations, start_faces, drift_spans, audio=wave,
                             sample_rate=int(sample_rate), intervals=intervals, num_faces=num_faces)

    sync, note = None, ""
    if syncnet_model is None and syncnet_path is None:
        note = "SyncNet skipped (no weights given)"
    elif audio is None:
        note = "SyncNet skipped (the clip has no audio)"
    else:
        from .syncnet import evaluate_sync, load_syncnet
        from ..io.media import resample

        model = syncnet_model if syncnet_model is not None else load_syncnet(syncnet_path, device=device)
        wave = resample(audio, int(sample_rate), SAMPLE_RATE) if int(sample_rate) != SAMPLE_RATE else audio
        boxes = _face_boxes(observations, num_faces)
        if not boxes:
            note = "SyncNet skipped (no frame shows all faces)"
        else:
            sync = evaluate_sync(model, frames, float(fps), wave, boxes, intervals, should_stop=should_stop)
    plot = None
    if make_plot:
        from .plots import plot_motion
        plot = plot_motion(result, title=name)
    return VideoScore(name=name, interactivity=result, sync=sync, plot=plot, sync_note=note, drift=drift)


# ------------------------------------------------------------------------------------------ folder runs
def load_intervals(path: str | Path) -> dict[str, dict[str, list[list[float]]]]:
    """Read an InteractiveEyes-style intervals file ``{"clip.mp4": {"left": [[s, e]], "right": [...]}}``."""
    from ..io.json_files import read_json

    data = read_json(path, "speaking-intervals file")
    if not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"speaking-intervals file '{path}': expected {{\"clip.mp4\": {{\"left\": [[start, end], ...], "
                         "\"right\": [...]}}, ...}}")
    return data


def write_trace(result: InteractivityResult, path: str | Path) -> Path:
    """Per-frame CSV: ``frame, time_s`` then per side ``motion_<side>, counted_<side>, speaking_<side>``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["frame", "time_s"]
        for side in result.sides:
            header += [f"motion_{side}", f"counted_{side}", f"speaking_{side}"]
        writer.writerow(header)
        for t in range(result.motion.shape[0]):
            row: list[Any] = [t, f"{t / result.fps:.6f}"]
            for n in range(len(result.sides)):
                value = result.motion[t, n]
                row += ["" if np.isnan(value) else f"{value:.6f}", int(result.counted[t, n]),
                        int(result.speaking[t, n])]
            writer.writerow(row)
    return path


@dataclass
class FolderReport:
    """Results of :func:`evaluate_folder`: per-clip rows, the overall row, and the written files."""

    rows: list[dict[str, Any]]
    overall: dict[str, Any]
    csv_path: Path
    markdown_path: Path
    plot_paths: list[Path]
    skipped: list[str] = field(default_factory=list)  # "name: why" of each unreadable video


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_tables(rows: list[dict[str, Any]], overall: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.md`` (the overall row last)."""
    columns: list[str] = []
    for row in rows + [overall]:
        for key in row:
            if key not in columns:
                columns.append(key)
    csv_path = out_dir / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows + [overall]:
            writer.writerow([_fmt(row.get(c)) for c in columns])
    md_path = out_dir / "results.md"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows + [overall]:
        cells = [_fmt(row.get(c)).replace("|", "\\|") for c in columns]
        if row is overall:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _start_image(folder: str | Path | None, stem: str) -> np.ndarray | None:
    if folder is None:
        return None
    from ..generation.pipeline import load_image

    for ext in (".png", ".jpg", ".jpeg", ".webp"):
        path = Path(folder) / f"{stem}{ext}"
        if path.is_file():
            return load_image(path)
    log.warning("no start image %s/%s.png (or .jpg): the drift report of '%s' compares with its first frame",
                folder, stem, stem)
    return None


def evaluate_folder(
    video_dir: str | Path,
    intervals_path: str | Path | None,
    out_dir: str | Path,
    landmark_backend: str = "mediapipe",
    insightface_dir: str | Path | None = None,
    syncnet_path: str | Path | None = None,
    device: str = "cpu",
    num_faces: int = 2,
    plots: bool = True,
    progress: ProgressFn | None = None,
    drift_window_frames: int | None = None,
    drift_overlap_frames: int | None = None,
    start_images: str | Path | None = None,
) -> FolderReport:
    """Score every video in ``video_dir`` and write ``results.csv``, ``results.md``, ``plots/<clip>.png``
    and ``traces/<clip>.csv`` (per-frame motion, counted and speaking flags of each face).

    A clip's intervals are looked up by file name (then by stem); a clip without an entry is scored with
    nobody speaking (as the reference does) and a warning. The overall row averages each column over the
    clips that have a value (invalid clips are excluded from the Interactivity mean, as in the reference).

    ``drift_window_frames`` (with ``drift_overlap_frames``: the settings the clips were generated with) adds
    the per-window drift report of each clip (:mod:`.drift`) as ``drift/<clip>.csv|.md|.png``; the start
    image of a clip is ``start_images/<clip stem>.png`` (or .jpg, .jpeg, .webp) when that folder is given,
    else the clip's first frame.

    A video that cannot be read (corrupt, not a video) is skipped and listed in ``FolderReport.skipped``;
    the others are scored.
    """
    from ..io.media import read_video

    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise InputError(f"video folder '{video_dir}' does not exist")
    videos = sorted(p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise InputError(f"video folder '{video_dir}' has no videos ({', '.join(VIDEO_EXTENSIONS)})")
    table = load_intervals(intervals_path) if intervals_path is not None else {}
    names = {p.name for p in videos} | {p.stem for p in videos}
    for key in table:
        if key not in names:
            log.warning("intervals file lists '%s', which is not in %s", key, video_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model = None
    if syncnet_path is not None:
        from .syncnet import load_syncnet
        model = load_syncnet(syncnet_path, device=device)
    landmarker = make_landmarker(landmark_backend, insightface_dir)
    rows, plot_paths, skipped = [], [], []
    try:
        for i, video in enumerate(videos):
            intervals = table.get(video.name, table.get(video.stem))
            if intervals is None and table:
                log.warning("no speaking intervals for '%s': every face counts as listening", video.name)
            try:
                clip = read_video(video)
            except InputError as exc:  # a corrupt or unreadable file: report it, score the others
                log.error("skipped %s", exc)
                skipped.append(f"{video.name}: {exc}")
                continue
            log.info("scoring %s (%d frames @ %.3f fps)", video.name, clip.num_frames, clip.fps)
            spans = start = None
            if drift_window_frames is not None:
                from .drift import window_spans

                spans = window_spans(clip.num_frames, drift_window_frames, drift_overlap_frames)
                start = _start_image(start_images, video.stem)
            score = score_video(clip.frames, clip.fps, intervals, landmarker, audio=clip.audio,
                                sample_rate=clip.sample_rate, num_faces=num_faces, make_plot=plots,
                                name=video.name, syncnet_model=model, device=device, drift_spans=spans,
                                start_image=start)
            if score.drift is not None:
                score.drift.write(out_dir / "drift", video.stem)
            if model is not None and clip.audio is None:
                log.warning("'%s' has no audio track: SyncNet scores left empty", video.name)
            rows.append(score.row())
            write_trace(score.interactivity, out_dir / "traces" / f"{video.stem}.csv")
            if score.plot is not None:
                from .plots import save_png
                plot_paths.append(save_png(score.plot, out_dir / "plots" / f"{video.stem}.png"))
            if progress is not None:
                progress(i + 1, len(videos))
    finally:
        landmarker.close()

    if not rows:
        raise InputError(f"video folder '{video_dir}': none of the {len(videos)} video(s) could be read:\n  "
                         + "\n  ".join(skipped))
    overall: dict[str, Any] = {"clip": "overall", "status": f"{sum(r['status'] == 'ok' for r in rows)}/{len(rows)} valid"}
    for key in rows[0]:
        if key in ("clip", "status", "note"):
            continue
        overall[key] = _mean([r.get(key) for r in rows if r["status"] == "ok" or not key.startswith("interactivity")])
    overall["note"] = f"{len(skipped)} unreadable video(s) skipped" if skipped else ""
    csv_path, md_path = write_tables(rows, overall, out_dir)
    log.info("wrote %s and %s", csv_path, md_path)
    return FolderReport(rows=rows, overall=overall, csv_path=csv_path, markdown_path=md_path, plot_paths=plot_paths,
                        skipped=skipped)
