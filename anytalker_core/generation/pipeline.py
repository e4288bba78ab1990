"""The standalone generation pipeline: image + one audio track per person + prompt -> video frames.

:class:`AnyTalkerPipeline` holds the loaded components and exposes each stage as its own method with
explicit inputs and outputs, so the ComfyUI nodes (and tests) can run, replace or cache any stage:

=====================  ===============================================================================
stage                  in -> out
=====================  ===============================================================================
``prepare_audio``      tracks ``[S]`` 16 kHz, mode -> ``AudioConditioning`` (features ``[N,T,5,L,C]``,
                       frame count ``T = 4n+1``, mixed waveform)
``plan``               image size, frame count, max area -> :class:`VideoPlan` (video/latent sizes)
``prepare_faces``      image, N, plan (+ user boxes/masks) -> ``FaceMasks`` (token masks, y mask, crops)
``encode_prompts``     prompt, negative prompt -> :class:`PromptEmbeds`
``build_condition``    image, faces, audio, plan, prompts -> :class:`Condition` (``y``, ``clip_fea``,
                       one ``Speaker`` per person); ``encode_first_frame`` is its image part and
                       ``condition_from_frame`` swaps only that part (long videos, :mod:`.long_video`)
``denoise``            condition, sampler settings, seed -> latent ``[1, 16, F, h, w]``
``decode``             latent -> frames uint8 ``[T, H, W, 3]``
=====================  ===============================================================================

:meth:`AnyTalkerPipeline.generate` chains them; a clip longer than ``GenerationRequest.window_frames``
is denoised and decoded window by window (:mod:`.long_video`). Like the reference (``wan/audio2video_multiID.py``):
faces are found on the full-resolution image and identity ``i`` is the i-th face from the left;
``clip_fea`` encodes the whole image, each speaker's face tokens encode its square face crop; ``y`` is
``[4 mask channels ; VAE latent of (first frame + zeros)]``; CFG's unconditional branch is the negative
prompt with zeroed audio features. Unlike it, the output is written at 24 fps (the frame rate the model
was trained and conditioned at), sizes are computed in exact integers, and a face count that does not
match the audio track count is an error rather than a silent drop.

Device and dtype are injected; with ``offload=True`` every model waits on the CPU and visits the device
only while its stage runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..model.speaker import Speaker
from ..errors import InputError, Interrupted
from .windows import DEFAULT_WINDOW_FRAMES

if TYPE_CHECKING:  # imported lazily at run time
    from ..faces.masks import FaceMasks
    from ..io.model_paths import ModelPaths

log = logging.getLogger(__name__)

__all__ = ["GenerationRequest", "GenerationResult", "VideoPlan", "PromptEmbeds", "Condition",
           "AnyTalkerPipeline", "load_image", "detect_faces_for_preview", "SAMPLE_RATE", "DEFAULT_FPS"]

SAMPLE_RATE = 16000
DEFAULT_FPS = 24
MAX_SPEAKERS = 8

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


# ------------------------------------------------------------------------------------------ data types


@dataclass
class GenerationRequest:
    """Everything one clip needs besides the models.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB first frame (or an image file path), one face per audio track.
        audio: one mono 16 kHz waveform ``[S]`` (or an audio file path) per person, **left to right**.
        prompt / negative_prompt: text; ``None`` negative = the reference's default.
        audio_mode: ``"pad"`` (tracks overlap on one timeline) or ``"concat"`` (turns, left to right).
        steps, shift, sampler: solver settings (``shift=None``: 3.0 up to 480p area, else 5.0).
        guidance: single CFG scale for text and audio (reference: 4.5).
        text_guidance, audio_guidance: separate scales (both or neither; 3 model passes per step).
        seed: noise seed (CPU generator, device independent).
        max_area: max pixels of the video; the image's aspect is kept, sides snapped to 32.
        frame_num: ``4n+1`` frames, or ``None`` for the audio's length.
        fps: output frame rate (24: the rate the audio features are aligned to).
        boxes: optional face boxes ``x1, y1, x2, y2`` (image pixels), one per track, in track order.
        masks: optional face masks ``[N, H, W]`` in 0..1, one per track (wins over ``boxes``).
        window_frames: longest single denoising pass, ``4m+1`` frames (81: the training length); a longer
            clip is generated in chained windows (:mod:`.long_video`). ``0`` = one pass whatever the length.
    """

    image: np.ndarray | str | Path
    audio: Sequence[torch.Tensor | str | Path]
    prompt: str = ""
    negative_prompt: str | None = None
    audio_mode: str = "pad"
    steps: int = 40
    shift: float | None = None
    sampler: str = "unipc"
    guidance: float = 4.5
    text_guidance: float | None = None
    audio_guidance: float | None = None
    seed: int = 42
    max_area: int = 832 * 480
    frame_num: int | None = None
    fps: int = DEFAULT_FPS
    boxes: Sequence[Sequence[float]] | None = None
    masks: np.ndarray | None = None
    window_frames: int = DEFAULT_WINDOW_FRAMES


@dataclass
class GenerationResult:
    """A generated clip.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB.
        fps: frames per second.
        audio: mixed mono waveform ``[S]`` at ``sample_rate``, cut/padded to the video's duration.
        sample_rate: 16000.
        preview: uint8 ``[H_img, W_img, 3]`` the input image with numbered face boxes.
        boxes: float32 ``[N, 4]`` face boxes used (identity order).
        seed: the noise seed.
        timings: seconds per stage.
    """

    frames: np.ndarray
    fps: int
    audio: torch.Tensor
    sample_rate: int
    preview: np.ndarray
    boxes: np.ndarray
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoPlan:
    """Sizes of one generation: video ``height x width`` (multiples of 32), ``frame_num = 4n+1``."""

    height: int
    width: int
    frame_num: int

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def latent_frames(self) -> int:
        return (self.frame_num - 1) // 4 + 1

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        """``[1, 16, F_lat, lat_h, lat_w]``."""
        return (1, 16, self.latent_frames, *self.latent_hw)


@dataclass
class PromptEmbeds:
    """Text embeddings ``[1, L, text_dim]`` for the prompt and the negative prompt."""

    context: torch.Tensor
    context_null: torch.Tensor


@dataclass
class Condition:
    """The DiT inputs shared by every denoising step.

    Attributes:
        y: ``[1, 20, F_lat, lat_h, lat_w]`` 4 mask channels + first-frame latent.
        clip_fea: ``[1, 257, clip_dim]`` CLIP tokens of the whole first frame.
        speakers: one :class:`Speaker` per person (real audio).
        prompts: the text embeddings.
        plan: the sizes.
    """

    y: torch.Tensor
    clip_fea: torch.Tensor
    speakers: list[Speaker]
    prompts: PromptEmbeds
    plan: VideoPlan

    def branch_inputs(self, branch: str) -> tuple[torch.Tensor, list[Speaker]]:
        """``(context, speakers)`` of a guidance branch (see :mod:`.sampling.guidance`)."""
        if branch == "cond":
            return self.prompts.context, self.speakers
        if branch == "uncond":
            return self.prompts.context_null, [s.without_audio() for s in self.speakers]
        if branch == "text_only":
            return self.prompts.context, [s.without_audio() for s in self.speakers]
        raise ValueError(f"unknown guidance branch {branch!r}")

    def window(self, start: int, length: int) -> "Condition":
        """The condition of video frames ``start .. start+length-1`` (``length = 4j+1``), for chained windows.

        Audio: each speaker's features ``[:, start:start+length]`` (the real neighbouring audio context at
        the window's edges). Masks (``y``'s 4 mask channels, token masks): the first ``F_w`` latent frames,
        which is the window's own mask (frame 0 all ones, then the same face masks every frame). ``y``'s
        latent channels and ``clip_fea``: also the first ``F_w`` frames, i.e. the timeline's first frame; for
        ``start = 0`` that is exactly the first-frame latent of a ``length``-frame video because the Wan VAE
        is causal (latent frame j sees video frames <= 4j). For ``start > 0`` replace them with
        :meth:`AnyTalkerPipeline.condition_from_frame`.
        """
        total = self.plan.frame_num
        if length < 1 or (length - 1) % 4 or start < 0 or start % 4 or start + length > total:
            raise InputError(f"window of {length} frames at frame {start}: expected 4j+1 frames starting at a "
                             f"multiple of 4 inside the {total}-frame clip")
        plan = VideoPlan(height=self.plan.height, width=self.plan.width, frame_num=length)
        f_lat = plan.latent_frames
        speakers = [dataclasses.replace(s, audio=s.audio[:, start:start + length],
                                        token_mask=s.token_mask[:, :f_lat]) for s in self.speakers]
        return dataclasses.replace(self, y=self.y[:, :, :f_lat], speakers=speakers, plan=plan)


# ------------------------------------------------------------------------------------------- helpers


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB (EXIF rotation applied, alpha dropped)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image '{path}': no such file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"image '{path}': not a readable image ({exc}); expected png, jpg, webp, ...") from None


def _check_image(image: Any) -> np.ndarray:
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: expected an RGB array [H, W, 3], got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and 0.0 <= image.min() and image.max() <= 1.0:
            image = (image * 255.0 + 0.5).astype(np.uint8)
        else:
            raise InputError(f"image: expected uint8 0..255 or float 0..1 values, got dtype {image.dtype}")
    if min(image.shape[:2]) < 32:
        raise InputError(f"image: {image.shape[1]}x{image.shape[0]} pixels is too small (at least 32x32)")
    return np.ascontiguousarray(image)


def _check_tracks(audio: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(audio, torch.Tensor):
        audio = [audio]
    tracks = list(audio)
    if not tracks:
        raise InputError("audio: expected one audio track per person, got none")
    if len(tracks) > MAX_SPEAKERS:
        raise InputError(f"audio: {len(tracks)} tracks given; at most {MAX_SPEAKERS} people are supported")
    out = []
    for i, t in enumerate(tracks):
        if isinstance(t, (str, Path)):
            from ..io.media import load_audio

            t = load_audio(t, SAMPLE_RATE)
        t = torch.as_tensor(np.asarray(t, dtype=np.float32)) if not isinstance(t, torch.Tensor) else t
        if t.ndim != 1:
            raise InputError(f"audio track {i + 1}: expected a mono waveform [S], got shape {tuple(t.shape)}")
        if t.numel() < SAMPLE_RATE // 10:
            raise InputError(f"audio track {i + 1}: {t.numel()} samples is shorter than 0.1 s at 16 kHz")
        if not torch.isfinite(t).all():
            raise InputError(f"audio track {i + 1}: contains NaN or infinite samples")
        out.append(t.float().cpu())
    return out


def _fit_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Cut or zero-pad ``wave [S]`` to ``samples``."""
    if wave.numel() >= samples:
        return wave[:samples].clone()
    return torch.cat([wave, wave.new_zeros(samples - wave.numel())])


def _to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[1, 3, T, H, W]`` (or ``[3, T, H, W]``) in -1..1 -> uint8 ``[T, H, W, 3]``."""
    if video.ndim == 5:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise RuntimeError(f"VAE decode returned shape {tuple(video.shape)}, expected [1, 3, T, H, W]")
    video = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()


def _make_detector(backend: str, insightface_root: Path | None, device: torch.device | str = "cpu"):
    """A face detector; ``auto`` = insightface when its package and models are present, else mediapipe."""
    from ..faces import load_detector

    dev = str(device) if str(device).startswith("cuda") else "cpu"
    detector = load_detector(backend, models_dir=insightface_root, device=dev)
    log.info("face detector: %s", getattr(detector, "name", type(detector).__name__))
    return detector


def detect_faces_for_preview(image: np.ndarray, num_speakers: int | None = None, *, boxes=None,
                             backend: str = "auto", models_dir: str | Path | None = None
                             ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Find the faces (or take ``boxes``) and draw the numbered preview; no generation model is loaded.

    Args:
        image: uint8 ``[H, W, 3]``.
        num_speakers: how many faces to keep (the largest, then ordered left to right); ``None`` = all.
        boxes: user boxes (then nothing is detected).
        backend: ``auto``, ``insightface`` or ``mediapipe``.
        models_dir: ComfyUI-style models folder (for ``insightface/``).
    Returns:
        ``(preview uint8 [H, W, 3], boxes in identity order)``.
    """
    from ..faces import draw_preview, select_faces, validate_boxes

    image = _check_image(image)
    if boxes is not None:
        chosen = validate_boxes(boxes, image.shape[:2])
        if num_speakers is not None and len(chosen) != num_speakers:
            raise InputError(f"{len(chosen)} face box(es) given for {num_speakers} audio track(s); "
                             "give exactly one box per audio track")
    else:
        root = Path(models_dir) / "insightface" if models_dir is not None else None
        detector = _make_detector(backend, root if root is not None and root.is_dir() else None)
        found = validate_boxes(detector.detect(image), image.shape[:2])
        chosen = select_faces(found, num_speakers if num_speakers is not None else len(found)) if found else []
        if not chosen:
            raise InputError("no face found in the image; pass --boxes x1,y1,x2,y2 to place the faces by hand")
    return draw_preview(image, chosen), chosen


# ------------------------------------------------------------------------------------------- pipeline


class AnyTalkerPipeline:
    """Loaded components + the generation stages.

    Args:
        dit: ``AnyTalkerDiT``.
        text_encoder: UMT5 encoder (``encode(texts) -> list of [L_i, text_dim]``).
        clip_vision: CLIP vision encoder (``encode(images) -> [N, 257, clip_dim]``).
        vae: Wan VAE (``encode`` / ``decode``).
        wav2vec: ``Wav2VecEncoder`` (audio features).
        face_detector: a ``FaceDetector`` (used unless boxes/masks are given), or None.
        device: where the models run.
        dtype: the DiT's compute dtype (the encoders keep the dtype they were loaded with).
        offload: keep models on the CPU between uses.
    """

    def __init__(self, dit: torch.nn.Module, text_encoder: Any, clip_vision: Any, vae: Any, wav2vec: Any,
                 face_detector: Any = None, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, offload: bool = False) -> None:
        self.dit = dit
        self.text_encoder = text_encoder
        self.clip_vision = clip_vision
        self.vae = vae
        self.wav2vec = wav2vec
        self.face_detector = face_detector
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload = offload

    # ---------------------------------------------------------------------------- construction

    @classmethod
    def from_paths(cls, paths: "ModelPaths", *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, offload: bool = False,
                   face_backend: str = "auto", block_weight_dtype: torch.dtype | None = None) -> "AnyTalkerPipeline":
        """Load every model named in ``paths`` (see :mod:`.model_paths`).

        ``block_weight_dtype=torch.float8_e4m3fn`` stores the DiT's block weights in fp8 (half the memory).
        """
        from ..audio import load_wav2vec
        from ..model.checkpoint import load_dit
        from ..encoders import load_clip_vision, load_text_encoder, load_vae

        device = torch.device(device)
        home = torch.device("cpu") if offload else device
        # encoders: float32 on the CPU; on a GPU the DiT's half dtype, but T5 in bfloat16 (it overflows in fp16)
        half = device.type != "cpu" and dtype != torch.float32
        clip_dtype = dtype if half else torch.float32
        text_dtype = torch.bfloat16 if half else torch.float32
        started = time.monotonic()
        dit = load_dit(paths.dit, config_path=paths.dit_config, device=home, dtype=dtype,
                       weight_dtype=block_weight_dtype)
        text_encoder = load_text_encoder(paths.text_encoder, device=home, dtype=text_dtype)
        clip_vision = load_clip_vision(paths.clip_vision, device=home, dtype=clip_dtype)
        vae = load_vae(paths.vae, device=home, dtype=torch.float32)
        wav2vec = load_wav2vec(paths.wav2vec, device=home, dtype=torch.float32)
        detector = _make_detector(face_backend, paths.insightface_root, device)
        log.info("models loaded in %.1f s (device %s, DiT dtype %s%s)", time.monotonic() - started, device,
                 str(dtype).replace("torch.", ""), ", offload" if offload else "")
        return cls(dit, text_encoder, clip_vision, vae, wav2vec, detector, device=device, dtype=dtype,
                   offload=offload)

    @contextlib.contextmanager
    def _on_device(self, model: Any) -> Iterator[Any]:
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

    # --------------------------------------------------------------------------------- stages

    def prepare_audio(self, tracks: Sequence[torch.Tensor], mode: str = "pad", frame_num: int | None = None,
                      fps: int = DEFAULT_FPS, should_stop: StopFn | None = None):
        """Audio tracks (16 kHz, left to right) -> ``AudioConditioning``.

        Returns the audio module's ``AudioConditioning``: ``features [N, frame_num, 5, L, C]``,
        ``frame_num`` (4n+1, from the audio unless given), ``mixed [S]`` 16 kHz.
        """
        from ..audio import build_audio_conditioning

        if mode not in ("pad", "concat"):
            raise InputError(f"audio mode '{mode}': expected 'pad' (overlapping) or 'concat' (turns)")
        tracks = _check_tracks(tracks)
        if frame_num is not None and (frame_num < 1 or (frame_num - 1) % 4):
            raise InputError(f"frame_num must be 4n+1 (5, 9, 13, ...), got {frame_num}")
        with self._on_device(self.wav2vec):
            audio = build_audio_conditioning(tracks, mode=mode, fps=fps, encoder=self.wav2vec, frame_num=frame_num,
                                             should_stop=should_stop)
        log.info("audio: %d track(s), %s mode -> %d frames (%.2f s at %d fps)", len(tracks), mode,
                 audio.frame_num, audio.frame_num / fps, fps)
        return audio

    @staticmethod
    def plan(image_hw: Sequence[int], frame_num: int, max_area: int = 832 * 480) -> VideoPlan:
        """Video size for an image (max ``max_area`` pixels, image aspect, multiples of 32)."""
        from ..sampling import target_size

        if frame_num < 1 or (frame_num - 1) % 4:
            raise InputError(f"frame_num must be 4n+1, got {frame_num}")
        height, width = target_size(int(image_hw[0]), int(image_hw[1]), int(max_area))
        return VideoPlan(height=height, width=width, frame_num=int(frame_num))

    def prepare_faces(self, image: np.ndarray, num_speakers: int, plan: VideoPlan, *,
                      boxes: Sequence[Sequence[float]] | None = None, masks: np.ndarray | None = None
                      ) -> "FaceMasks":
        """Find ``num_speakers`` faces (or use the given boxes/masks) -> ``FaceMasks`` on ``plan``'s grid.

        Detected faces: the ``num_speakers`` largest, ordered left to right. Boxes/masks: as given.
        Fewer faces than tracks is an error naming both counts.
        """
        from ..faces import prepare_faces

        image = _check_image(image)
        detector = None
        if boxes is None and masks is None:
            if self.face_detector is None:
                raise InputError("no face detector loaded: pass face boxes or masks (one per audio track)")
            detector = self.face_detector
        faces = prepare_faces(image, num_speakers, plan.latent_hw, plan.latent_frames, detector=detector,
                              boxes=boxes, masks=masks)
        log.info("faces (left to right): %s", "; ".join(
            f"#{i + 1} [{', '.join(f'{v:.0f}' for v in b)}]" for i, b in enumerate(faces.boxes_xyxy)))
        return faces

    def encode_prompts(self, prompt: str, negative_prompt: str | None = None) -> PromptEmbeds:
        """Prompt and negative prompt -> ``[1, L, text_dim]`` embeddings (on the device, DiT dtype)."""
        from ..sampling import DEFAULT_NEGATIVE_PROMPT

        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected text, got {type(prompt).__name__}")
        negative = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        with self._on_device(self.text_encoder), torch.no_grad():
            embeds = self.text_encoder.encode([prompt, negative])
        context, context_null = (self._dit_tensor(_batch1(e)) for e in embeds)
        return PromptEmbeds(context=context, context_null=context_null)

    def build_condition(self, image: np.ndarray, faces: "FaceMasks", audio: Any, plan: VideoPlan,
                        prompts: PromptEmbeds) -> Condition:
        """Assemble the DiT conditioning.

        Args:
            image: uint8 ``[H, W, 3]``, the image the faces were located on.
            faces: from :meth:`prepare_faces` (on ``plan``'s latent grid).
            audio: from :meth:`prepare_audio` (``features [N, frame_num, 5, L, C]``).
            plan: sizes; ``plan.frame_num`` must equal the audio's frame count.
            prompts: from :meth:`encode_prompts`.
        """
        from ..faces import crop_faces

        image = _check_image(image)
        features = audio.features
        n = int(features.shape[0])
        if faces.num_faces != n:
            raise InputError(f"{faces.num_faces} face(s) for {n} audio track(s): expected one face per track")
        if int(features.shape[1]) != plan.frame_num:
            raise InputError(f"audio features cover {features.shape[1]} frames but the video has {plan.frame_num}")
        if tuple(faces.y_mask.shape[1:]) != (plan.latent_frames, *plan.latent_hw):
            raise InputError(f"face masks are on a {tuple(faces.y_mask.shape[1:])} latent grid, expected "
                             f"{(plan.latent_frames, *plan.latent_hw)}; call prepare_faces with this plan")
        crops = crop_faces(image, faces.crop_boxes)
        with self._on_device(self.clip_vision), torch.no_grad():
            # each square face crop (own size) -> that speaker's face tokens
            face_clip = torch.cat([self.clip_vision.encode(torch.from_numpy(c)[None]) for c in crops])  # [N, ...]
        clip_fea, latent = self.encode_first_frame(image, plan)
        y = torch.cat([faces.y_mask.unsqueeze(0).to(latent), latent], dim=1)  # [1, 20, F_lat, lat_h, lat_w]
        speakers = [
            Speaker(audio=self._dit_tensor(features[i:i + 1]),      # [1, T, 5, L, C]
                    face_clip=self._dit_tensor(face_clip[i:i + 1]),  # [1, 257, clip_dim]
                    token_mask=self._dit_tensor(faces.token_mask(i)))  # [1, F_lat, h/2, w/2]
            for i in range(n)
        ]
        return Condition(y=self._dit_tensor(y), clip_fea=clip_fea, speakers=speakers, prompts=prompts, plan=plan)

    def encode_first_frame(self, image: np.ndarray, plan: VideoPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The first-frame part of the conditioning: ``(clip_fea, latent)``.

        Args:
            image: uint8 ``[H, W, 3]`` first frame (any size; resized to the plan's).
            plan: the sizes (``plan.frame_num`` frames of first frame + zeros are VAE-encoded).
        Returns:
            ``clip_fea [1, 257, clip_dim]`` (CLIP tokens of the whole frame, DiT dtype) and the latent
            ``[1, 16, F_lat, lat_h, lat_w]`` of ``[frame; zeros]`` (float32), both on the device.
        """
        from ..encoders import encode_first_frame_condition

        image = _check_image(image)
        with self._on_device(self.clip_vision), torch.no_grad():
            clip_fea = self.clip_vision.encode(torch.from_numpy(image)[None])  # [1, 257, clip_dim]
        # the reference resizes the -1..1 image to the video size with bicubic interpolation (no clamp)
        first = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)  # [1, 3, H, W]
        first = torch.nn.functional.interpolate(first, size=(plan.height, plan.width), mode="bicubic")
        with self._on_device(self.vae), torch.no_grad():
            latent = encode_first_frame_condition(self.vae, first.to(self.device), plan.frame_num)
        latent = _batch1(latent, ndim=5).to(self.device)            # [1, 16, F_lat, lat_h, lat_w]
        return self._dit_tensor(_batch1(clip_fea, ndim=3)), latent

    def condition_from_frame(self, condition: Condition, frame: np.ndarray) -> Condition:
        """``condition`` with a new first frame: ``clip_fea`` and ``y``'s latent channels recomputed from
        ``frame`` (uint8 ``[H, W, 3]``); masks, face tokens, audio, prompts and sizes are kept."""
        clip_fea, latent = self.encode_first_frame(frame, condition.plan)
        y = torch.cat([condition.y[:, :4], self._dit_tensor(latent)], dim=1)  # [1, 20, F_lat, lat_h, lat_w]
        return dataclasses.replace(condition, y=y, clip_fea=clip_fea)

    def denoise(self, condition: Condition, *, steps: int = 40, shift: float | None = None,
                sampler: str = "unipc", guidance: float = 4.5, text_guidance: float | None = None,
                audio_guidance: float | None = None, seed: int = 42, progress: ProgressFn | None = None,
                should_stop: StopFn | None = None) -> torch.Tensor:
        """Sample the latent ``[1, 16, F_lat, lat_h, lat_w]`` (float32).

        Guidance: ``guidance`` alone is the reference's single scale (uncond = negative prompt + zeroed
        audio); ``text_guidance`` with ``audio_guidance`` gives separate scales. ``should_stop``
        returning True raises :class:`Interrupted` before the next step.
        """
        from ..sampling import Guidance, default_shift, make_noise, make_scheduler, per_branch, sample

        if (text_guidance is None) != (audio_guidance is None):
            raise InputError("text_guidance and audio_guidance go together: give both, or neither and use guidance")
        cfg = (Guidance(text_scale=text_guidance, audio_scale=audio_guidance) if text_guidance is not None
               else Guidance(text_scale=guidance))
        plan = condition.plan
        shift = default_shift(plan.height, plan.width) if shift is None else shift
        scheduler = make_scheduler(sampler, steps, shift)
        noise = make_noise(plan.latent_shape, seed, device=self.device)
        log.info("sampling: %s, %d steps, shift %.2f, guidance %s, seed %d, %dx%d, %d frames", sampler, steps,
                 shift, cfg, seed, plan.width, plan.height, plan.frame_num)

        def one_branch(latent: torch.Tensor, t: torch.Tensor, branch: str) -> torch.Tensor:
            context, speakers = condition.branch_inputs(branch)
            return self.dit(self._dit_tensor(latent), t.expand(latent.shape[0]), context, condition.clip_fea,
                            condition.y, speakers)

        with self._on_device(self.dit), torch.no_grad():
            return sample(per_branch(one_branch), noise, scheduler, cfg, progress=progress, should_stop=should_stop)

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Latent ``[1, 16, F_lat, h, w]`` -> uint8 frames ``[4(F_lat-1)+1, 8h, 8w, 3]``."""
        with self._on_device(self.vae), torch.no_grad():
            video = self.vae.decode(latent.to(self.device, torch.float32))
        return _to_uint8_frames(video)

    # ------------------------------------------------------------------------------- everything

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None,
                 should_stop: StopFn | None = None) -> GenerationResult:
        """Run every stage for one clip. ``progress(step, total)`` reports denoising steps.

        A clip longer than ``request.window_frames`` is denoised and decoded in chained windows
        (:func:`.long_video.generate_windows`; progress then counts all windows' steps); otherwise in one
        pass, as the reference does.
        """
        from ..faces import draw_preview
        from .windows import check_window_frames, generate_windows, needs_windows

        timings: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            timings[name] = now - clock
            clock = now
            if should_stop is not None and should_stop():
                raise Interrupted(f"generation stopped by request after the {name} stage")

        image = _check_image(request.image)
        tracks = _check_tracks(request.audio)
        check_window_frames(request.window_frames)
        if request.fps != DEFAULT_FPS:
            log.warning("fps %s: the model was trained at 24 fps; lip sync may drift at other rates", request.fps)
        if request.boxes is not None and request.masks is None and len(request.boxes) != len(tracks):
            raise InputError(f"{len(request.boxes)} face box(es) given for {len(tracks)} audio track(s); "
                             "give exactly one box per audio track")

        audio = self.prepare_audio(tracks, request.audio_mode, request.frame_num, request.fps, should_stop)
        lap("audio")
        plan = self.plan(image.shape[:2], audio.frame_num, request.max_area)
        faces = self.prepare_faces(image, len(tracks), plan, boxes=request.boxes, masks=request.masks)
        lap("faces")
        prompts = self.encode_prompts(request.prompt, request.negative_prompt)
        lap("text")
        condition = self.build_condition(image, faces, audio, plan, prompts)
        lap("condition")
        sampling = dict(steps=request.steps, shift=request.shift, sampler=request.sampler, guidance=request.guidance,
                        text_guidance=request.text_guidance, audio_guidance=request.audio_guidance,
                        seed=request.seed, progress=progress, should_stop=should_stop)
        if needs_windows(plan.frame_num, request.window_frames):
            frames = generate_windows(self, condition, request.window_frames, **sampling)
            lap("denoise+decode")
        else:
            latent = self.denoise(condition, **sampling)
            lap("denoise")
            frames = self.decode(latent)
            lap("decode")
        samples = int(round(frames.shape[0] / request.fps * SAMPLE_RATE))
        mixed = _fit_length(audio.mixed.detach().float().cpu().reshape(-1), samples)
        log.info("generated %d frames %dx%d in %s", frames.shape[0], frames.shape[2], frames.shape[1],
                 ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        return GenerationResult(
            frames=frames, fps=request.fps, audio=mixed, sample_rate=SAMPLE_RATE,
            preview=draw_preview(image, faces.boxes_xyxy, masks=faces.expanded_masks),
            boxes=faces.boxes_xyxy, seed=request.seed, timings=timings,
        )

    # ------------------------------------------------------------------------------------ utils

    def _dit_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype)


def _batch1(x: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """Add a leading batch dim when ``x`` has ``ndim - 1`` dims."""
    if x.ndim == ndim - 1:
        return x.unsqueeze(0)
    if x.ndim != ndim:
        raise RuntimeError(f"expected a {ndim}-D (or {ndim - 1}-D) tensor, got shape {tuple(x.shape)}")
    return x


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
