"""Evaluation: Interactivity (listeners' eye/brow motion), with SyncNet weights Sync-C/D and Sync-C*, and the
per-window drift report of long clips."""

from __future__ import annotations

import json
import logging

from comfy_api.latest import io

from anytalker_core.constants import WINDOW_FRAMES
from anytalker_core.errors import InputError

from . import _bridge as bridge

log = logging.getLogger(__name__)

SYNCNET_FOLDER = "syncnet"
NO_SYNCNET = "none"


def syncnet_options() -> list[str]:
    """``none`` + the files in ``models/syncnet/`` (the folder is registered with ComfyUI here)."""
    import os

    import folder_paths

    folder_paths.add_model_folder_path(SYNCNET_FOLDER, os.path.join(folder_paths.models_dir, SYNCNET_FOLDER))
    return [NO_SYNCNET, *folder_paths.get_filename_list(SYNCNET_FOLDER)]


def parse_intervals(text: str) -> dict[str, list[list[float]]]:
    """``{"left": [[start_s, end_s], ...], "right": [...]}`` (JSON) → dict; clear message when malformed."""
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise InputError(f"speaking_intervals: not valid JSON ({exc.msg} at character {exc.pos}); expected "
                         '{"left": [[0.0, 2.5]], "right": [[2.5, 5.0]]} in seconds') from None
    if not isinstance(data, dict):
        raise InputError("speaking_intervals: expected a JSON object mapping each face (left, right or "
                         f"face1, face2, ...) to [[start, end], ...] seconds, got {type(data).__name__}")
    return data


class AnyTalkerScoreVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        syncnets = syncnet_options()
        return io.Schema(
            node_id="AnyTalkerScoreVideo",
            display_name="AnyTalker Score Video",
            category="AnyTalker/evaluation",
            description="Interactivity (AnyTalker paper): mean eye and eyebrow motion of each person while "
                        "listening. -1 when the face count is not constant. Higher = livelier listeners.",
            inputs=[
                io.Image.Input("images", tooltip="The video frames (e.g. from VAE Decode)."),
                io.Float.Input("fps", default=24.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frame rate of the frames (AnyTalker: 24)."),
                io.String.Input("speaking_intervals", default='{"left": [], "right": []}', multiline=True,
                                tooltip='JSON {"left": [[start, end], ...], "right": [...]} in seconds (face1, '
                                        'face2, ... for other counts); connect speaking_intervals from AnyTalker '
                                        'Audio Encode.'),
                io.Int.Input("num_faces", default=2, min=1, max=8, advanced=True,
                             tooltip="Faces every frame must show (the benchmark uses 2)."),
                io.Combo.Input("landmarks", options=["mediapipe", "insightface"], default="mediapipe",
                               advanced=True,
                               tooltip="Landmark source: mediapipe (offline) or insightface 106-point (as the "
                                       "reference; needs models/insightface/buffalo_l)."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional: the clip's audio (e.g. mixed_audio) for the SyncNet scores."),
                io.Combo.Input("syncnet_model", options=syncnets, default=syncnets[-1], advanced=True,
                               tooltip="SyncNet weights (syncnet_v2.model) in models/syncnet for Sync-C/D and "
                                       "Sync-C* (confidence inside each person's speaking intervals); needs audio."),
                io.Image.Input("start_image", optional=True,
                               tooltip="Optional: the start image the clip was generated from, for the drift "
                                       "report (default: the first frame)."),
                io.Int.Input("window_frames", default=WINDOW_FRAMES, min=5, max=1001, step=4, advanced=True,
                             tooltip="Drift report: the window length the clip was generated with (AnyTalker Long "
                                     "Sampler's window_frames)."),
                io.Int.Input("overlap_frames", default=0, min=0, max=497, step=4, advanced=True,
                             tooltip="Drift report: the Long Sampler's overlap_frames (0 = its automatic value)."),
            ],
            outputs=[
                io.Float.Output(display_name="interactivity", tooltip="Score, or -1 for an invalid clip."),
                io.Float.Output(display_name="sync_c_star",
                                tooltip="SyncNet confidence inside speaking intervals; -1 when not computed."),
                io.Image.Output(display_name="plot", tooltip="Per-face motion over time, speaking shaded."),
                io.String.Output(display_name="report", tooltip="Status, per-face scores and notes as JSON."),
                io.Image.Output(display_name="drift_plot",
                                tooltip="Per window: colour difference (ΔE) and face-shape similarity to the start "
                                        "image, mouth motion vs the speaker's audio, Interactivity."),
                io.String.Output(display_name="drift_report", tooltip="The same per-window values as a Markdown table."),
            ],
        )

    @classmethod
    def execute(cls, images, fps: float = 24.0, speaking_intervals: str = "", num_faces: int = 2,
                landmarks: str = "mediapipe", audio=None, syncnet_model: str = NO_SYNCNET, start_image=None,
                window_frames: int = WINDOW_FRAMES, overlap_frames: int = 0) -> io.NodeOutput:
        import os

        import comfy.model_management as mm
        import folder_paths

        from anytalker_core.generation.window_plan import check_overlap_frames, check_window_frames
        from anytalker_core.metrics.drift import plot_drift, window_spans
        from anytalker_core.metrics.runner import score_video

        frames = bridge.frames_to_uint8(images, "images")
        check_window_frames(window_frames)
        if overlap_frames:
            check_overlap_frames(overlap_frames, window_frames)
        spans = window_spans(len(frames), window_frames, overlap_frames or None)
        start = None if start_image is None else bridge.image_to_uint8(start_image, "start_image")
        insightface = os.path.join(bridge.models_dir(), "insightface")
        syncnet = (None if syncnet_model == NO_SYNCNET
                   else folder_paths.get_full_path_or_raise(SYNCNET_FOLDER, syncnet_model))
        wave = None if audio is None else bridge.audio_to_mono(audio, "audio")
        result = score_video(frames, fps, parse_intervals(speaking_intervals), landmark_backend=landmarks,
                             audio=wave, syncnet_path=syncnet, sample_rate=bridge.SAMPLE_RATE,
                             insightface_dir=insightface if landmarks == "insightface" else None,
                             num_faces=num_faces, device=str(mm.get_torch_device()),
                             progress=bridge.progress_callback(len(frames)), should_stop=bridge.interrupt_check,
                             drift_spans=spans, start_image=start)
        res, sync = result.interactivity, result.sync
        report = {"status": res.status, "interactivity": res.score, "per_face": res.per_face, "note": res.reason,
                  "sync_c": sync and sync.sync_c, "sync_d": sync and sync.sync_d,
                  "sync_c_star": sync and sync.sync_c_star, "sync_d_star": sync and sync.sync_d_star,
                  "sync_note": result.sync_note}
        log.info("scores: %s", report)
        c_star = sync.sync_c_star if sync is not None and sync.sync_c_star is not None else -1.0
        drift = result.drift
        return io.NodeOutput(res.reference_score(), float(c_star), bridge.uint8_to_image(result.plot),
                             json.dumps(report), bridge.uint8_to_image(plot_drift(drift)), drift.markdown())
