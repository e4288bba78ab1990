"""The generation stages as free functions: each takes the loaded model(s) it needs and explicit inputs.

=======================  ===========================================================================================
stage                    (models) in -> out
=======================  ===========================================================================================
:func:`prepare_audio`    (wav2vec) tracks ``[S]`` 16 kHz, mode -> ``AudioFeatures`` (``[N,T,5,L,C]``, ``T = 4n+1``)
:func:`plan`             image size, frame count, max area -> :class:`~.types.VideoPlan`
:func:`prepare_faces`    (face detector) image, N, plan (+ user boxes/masks) -> ``FaceMasks`` on the latent grid
:func:`encode_prompts`   (text encoder) prompt, negative prompt -> :class:`~.types.PromptEmbeds`
:func:`condition`        (CLIP vision, VAE) image, faces, audio, plan, prompts -> :class:`~.types.Conditioning`;
                         :func:`encode_first_frame` is its image part; :func:`encode_frames` encodes long clips'
                         motion frames, :func:`encode_image_tokens` a frame's CLIP tokens
:func:`denoise`          (DiT) conditioning, sampler settings, seed -> latent ``[1, 16, F, h, w]``
:func:`decode`           (VAE) latent -> uint8 frames ``[T, H, W, 3]``
=======================  ===========================================================================================

Where models run is a :class:`Placement` (device, the DiT's compute dtype, offloading): with
``offload=True`` a model waits on the CPU and visits the device only while its stage runs. The ComfyUI
nodes and training call these functions with the models they hold; :class:`.pipeline.AnyTalkerPipeline`
composes all of them for the CLI and the Python API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..constants import FPS, MAX_AREA
from ..errors import InputError
from ..input_names import name as input_name
from ..model.speaker import Speaker
from .finite import check_finite
from .guided import GuidedDenoiser, SpeedOptions
from .inputs import check_image, check_tracks, to_uint8_frames
from .types import Conditioning, PromptEmbeds, ProgressFn, StopFn, VideoPlan

if TYPE_CHECKING:  # imported lazily at run time
    from ..faces.masks import FaceMasks

log = logging.getLogger(__name__)

__all__ = ["Placement", "prepare_audio", "plan", "prepare_faces", "encode_prompts", "condition", "encode_first_frame",
           "condition_from_frame", "encode_frames", "encode_image_tokens", "denoise", "decode", "SamplingModels"]


# ------------------------------------------------------------------------------------------ placement


@dataclass(frozen=True)
class Placement:
    """Where the models run: ``device``; ``dtype``, the DiT's compute dtype (conditioning tensors are cast to
    it; the encoders keep the dtype they were loaded with); ``offload``: keep models on the CPU between uses."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    offload: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))

    @contextlib.contextmanager
    def use(self, model: Any) -> Iterator[Any]:
        """Move ``model`` to the device for the duration of a stage (and back when offloading)."""
        if not self.offload:
            yield model
            return
        _move(model, self.device)
        try:
            yield model
        finally:
            _move(model, torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def dit_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device in the DiT's dtype."""
        return x.to(device=self.device, dtype=self.dtype)


def _move(model: Any, device: torch.device) -> None:
    """Move a module or an encoder wrapper between devices.

    Wrappers without ``.to()`` (a ``.model`` module plus a ``.device`` field and device-resident tensor
    attributes, like the encoders' ``TextEncoder``/``ClipVisionEncoder``/``WanVAE``) get all three moved.
    """
    if hasattr(model, "to"):
        model.to(device)
        return
    if not (hasattr(model, "model") and hasattr(model.model, "to")):
        raise TypeError(f"cannot move {type(model).__name__} between devices (no .to() and no .model)")
    model.model.to(device)
    for name, value in vars(model).items():
        if isinstance(value, torch.Tensor):
            setattr(model, name, value.to(device))
    if hasattr(model, "device"):
        model.device = device


def _batch1(x: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """Add a leading batch dim when ``x`` has ``ndim - 1`` dims."""
    if x.ndim == ndim - 1:
        return x.unsqueeze(0)
    if x.ndim != ndim:
        raise RuntimeError(f"expected a {ndim}-D (or {ndim - 1}-D) tensor, got shape {tuple(x.shape)}")
    return x


# ------------------------------------------------------------------------------------------- stages


def prepare_audio(wav2vec: Any, tracks: Sequence[torch.Tensor], mode: str = "pad", frame_num: int | None = None,
                  fps: int = FPS, should_stop: StopFn | None = None, placement: Placement = Placement()):
    """Audio tracks (16 kHz, left to right) -> the audio module's ``AudioFeatures``: ``features
    [N, frame_num, 5, L, C]``, ``frame_num`` (4n+1, from the audio unless given), ``mixed [S]`` 16 kHz."""
    from ..audio import build_audio_conditioning

    if mode not in ("pad", "concat"):
        raise InputError(f"audio mode '{mode}': expected 'pad' (overlapping) or 'concat' (turns)")
    tracks = check_tracks(tracks)
    if frame_num is not None and (frame_num < 1 or (frame_num - 1) % 4):
        raise InputError(f"{input_name('frame_num')} must be 4n+1 (5, 9, 13, ...), got {frame_num}")
    with placement.use(wav2vec):
        audio = build_audio_conditioning(tracks, mode=mode, fps=fps, encoder=wav2vec, frame_num=frame_num,
                                         should_stop=should_stop)
    check_finite(audio.windowed.rows, "audio stage", "wav2vec2 audio encoder")
    log.info("audio: %d track(s), %s mode -> %d frames (%.2f s at %d fps)", len(tracks), mode,
             audio.frame_num, audio.frame_num / fps, fps)
    return audio


def plan(image_hw: Sequence[int], frame_num: int, max_area: int = MAX_AREA) -> VideoPlan:
    """Video size for an image (max ``max_area`` pixels, image aspect, multiples of 32)."""
    from ..sampling import target_size

    if frame_num < 1 or (frame_num - 1) % 4:
        raise InputError(f"{input_name('frame_num')} must be 4n+1, got {frame_num}")
    height, width = target_size(int(image_hw[0]), int(image_hw[1]), int(max_area))
    return VideoPlan(height=height, width=width, frame_num=int(frame_num))


def prepare_faces(detector: Any, image: np.ndarray, num_speakers: int, video: VideoPlan, *,
                  boxes: Sequence[Sequence[float]] | None = None, masks: np.ndarray | None = None) -> "FaceMasks":
    """Find ``num_speakers`` faces (or use the given boxes/masks) -> ``FaceMasks`` on ``video``'s grid.

    Detected faces: :func:`~anytalker_core.faces.detect_and_select` (the ``num_speakers`` largest, left to
    right). Boxes/masks: as given. Fewer faces than tracks is an error naming both counts.
    """
    from ..faces import prepare_faces as faces_on_grid

    image = check_image(image)
    if boxes is None and masks is None and detector is None:
        raise InputError("no face detector loaded: pass face boxes or masks (one per audio track)")
    faces = faces_on_grid(image, num_speakers, video.latent_hw, video.latent_frames,
                          detector=detector if boxes is None and masks is None else None, boxes=boxes, masks=masks)
    log.info("faces (left to right): %s", "; ".join(
        f"#{i + 1} [{', '.join(f'{v:.0f}' for v in b)}]" for i, b in enumerate(faces.boxes_xyxy)))
    return faces


def encode_prompts(text_encoder: Any, prompt: str, negative_prompt: str | None = None,
                   placement: Placement = Placement()) -> PromptEmbeds:
    """Prompt and negative prompt -> ``[1, L, text_dim]`` embeddings (on the device, DiT dtype)."""
    from ..sampling import DEFAULT_NEGATIVE_PROMPT

    if not isinstance(prompt, str):
        raise InputError(f"prompt: expected text, got {type(prompt).__name__}")
    negative = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
    with placement.use(text_encoder), torch.no_grad():
        embeds = text_encoder.encode([prompt, negative])
    context, context_null = (placement.dit_tensor(check_finite(_batch1(e), "text stage", "text encoder"))
                             for e in embeds)
    return PromptEmbeds(context=context, context_null=context_null)


def encode_first_frame(clip_vision: Any, vae: Any, image: np.ndarray, video: VideoPlan,
                       placement: Placement = Placement()) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-frame part of the conditioning: ``(clip_fea, latent)``.

    Args:
        image: uint8 ``[H, W, 3]`` first frame (any size; resized to the plan's).
        video: the sizes (``video.frame_num`` frames of first frame + zeros are VAE-encoded).
    Returns:
        ``clip_fea [1, 257, clip_dim]`` (CLIP tokens of the whole frame, DiT dtype) and the latent
        ``[1, 16, F_lat, lat_h, lat_w]`` of ``[frame; zeros]`` (float32), both on the device.
    """
    from ..encoders import encode_first_frame_condition

    image = check_image(image)
    with placement.use(clip_vision), torch.no_grad():
        clip_fea = clip_vision.encode(torch.from_numpy(image)[None])  # [1, 257, clip_dim]
    # the reference resizes the -1..1 image to the video size with bicubic interpolation (no clamp)
    first = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)  # [1, 3, H, W]
    first = torch.nn.functional.interpolate(first, size=(video.height, video.width), mode="bicubic")
    with placement.use(vae), torch.no_grad():
        latent = encode_first_frame_condition(vae, first.to(placement.device), video.frame_num)
    latent = _batch1(latent, ndim=5).to(placement.device)            # [1, 16, F_lat, lat_h, lat_w]
    check_finite(clip_fea, "condition stage (first frame)", "CLIP vision encoder")
    check_finite(latent, "condition stage (first frame)", "VAE encoder")
    return placement.dit_tensor(_batch1(clip_fea, ndim=3)), latent


def condition(clip_vision: Any, vae: Any, image: np.ndarray, faces: "FaceMasks", audio: Any, video: VideoPlan,
              prompts: PromptEmbeds, placement: Placement = Placement()) -> Conditioning:
    """Assemble the DiT conditioning.

    Args:
        image: uint8 ``[H, W, 3]``, the image the faces were located on.
        faces: from :func:`prepare_faces` (on ``video``'s latent grid).
        audio: from :func:`prepare_audio` (``features [N, frame_num, 5, L, C]``).
        video: sizes; ``video.frame_num`` must equal the audio's frame count.
        prompts: from :func:`encode_prompts`.
    """
    from ..faces import crop_faces

    image = check_image(image)
    features = audio.features
    n = int(features.shape[0])
    if faces.num_faces != n:
        raise InputError(f"{faces.num_faces} face(s) for {n} audio track(s): expected one face per track")
    if int(features.shape[1]) != video.frame_num:
        raise InputError(f"audio features cover {features.shape[1]} frames but the video has {video.frame_num}")
    if tuple(faces.y_mask.shape[1:]) != (video.latent_frames, *video.latent_hw):
        raise InputError(f"face masks are on a {tuple(faces.y_mask.shape[1:])} latent grid, expected "
                         f"{(video.latent_frames, *video.latent_hw)}; call prepare_faces with this plan")
    crops = crop_faces(image, faces.crop_boxes)
    with placement.use(clip_vision), torch.no_grad():
        # each square face crop (own size) -> that speaker's face tokens
        face_clip = torch.cat([clip_vision.encode(torch.from_numpy(c)[None]) for c in crops])  # [N, ...]
    check_finite(face_clip, "condition stage (face crops)", "CLIP vision encoder")
    clip_fea, latent = encode_first_frame(clip_vision, vae, image, video, placement)
    y = torch.cat([faces.y_mask.unsqueeze(0).to(latent), latent], dim=1)  # [1, 20, F_lat, lat_h, lat_w]
    speakers = [
        Speaker(audio=placement.dit_tensor(features[i:i + 1]),      # [1, T, 5, L, C]
                face_clip=placement.dit_tensor(face_clip[i:i + 1]),  # [1, 257, clip_dim]
                token_mask=placement.dit_tensor(faces.token_mask(i)))  # [1, F_lat, h/2, w/2]
        for i in range(n)
    ]
    return Conditioning(y=placement.dit_tensor(y), clip_fea=clip_fea, speakers=speakers, prompts=prompts, plan=video,
                        start_image=image)


def condition_from_frame(clip_vision: Any, vae: Any, conditioning: Conditioning, frame: np.ndarray,
                         placement: Placement = Placement()) -> Conditioning:
    """``conditioning`` with a new first frame: ``clip_fea`` and ``y``'s latent channels recomputed from
    ``frame`` (uint8 ``[H, W, 3]``); masks, face tokens, audio, prompts and sizes are kept (the native route's
    chained windows)."""
    clip_fea, latent = encode_first_frame(clip_vision, vae, frame, conditioning.plan, placement)
    y = torch.cat([conditioning.y[:, :4], placement.dit_tensor(latent)], dim=1)  # [1, 20, F_lat, lat_h, lat_w]
    return dataclasses.replace(conditioning, y=y, clip_fea=clip_fea)


def encode_frames(vae: Any, frames: np.ndarray, num_frames: int, placement: Placement = Placement()) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` frames at the video size -> float32 latent ``[1, 16, F, h, w]`` of ``[frames; zeros]``
    (``num_frames = 4j+1 >= n`` frames; ``num_frames = n`` encodes just the frames). Long clips' motion frames
    (:mod:`.windows`)."""
    n, height, width = frames.shape[:3]
    if num_frames < n:
        raise InputError(f"encode_frames: {n} frames do not fit in {num_frames}")
    # one buffer of the encoded length, as encode_first_frame_condition (no padded copy beside it)
    video = torch.zeros(1, 3, num_frames, height, width)             # [1, 3, num_frames, H, W]
    video[0, :, :n] = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    video[0, :, :n].div_(127.5).sub_(1.0)
    with placement.use(vae), torch.no_grad():
        latent = vae.encode(video.to(placement.device))
    return _batch1(latent, ndim=5).to(placement.device)


def encode_image_tokens(clip_vision: Any, frame: np.ndarray, placement: Placement = Placement()) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> whole-image CLIP tokens ``[1, 257, clip_dim]`` (DiT dtype, on the device)."""
    with placement.use(clip_vision), torch.no_grad():
        clip_fea = clip_vision.encode(torch.from_numpy(np.ascontiguousarray(frame))[None])
    return placement.dit_tensor(_batch1(clip_fea, ndim=3))


def denoise(dit: torch.nn.Module, conditioning: Conditioning, *, steps: int = 40, shift: float | None = None,
            sampler: str = "unipc", guidance: float = 4.5, text_guidance: float | None = None,
            audio_guidance: float | None = None, seed: int = 42, progress: ProgressFn | None = None,
            should_stop: StopFn | None = None, placement: Placement = Placement(), known: Any = None,
            speed: SpeedOptions = SpeedOptions(),
            on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Sample the latent ``[1, 16, F_lat, lat_h, lat_w]`` (float32).

    The DiT runs through :class:`~.guided.GuidedDenoiser`: conditioning prepared once, guidance branches
    batched (``speed``, :class:`~.guided.SpeedOptions`).

    Guidance: ``guidance`` alone is the reference's single scale (uncond = negative prompt + zeroed
    audio); ``text_guidance`` with ``audio_guidance`` gives separate scales. ``should_stop``
    returning True raises :class:`~anytalker_core.errors.Interrupted` before the next step. ``known``
    (:class:`.windows.KnownLatents`) pins latent frames (long clips' motion frames). ``on_step(index, latent)``
    sees the float32 latent after each step (latent previews); it must not modify it.
    """
    from ..sampling import Guidance, default_shift, make_noise, make_scheduler, sample

    if (text_guidance is None) != (audio_guidance is None):
        raise InputError("text_guidance and audio_guidance go together: give both, or neither and use guidance")
    cfg = (Guidance(text_scale=text_guidance, audio_scale=audio_guidance) if text_guidance is not None
           else Guidance(text_scale=guidance))
    video = conditioning.plan
    shift = default_shift(video.height, video.width) if shift is None else shift
    scheduler = make_scheduler(sampler, steps, shift)
    noise = make_noise(video.latent_shape, seed, device=placement.device)
    log.info("sampling: %s, %d steps, shift %.2f, guidance %s, seed %d, %dx%d, %d frames", sampler, steps,
             shift, cfg, seed, video.width, video.height, video.frame_num)

    with placement.use(dit), torch.no_grad():
        denoiser = GuidedDenoiser(dit, conditioning.branch_inputs, conditioning.clip_fea, conditioning.y, speed)
        if known is not None:
            from .windows import pin_known_latents

            denoiser = pin_known_latents(denoiser, known, scheduler.sigmas)
        return sample(denoiser, noise, scheduler, cfg, progress=progress, should_stop=should_stop, on_step=on_step)


def decode(vae: Any, latent: torch.Tensor, placement: Placement = Placement()) -> np.ndarray:
    """Latent ``[1, 16, F_lat, h, w]`` -> uint8 frames ``[4(F_lat-1)+1, 8h, 8w, 3]``."""
    with placement.use(vae), torch.no_grad():
        video = vae.decode(latent.to(placement.device, torch.float32))
    check_finite(video, "decode stage", "VAE decoder")
    return to_uint8_frames(video)


@dataclass
class SamplingModels:
    """A DiT, a CLIP vision model and a VAE: what denoising, decoding and encoding motion frames need.

    It is the :class:`~.windows.WindowStages` of holders of just these three models (the ComfyUI sampler
    nodes, whose text and audio encoders ran in earlier nodes).
    """

    dit: torch.nn.Module
    clip_vision: Any
    vae: Any
    placement: Placement = Placement()

    def denoise(self, conditioning: Conditioning, **sampling: Any) -> torch.Tensor:
        return denoise(self.dit, conditioning, placement=self.placement, **sampling)

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        return decode(self.vae, latent, self.placement)

    def encode_frames(self, frames: np.ndarray, num_frames: int) -> torch.Tensor:
        return encode_frames(self.vae, frames, num_frames, self.placement)

    def encode_image_tokens(self, frame: np.ndarray) -> torch.Tensor:
        return encode_image_tokens(self.clip_vision, frame, self.placement)
