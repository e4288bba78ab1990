"""Conversions between ComfyUI's types and anytalker_core's, and the ComfyUI runtime hooks.

ComfyUI conventions (IMAGE ``[B, H, W, 3]`` float 0..1, MASK ``[B, H, W]``, AUDIO
``{"waveform": [B, C, S], "sample_rate": int}``, LATENT ``{"samples": ...}`` in the VAE's raw space,
native CLIP_VISION / VAE objects) are turned into the plain arrays and the reference conventions the
core uses, and back. Nothing here computes model outputs itself: the adapters only reshape, rescale
and call the native models.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anytalker_core.constants import FPS as FPS  # noqa: F401 - re-exported: bridge.FPS
from anytalker_core.constants import SAMPLE_RATE
from anytalker_core.errors import InputError
from anytalker_core.input_names import NODE_NAMES, input_names

log = logging.getLogger(__name__)



def comfyui_messages(execute: Callable) -> Callable:
    """Decorate a node's ``execute`` (below ``@classmethod``) so core errors name the node inputs
    (``frame_count``, the ``boxes``/``masks`` inputs) instead of the CLI's flags or API arguments."""

    @functools.wraps(execute)
    def wrapper(*args, **kwargs):
        with input_names(NODE_NAMES):
            return execute(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------ payload types


@dataclass
class AnyTalkerModel:
    """``ANYTALKER_MODEL``: the loaded DiT, kept on ComfyUI's offload device between runs."""

    dit: torch.nn.Module
    dtype: torch.dtype
    attention: str
    name: str


@dataclass
class FaceSelection:
    """``ANYTALKER_FACES``: who is where, in identity order (identity ``i`` = audio input ``i``).

    Attributes:
        boxes: float32 ``[N, 4]`` x1, y1, x2, y2 in pixels of the image they were found on.
        masks: float32 ``[N, H, W]`` user-drawn masks (win over the boxes), or ``None``.
        image_hw: (H, W) of that image.
        source: "detector <name>", "boxes" or "masks" (for messages).
    """

    boxes: np.ndarray
    masks: np.ndarray | None
    image_hw: tuple[int, int]
    source: str = ""

    @property
    def num_faces(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class AudioPayload:
    """``ANYTALKER_AUDIO``: the core's ``AudioConditioning`` plus the per-person speaking intervals."""

    conditioning: Any  # anytalker_core.audio.AudioConditioning
    names: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- ComfyUI types


def image_to_uint8(image: Any, what: str = "image", index: int = 0) -> np.ndarray:
    """ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 → uint8 ``[H, W, 3]`` (frame ``index``)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"{what}: expected a ComfyUI IMAGE [batch, height, width, 3], got {shape}")
    if image.shape[0] == 0:
        raise InputError(f"{what}: the image batch is empty")
    if image.shape[0] > 1 and index == 0:
        log.info("%s: batch of %d images, using the first", what, image.shape[0])
    frame = image[index, :, :, :3].detach().float().clamp(0, 1).cpu()
    return (frame * 255.0 + 0.5).to(torch.uint8).numpy()


def frames_to_uint8(images: Any, what: str = "images") -> np.ndarray:
    """ComfyUI IMAGE batch ``[T, H, W, C]`` → uint8 ``[T, H, W, 3]``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{what}: expected a ComfyUI IMAGE batch [frames, height, width, 3], got {shape}")
    return (images[..., :3].detach().float().clamp(0, 1).cpu() * 255.0 + 0.5).to(torch.uint8).numpy()


def uint8_to_image(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or ``[T, H, W, 3]``) → ComfyUI IMAGE ``[B, H, W, 3]`` float 0..1."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float() / 255.0
    return tensor.unsqueeze(0) if tensor.ndim == 3 else tensor


def audio_to_mono(audio: Any, what: str) -> torch.Tensor:
    """ComfyUI AUDIO ``{"waveform": [B, C, S], "sample_rate"}`` → float32 mono ``[S]`` at 16 kHz."""
    from anytalker_core.io.media import check_sample_rate, resample

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError(f"{what}: expected a ComfyUI AUDIO (a dict with 'waveform' [batch, channels, samples] "
                         f"and 'sample_rate'), got {type(audio).__name__}")
    wave = audio["waveform"]
    if not isinstance(wave, torch.Tensor) or wave.ndim != 3:
        shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise InputError(f"{what}: waveform must be [batch, channels, samples], got {shape}")
    if wave.shape[0] != 1:
        raise InputError(f"{what}: holds a batch of {wave.shape[0]} clips; give one clip per person "
                         "(one audio input per speaker)")
    rate = check_sample_rate(audio["sample_rate"], f"{what} sample_rate")
    mono = wave[0].detach().float().cpu().mean(dim=0)  # channels averaged, like librosa mono=True
    return resample(mono, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else mono.contiguous()


_WAV2VEC_CACHE: dict[int, tuple[Any, Any]] = {}


def wav2vec_from_audio_encoder(audio_encoder: Any, what: str = "audio_encoder") -> Any:
    """ComfyUI's AUDIO_ENCODER (Load Audio Encoder) holding a wav2vec2 → the core's ``Wav2VecEncoder`` with the
    same weights and the reference's feature path (input normalisation on: ComfyUI's own 768-wide wav2vec2 path
    turns it off, which suits MultiTalk's chinese-wav2vec2-base but not AnyTalker's wav2vec2-base-960h).

    Whisper and other encoders are refused by name. The conversion is cached per encoder object.
    """
    from anytalker_core.audio.wav2vec import wav2vec_from_state_dict

    model = getattr(audio_encoder, "model", None)
    if model is None or not hasattr(audio_encoder, "encode_audio"):
        raise InputError(f"{what}: expected an AUDIO_ENCODER from Load Audio Encoder, got {type(audio_encoder).__name__}")
    kind = type(model).__name__
    if kind != "Wav2Vec2Model":
        raise InputError(f"{what}: the audio encoder is a {kind}; AnyTalker needs wav2vec2-base-960h (load "
                         "wav2vec2-base-960h.safetensors from models/audio_encoders), not Whisper or another encoder")
    cached = _WAV2VEC_CACHE.get(id(audio_encoder))
    if cached is not None and cached[0] is audio_encoder:
        return cached[1]
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    heads = int(layers[0].attention.num_heads) if layers else None
    sd = {k: v.detach().to(device="cpu", dtype=torch.float32) for k, v in model.state_dict().items()}
    encoder = wav2vec_from_state_dict(sd, num_heads=heads, source=f"{what} (Load Audio Encoder)")
    _WAV2VEC_CACHE.clear()  # one converted encoder at a time
    _WAV2VEC_CACHE[id(audio_encoder)] = (audio_encoder, encoder)
    return encoder


def mono_to_audio(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Mono ``[S]`` → ComfyUI AUDIO ``{"waveform": [1, 1, S], "sample_rate"}``."""
    return {"waveform": wave.detach().float().cpu().reshape(1, 1, -1).contiguous(), "sample_rate": int(sample_rate)}


def ordered_autogrow(values: dict[str, Any] | None) -> list[Any]:
    """Values of an ``io.Autogrow`` input in slot order (``audio0, audio1, ...``), unconnected slots skipped."""
    if not values:
        return []

    def slot(name: str) -> tuple[int, str]:
        tail = name.rsplit(".", 1)[-1]
        digits = "".join(ch for ch in tail if ch.isdigit())
        return (int(digits) if digits else 0, tail)

    return [values[k] for k in sorted(values, key=slot) if values[k] is not None]


def parse_boxes(text: str, what: str = "boxes") -> list[list[float]] | None:
    """``"x1,y1,x2,y2; x1,y1,x2,y2"`` (pixels, one box per person) → list of boxes; empty → ``None``."""
    text = (text or "").strip()
    if not text:
        return None
    boxes = []
    for i, part in enumerate(p for p in text.replace("\n", ";").split(";") if p.strip()):
        try:
            values = [float(v) for v in part.replace(" ", ",").split(",") if v.strip()]
        except ValueError:
            raise InputError(f"{what}: box {i + 1} '{part.strip()}' is not four numbers x1,y1,x2,y2") from None
        if len(values) != 4:
            raise InputError(f"{what}: box {i + 1} '{part.strip()}' has {len(values)} numbers, expected x1,y1,x2,y2")
        boxes.append(values)
    return boxes


def masks_to_array(masks: Any, image_hw: tuple[int, int], what: str = "masks") -> np.ndarray:
    """ComfyUI MASK ``[N, H, W]`` (one per person, left-to-right order of the audio inputs) → float32 numpy."""
    if not isinstance(masks, torch.Tensor) or masks.ndim not in (2, 3):
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise InputError(f"{what}: expected a ComfyUI MASK batch [people, height, width], got {shape}")
    masks = masks.unsqueeze(0) if masks.ndim == 2 else masks
    if tuple(masks.shape[1:]) != tuple(image_hw):
        raise InputError(f"{what}: masks are {masks.shape[2]}x{masks.shape[1]} but the image is "
                         f"{image_hw[1]}x{image_hw[0]}; draw them on the same image")
    return masks.detach().float().cpu().numpy()


# --------------------------------------------------------------------------- native model adapters


class ClipVisionAdapter:
    """A native CLIP_VISION (``comfy.clip_vision.ClipVisionModel``) as the core's
    ``clip_vision.encode(images) -> [N, 257, D]``.

    Each image (uint8 ``[H, W, 3]``; whole frame or face crop) becomes the reference's pixels
    (:func:`anytalker_core.encoders.clip_vision.reference_pixels`: bicubic on -1..1 to the square input,
    no crop, no antialias, neither clamped nor rounded) and goes straight into ComfyUI's vision tower,
    which returns its penultimate hidden states as CLIP Vision Encode does. ``encode_image`` is not used
    because its ``clip_preprocess`` clamps and rounds the resized pixels to 1/255: the node path would
    feed CLIP other pixels than the reference and the CLI (max |delta| 0.066 on a real face crop).
    """

    def __init__(self, clip_vision: Any, tick: Callable[[], None] | None = None) -> None:
        self.tick = tick  # called after each image (progress)
        missing = [a for a in ("model", "patcher", "load_device") if not hasattr(clip_vision, a)]
        if missing:
            raise InputError(f"clip_vision: expected a ComfyUI CLIP_VISION model (Load CLIP Vision), "
                             f"got {type(clip_vision).__name__} (no {', '.join(missing)})")
        self.clip_vision = clip_vision
        self.size = int(getattr(clip_vision, "image_size", 224))

    def encode(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        import comfy.model_management

        from anytalker_core.encoders.clip_vision import CLIP_MEAN, CLIP_STD, reference_pixels

        vision = self.clip_vision
        mean, std = getattr(vision, "image_mean", CLIP_MEAN), getattr(vision, "image_std", CLIP_STD)
        comfy.model_management.load_model_gpu(vision.patcher)
        tokens = []
        for image in images:
            rgb = torch.from_numpy(np.ascontiguousarray(image))[None].float().div(255.0)  # [1, H, W, 3]
            pixels = reference_pixels(rgb, self.size, mean, std).to(vision.load_device)
            out = vision.model(pixel_values=pixels, intermediate_output=-2)
            tokens.append(out[1].float().cpu())  # penultimate hidden states [1, 257, D]
            if self.tick is not None:
                self.tick()
        return torch.cat(tokens, dim=0)


class VaeAdapter:
    """A native Wan2.1 VAE as the reference's ``encode``/``decode`` on normalised latents.

    ComfyUI's VAE works on IMAGE frames in 0..1 and returns the *raw* latent; the DiT works on the
    normalised latent ``(raw - mean) / std`` (ComfyUI's ``Wan21`` latent format does that map).
    """

    def __init__(self, vae: Any, tick: Callable[[], None] | None = None) -> None:
        import comfy.latent_formats

        self.tick = tick  # called after each encode (progress)

        if not hasattr(vae, "encode") or not hasattr(vae, "decode"):
            raise InputError(f"vae: expected a ComfyUI VAE (Load VAE with wan_2.1_vae), got {type(vae).__name__}")
        channels = getattr(vae, "latent_channels", 16)
        if channels != 16:
            raise InputError(f"vae: the model has {channels} latent channels; AnyTalker needs the Wan2.1 VAE "
                             "(16 channels, wan_2.1_vae.safetensors), not the Wan2.2 one")
        self.vae = vae
        self.latent_format = comfy.latent_formats.Wan21()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[1, 3, T, H, W]`` in -1..1 → normalised latent ``[1, 16, F, h, w]``.

        Not clamped: the reference encodes its bicubic-resized first frame as it is (overshoot past
        -1..1 included), and ComfyUI's ``VAE.encode`` is plain arithmetic on any value (``2x - 1``).
        """
        pixels = video[0].permute(1, 2, 3, 0).add(1.0).mul(0.5)  # [T, H, W, 3]
        raw = self.vae.encode(pixels.float().cpu())
        if self.tick is not None:
            self.tick()
        return self.latent_format.process_in(raw.float())

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent ``[1, 16, F, h, w]`` → ``[1, 3, T, H, W]`` in -1..1."""
        frames = self.vae.decode(self.to_comfy_latent(latent))  # [1, T, H, W, 3] 0..1
        frames = frames.reshape(-1, *frames.shape[-3:])
        return frames.permute(3, 0, 1, 2).unsqueeze(0).float().mul(2.0).sub(1.0)

    def to_comfy_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised DiT latent → ComfyUI's raw LATENT space (what VAEDecode expects)."""
        return self.latent_format.process_out(latent.detach().float().cpu())


# ---------------------------------------------------------------------------------- runtime hooks


def progress_callback(total: int) -> Callable[[int, int], None]:
    """``progress(done, total)`` that drives ComfyUI's progress bar (websocket updates)."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def progress(done: int, total_now: int) -> None:
        bar.update_absolute(done, total_now)

    return progress


def sampling_progress(total: int) -> tuple[Callable[[int, int], None], Callable[[int, torch.Tensor], None]]:
    """``(progress(done, total), on_step(index, latent))`` sharing one ComfyUI progress bar: ``progress`` moves it,
    ``on_step`` sends a latent preview of the (normalised Wan2.1) latent after each step with ComfyUI's own
    previewer — Latent2RGB or TAESD/TAEHV, as ``--preview-method`` and the UI's setting choose; none when off."""
    import comfy.latent_formats
    import comfy.model_management
    import comfy.utils
    import latent_preview

    bar = comfy.utils.ProgressBar(total)
    latent_format = comfy.latent_formats.Wan21()
    previewer = latent_preview.get_previewer(comfy.model_management.get_torch_device(), latent_format)

    def progress(done: int, total_now: int) -> None:
        bar.update_absolute(done, total_now)

    def on_step(index: int, latent: torch.Tensor) -> None:
        if previewer is None:
            return
        raw = latent_format.process_out(latent.detach().float())
        bar.update_absolute(bar.current, bar.total, previewer.decode_latent_to_preview_image("JPEG", raw))

    return progress, on_step


def stage_ticker(total: int) -> Callable[[], None]:
    """``tick()`` that advances ComfyUI's progress bar by one of ``total`` stages (e.g. each CLIP image and the
    VAE encode of the conditioning node), so long encodes do not sit at 0 %."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)
    done = [0]

    def tick() -> None:
        done[0] = min(total, done[0] + 1)
        bar.update_absolute(done[0], total)

    return tick


def interrupt_check() -> bool:
    """``should_stop`` for the core: raises ComfyUI's interrupt exception when the user cancels."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    return False


def models_dir() -> str:
    import folder_paths

    return folder_paths.models_dir

