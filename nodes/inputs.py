"""Per-person inputs: audio features (one AUDIO per speaker) and face selection (one face per speaker)."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from comfy_api.latest import io

from anytalker_core.constants import MAX_SPEAKERS
from anytalker_core.errors import InputError

from . import _bridge as bridge
from .types import AudioFeaturesType, FacesType, Wav2VecType

log = logging.getLogger(__name__)

MAX_PEOPLE = MAX_SPEAKERS
DETECTORS = ["auto", "insightface", "mediapipe"]


class AnyTalkerAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        speaker = io.Audio.Input("audio", tooltip="One person's speech. Audio input k drives the k-th face "
                                                  "from the left.")
        return io.Schema(
            node_id="AnyTalkerAudioEncode",
            display_name="AnyTalker Audio Encode",
            category="AnyTalker/conditioning",
            description="Encodes one audio track per person with wav2vec2 and lays them out on the video "
                        "timeline (24 fps). Connect a speaker and a new input appears for the next one.",
            inputs=[
                Wav2VecType.Input("wav2vec", optional=True,
                                  tooltip="From Load AnyTalker wav2vec2 (wav2vec2-base-960h). Connect this or "
                                          "audio_encoder."),
                io.AudioEncoder.Input("audio_encoder", optional=True,
                                      tooltip="Or ComfyUI's Load Audio Encoder with wav2vec2-base-960h from "
                                              "models/audio_encoders (the reference's input normalisation is "
                                              "applied). Whisper encoders are refused."),
                io.Autogrow.Input("speakers", template=io.Autogrow.TemplatePrefix(
                    speaker, prefix="audio", min=1, max=MAX_PEOPLE),
                    tooltip="One AUDIO per person, in left-to-right face order."),
                io.Combo.Input("mode", options=["pad", "concat"], default="pad",
                               tooltip="pad: everyone's audio starts at 0 (overlapping speech, silence = "
                                       "listening). concat: people take turns in input order; the video "
                                       "lasts the sum of the tracks."),
                io.Int.Input("frame_count", default=0, min=0, max=4097, step=1, advanced=True,
                             tooltip="Video frames (4n+1, at most what the audio covers). 0 = as long as "
                                     "the audio allows."),
                io.Boolean.Input("normalize_loudness", default=False, advanced=True,
                                 tooltip="Scale every track to -23 dBFS before encoding (the reference does "
                                         "not; helps when one speaker was recorded much quieter)."),
            ],
            outputs=[
                AudioFeaturesType.Output(display_name="audio_features"),
                io.Int.Output(display_name="people", tooltip="Number of speakers (audio inputs)."),
                io.Int.Output(display_name="frame_count", tooltip="Video frames (4n+1) at 24 fps."),
                io.Audio.Output(display_name="mixed_audio",
                                tooltip="Your tracks mixed on the video timeline at their own sample rate and "
                                        "channels (the highest rate and most channels among them), exactly "
                                        "frame_count/24 s long: connect to Create Video."),
                io.String.Output(display_name="speaking_intervals",
                                 tooltip="JSON: each person's voiced intervals in seconds (for AnyTalker "
                                         "Score Video)."),
            ],
        )

    @classmethod
    @bridge.comfyui_messages
    def execute(cls, speakers: dict, wav2vec=None, audio_encoder=None, mode: str = "pad", frame_count: int = 0,
                normalize_loudness: bool = False) -> io.NodeOutput:
        import comfy.model_management as mm

        from anytalker_core.audio import build_audio_conditioning
        from anytalker_core.audio.mix import mix_on_timeline
        from anytalker_core.metrics.interactivity import side_names

        if (wav2vec is None) == (audio_encoder is None):
            raise InputError("connect exactly one of wav2vec (Load AnyTalker wav2vec2) and audio_encoder (Load Audio "
                             "Encoder)" + ("" if wav2vec is None else "; both are connected"))
        if wav2vec is None:
            wav2vec = bridge.wav2vec_from_audio_encoder(audio_encoder, "audio_encoder")
        audios = bridge.ordered_autogrow(speakers)
        if not audios:
            raise InputError("speakers: connect at least one AUDIO (one per person)")
        names = [f"audio input {i + 1}" for i in range(len(audios))]
        tracks = [bridge.audio_to_mono(a, name) for a, name in zip(audios, names)]
        device = mm.get_torch_device()
        wav2vec.to(device)
        try:
            audio = build_audio_conditioning(
                tracks, mode=mode, fps=bridge.FPS, encoder=wav2vec, frame_num=frame_count or None,
                normalize_loudness=normalize_loudness, sample_rate=bridge.SAMPLE_RATE,
                progress=bridge.progress_callback(len(tracks)), should_stop=bridge.interrupt_check)
        finally:
            wav2vec.to("cpu")
        names = list(side_names(len(tracks)))
        intervals = {name: [[round(s, 3), round(e, 3)] for s, e in spans]
                     for name, spans in zip(names, audio.speaking)}
        payload = bridge.AudioPayload(conditioning=audio, names=names)
        mixed, rate = mix_on_timeline([a["waveform"][0] for a in audios], [int(a["sample_rate"]) for a in audios],
                                      [start for start, _ in audio.turns], audio.duration, gains=audio.gains,
                                      names=[f"audio input {i + 1}" for i in range(len(audios))])
        return io.NodeOutput(payload, len(tracks), int(audio.frame_num),
                             {"waveform": mixed.unsqueeze(0), "sample_rate": rate}, json.dumps(intervals))


def image_masks(image: np.ndarray, boxes: np.ndarray | None, masks: np.ndarray | None):
    """The core's face-mask chain on the image itself; only its image-resolution fields are used here
    (boxes, enlarged masks). The latent-grid fields are rebuilt on the video's grid by Conditioning."""
    from anytalker_core.faces import build_face_masks, build_face_masks_from_masks

    h, w = image.shape[:2]
    grid = (max(2, (h // 16) * 2), max(2, (w // 16) * 2))  # image / 8, even
    if masks is not None:
        return build_face_masks_from_masks(masks, grid, 1, image_hw=(h, w))
    return build_face_masks(boxes, (h, w), grid, 1)


def choose_faces(image: np.ndarray, people: int, detector: str, boxes: list | None,
                 masks: np.ndarray | None, models_dir: str | None) -> bridge.FaceSelection:
    """Masks, else boxes, else the detector → one face per person, in identity order."""
    from anytalker_core.generation.pipeline import detect_faces_for_preview

    hw = (int(image.shape[0]), int(image.shape[1]))
    if masks is not None:
        if masks.shape[0] != people:
            raise InputError(f"{masks.shape[0]} face mask(s) given for {people} speaker(s); give exactly one "
                             "mask per audio input, in the same order")
        bounds = image_masks(image, None, masks).boxes_xyxy
        return bridge.FaceSelection(bounds, masks.astype(np.float32), hw, "masks")
    _, chosen = detect_faces_for_preview(image, people, boxes=boxes, backend=detector, models_dir=models_dir)
    source = "boxes" if boxes is not None else f"detector {detector}"
    return bridge.FaceSelection(np.stack([np.asarray(b, np.float32).reshape(4) for b in chosen]), None, hw, source)


class AnyTalkerFaceMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerFaceMasks",
            display_name="AnyTalker Face Masks",
            category="AnyTalker/conditioning",
            description="Finds one face per speaker (the largest faces, numbered left to right) or takes "
                        "your masks/boxes, and shows which audio drives which face.",
            inputs=[
                io.Image.Input("image", tooltip="The start image (first frame) with every speaker's face."),
                io.Int.Input("people", default=1, min=1, max=MAX_PEOPLE,
                             tooltip="Number of speakers; connect 'people' from AnyTalker Audio Encode."),
                io.Combo.Input("detector", options=DETECTORS, default="auto",
                               tooltip="auto: InsightFace when its models are in models/insightface and the "
                                       "package is installed (as the reference), else MediaPipe (offline)."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Optional: one mask per speaker (a MASK batch, in audio-input order) "
                                      "drawn on the image; replaces detection."),
                io.String.Input("boxes", default="", multiline=False, advanced=True,
                                tooltip="Optional face boxes 'x1,y1,x2,y2; x1,y1,x2,y2' in image pixels, one "
                                        "per speaker in audio-input order; replaces detection."),
            ],
            outputs=[
                FacesType.Output(display_name="faces"),
                io.Mask.Output(display_name="face_masks", tooltip="The enlarged mask of each speaker [N, H, W]."),
                io.Image.Output(display_name="preview", tooltip="The image with numbered faces (1 = audio 1)."),
            ],
        )

    @classmethod
    @bridge.comfyui_messages
    def execute(cls, image, people: int = 1, detector: str = "auto", masks=None, boxes: str = "") -> io.NodeOutput:
        from anytalker_core.faces import draw_preview

        frame = bridge.image_to_uint8(image, "image")
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        user_masks = None if masks is None else bridge.masks_to_array(masks, hw, "masks")
        selection = choose_faces(frame, int(people), detector, bridge.parse_boxes(boxes),
                                 user_masks, bridge.models_dir())
        faces = image_masks(frame, selection.boxes, selection.masks)
        preview = draw_preview(frame, faces.boxes_xyxy, masks=faces.expanded_masks)
        log.info("faces (%s), left to right: %s", selection.source, "; ".join(
            f"#{i + 1} [{', '.join(f'{v:.0f}' for v in b)}]" for i, b in enumerate(selection.boxes)))
        return io.NodeOutput(selection, torch.from_numpy(faces.expanded_masks.copy()), bridge.uint8_to_image(preview))
