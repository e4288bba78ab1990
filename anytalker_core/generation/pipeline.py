"""The standalone generation pipeline: image + one audio track per person + prompt -> video frames.

:class:`AnyTalkerPipeline` composes the five loaded models (DiT, text encoder, CLIP vision, VAE, wav2vec2)
and a face detector, and runs the stages of :mod:`.stages` on them: each method is that stage with this
pipeline's models and :class:`~.stages.Placement` filled in. Code that holds only some of the models (the
ComfyUI nodes, training's validation) calls the stage functions directly.

:meth:`AnyTalkerPipeline.generate` chains the stages (audio -> plan -> faces -> text -> conditioning ->
denoise -> decode); a clip longer than ``GenerationRequest.window_frames`` is denoised and decoded window by
window (:mod:`.windows`, which sees the pipeline only through the small ``denoise``/``decode``/
``encode_frames``/``encode_image_tokens`` protocol). Like the reference (``wan/audio2video_multiID.py``): faces are found on the
full-resolution image and identity ``i`` is the i-th face from the left; ``clip_fea`` encodes the whole
image, each speaker's face tokens encode its square face crop; ``y`` is ``[4 mask channels ; VAE latent of
(first frame + zeros)]``; CFG's unconditional branch is the negative prompt with zeroed audio features.
Unlike it, the output is written at 24 fps (the frame rate the model was trained and conditioned at), sizes
are computed in exact integers, and a face count that does not match the audio track count is an error
rather than a silent drop.

Device and dtype are injected; with ``offload=True`` every model waits on the CPU and visits the device
only while its stage runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ..constants import FPS, MAX_AREA, MAX_SPEAKERS, SAMPLE_RATE
from ..errors import InputError, Interrupted
from ..input_names import name as input_name
from . import stages
from .inputs import check_image, check_tracks, detect_faces_for_preview, fit_length, load_image, make_face_detector
from .guided import SpeedOptions
from .host_memory import release_freed_memory
from .stages import Placement
from .types import (Condition, Conditioning, GenerationRequest, GenerationResult, ProgressFn, PromptEmbeds, StopFn,
                    VideoPlan)

if TYPE_CHECKING:  # imported lazily at run time
    from ..faces.masks import FaceMasks
    from ..io.model_paths import ModelPaths

log = logging.getLogger(__name__)

__all__ = ["GenerationRequest", "GenerationResult", "VideoPlan", "PromptEmbeds", "Conditioning", "Condition",
           "AnyTalkerPipeline", "load_image", "detect_faces_for_preview", "SAMPLE_RATE", "DEFAULT_FPS",
           "MAX_SPEAKERS"]

#: the former name of :data:`anytalker_core.constants.FPS`
DEFAULT_FPS = FPS


class AnyTalkerPipeline:
    """The loaded models + the generation stages run on them.

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
        missing = [name for name, model in (("dit", dit), ("text_encoder", text_encoder), ("clip_vision", clip_vision),
                                            ("vae", vae), ("wav2vec", wav2vec)) if model is None]
        if missing:
            raise TypeError(f"AnyTalkerPipeline composes all five loaded models; {', '.join(missing)} missing. To run "
                            "single stages with some of the models, call anytalker_core.generation.stages (e.g. "
                            "stages.denoise(dit, ...), stages.SamplingModels(dit, clip_vision, vae, placement))")
        self.dit = dit
        self.text_encoder = text_encoder
        self.clip_vision = clip_vision
        self.vae = vae
        self.wav2vec = wav2vec
        self.face_detector = face_detector
        self.placement = Placement(device=torch.device(device), dtype=dtype, offload=offload)
        self.speed = SpeedOptions()  # exact savings of the sampling loop (kv cache, batched guidance)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    @property
    def offload(self) -> bool:
        return self.placement.offload

    # ---------------------------------------------------------------------------- construction

    @classmethod
    def from_paths(cls, paths: "ModelPaths", *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, offload: bool = False,
                   face_backend: str = "auto", block_weight_dtype: torch.dtype | None = None,
                   face_detector: Any = None) -> "AnyTalkerPipeline":
        """Load every model named in ``paths`` (see :mod:`anytalker_core.io.model_paths`).

        ``face_detector``: an already loaded detector to reuse (else one is made for ``face_backend``).

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
        detector = face_detector if face_detector is not None else make_face_detector(
            face_backend, paths.insightface_root, device)
        log.info("models loaded in %.1f s (device %s, DiT dtype %s%s)", time.monotonic() - started, device,
                 str(dtype).replace("torch.", ""), ", offload" if offload else "")
        return cls(dit, text_encoder, clip_vision, vae, wav2vec, detector, device=device, dtype=dtype,
                   offload=offload)

    # --------------------------------------------------------------------------------- stages

    def prepare_audio(self, tracks: Sequence[torch.Tensor], mode: str = "pad", frame_num: int | None = None,
                      fps: int = FPS, should_stop: StopFn | None = None):
        """:func:`.stages.prepare_audio` with this pipeline's wav2vec2."""
        return stages.prepare_audio(self.wav2vec, tracks, mode, frame_num, fps, should_stop, self.placement)

    @staticmethod
    def plan(image_hw: Sequence[int], frame_num: int, max_area: int = MAX_AREA) -> VideoPlan:
        """:func:`.stages.plan`."""
        return stages.plan(image_hw, frame_num, max_area)

    def prepare_faces(self, image: np.ndarray, num_speakers: int, plan: VideoPlan, *,
                      boxes: Sequence[Sequence[float]] | None = None, masks: np.ndarray | None = None
                      ) -> "FaceMasks":
        """:func:`.stages.prepare_faces` with this pipeline's face detector."""
        return stages.prepare_faces(self.face_detector, image, num_speakers, plan, boxes=boxes, masks=masks)

    def encode_prompts(self, prompt: str, negative_prompt: str | None = None) -> PromptEmbeds:
        """:func:`.stages.encode_prompts` with this pipeline's text encoder."""
        return stages.encode_prompts(self.text_encoder, prompt, negative_prompt, self.placement)

    def build_condition(self, image: np.ndarray, faces: "FaceMasks", audio: Any, plan: VideoPlan,
                        prompts: PromptEmbeds) -> Conditioning:
        """:func:`.stages.condition` with this pipeline's CLIP vision model and VAE."""
        return stages.condition(self.clip_vision, self.vae, image, faces, audio, plan, prompts, self.placement)

    def encode_first_frame(self, image: np.ndarray, plan: VideoPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`.stages.encode_first_frame` with this pipeline's CLIP vision model and VAE."""
        return stages.encode_first_frame(self.clip_vision, self.vae, image, plan, self.placement)

    def encode_frames(self, frames: np.ndarray, num_frames: int) -> torch.Tensor:
        """:func:`.stages.encode_frames` with this pipeline's VAE."""
        return stages.encode_frames(self.vae, frames, num_frames, self.placement)

    def encode_image_tokens(self, frame: np.ndarray) -> torch.Tensor:
        """:func:`.stages.encode_image_tokens` with this pipeline's CLIP vision model."""
        return stages.encode_image_tokens(self.clip_vision, frame, self.placement)

    def denoise(self, condition: Conditioning, **sampling: Any) -> torch.Tensor:
        """:func:`.stages.denoise` with this pipeline's DiT (``steps``, ``shift``, ``sampler``, ``guidance``,
        ``text_guidance``, ``audio_guidance``, ``seed``, ``progress``, ``should_stop``, ``known``), with this
        pipeline's :attr:`speed` options."""
        return stages.denoise(self.dit, condition, placement=self.placement, speed=self.speed, **sampling)

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """:func:`.stages.decode` with this pipeline's VAE."""
        return stages.decode(self.vae, latent, self.placement)

    # ------------------------------------------------------------------------------- everything

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None,
                 should_stop: StopFn | None = None, frame_sink: Callable[[np.ndarray], None] | None = None,
                 work_dir: str | Path | None = None) -> GenerationResult:
        """Run every stage for one clip. ``progress(step, total)`` reports denoising steps.

        A clip longer than ``request.window_frames`` is generated in overlapping windows
        (:func:`.windows.run_windows`; progress then counts all windows' steps); otherwise in one pass, as
        the reference does. ``frame_sink`` receives the frames in chunks as they are final (then
        ``result.frames`` is ``None``: nothing holds the whole clip). ``work_dir``: long clips persist each
        finished window there and a re-run with the same inputs resumes (``result.work_folder``; the caller
        removes it once the clip is written).
        """
        from ..faces import draw_preview
        from .window_plan import check_window_frames
        from .windows import window_inputs

        timings: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            timings[name] = now - clock
            clock = now
            if should_stop is not None and should_stop():
                raise Interrupted(f"generation stopped by request after the {name} stage")

        image = check_image(request.image)
        tracks = check_tracks(request.audio)
        check_window_frames(request.window_frames)
        long_clip = request.long_clip.checked(request.window_frames) if request.window_frames else None
        if request.fps != FPS:
            log.warning("fps %s: the model was trained at 24 fps; lip sync may drift at other rates", request.fps)
        if request.boxes is not None and request.masks is None and len(request.boxes) != len(tracks):
            raise InputError(f"{input_name('boxes')}: {len(request.boxes)} face box(es) given for {len(tracks)} "
                             f"{input_name('audio')}(s); give exactly one box per person, left to right")

        audio = self.prepare_audio(tracks, request.audio_mode, request.frame_num, request.fps, should_stop)
        del tracks  # the waveforms read from files are not needed any more (audio.mixed is muxed at the end)
        release_freed_memory()  # the audio stage's copies of the tracks, before the frames need memory
        lap("audio")
        plan = self.plan(image.shape[:2], audio.frame_num, request.max_area)
        # long clips: conditioned for one window (start image + zeros for W frames, not the whole timeline)
        cond_plan, cond_audio, windowed = window_inputs(plan, audio, request.window_frames)
        faces = self.prepare_faces(image, audio.num_tracks, cond_plan, boxes=request.boxes, masks=request.masks)
        lap("faces")
        prompts = self.encode_prompts(request.prompt, request.negative_prompt)
        lap("text")
        condition = self.build_condition(image, faces, cond_audio, cond_plan, prompts)
        release_freed_memory()
        lap("condition")
        sampling = dict(steps=request.steps, shift=request.shift, sampler=request.sampler, guidance=request.guidance,
                        text_guidance=request.text_guidance, audio_guidance=request.audio_guidance)
        chunks: list[np.ndarray] = []
        sink = frame_sink if frame_sink is not None else chunks.append
        work_folder = None
        if windowed:
            from .window_store import WindowStore
            from .windows import run_key_for, run_windows

            store = None
            if work_dir is not None:
                key, described = run_key_for(self, condition, audio.windowed, plan.frame_num, request.window_frames,
                                             long_clip, request.steps, request.seed, sampling)
                store = WindowStore(work_dir, key, described)
                work_folder = store.folder
            num_frames = run_windows(self, condition, audio.windowed, plan.frame_num, request.window_frames, sink,
                                     options=long_clip, seed=request.seed, progress=progress,
                                     should_stop=should_stop, store=store, **sampling)
            lap("denoise+decode")
        else:
            latent = self.denoise(condition, seed=request.seed, progress=progress, should_stop=should_stop, **sampling)
            lap("denoise")
            sink(self.decode(latent))
            num_frames = plan.frame_num
            lap("decode")
        frames = np.concatenate(chunks, axis=0) if frame_sink is None else None
        samples = int(round(num_frames / request.fps * SAMPLE_RATE))
        mixed = fit_length(audio.mixed.detach().float().cpu().reshape(-1), samples)
        log.info("generated %d frames %dx%d in %s", num_frames, plan.width, plan.height,
                 ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        return GenerationResult(
            frames=frames, fps=request.fps, audio=mixed, sample_rate=SAMPLE_RATE,
            preview=draw_preview(image, faces.boxes_xyxy, masks=faces.expanded_masks),
            boxes=faces.boxes_xyxy, seed=request.seed, timings=timings, num_frames=num_frames,
            work_folder=work_folder,
        )
