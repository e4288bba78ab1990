"""What goes into and comes out of generation, and the conditioning that flows between the stages.

=========================  =====================================================================================
type                       what
=========================  =====================================================================================
:class:`GenerationRequest`  everything one clip needs besides the models (image, one voice per person, settings)
:class:`GenerationResult`   the clip: frames, mixed audio, the face preview, timings
:class:`VideoPlan`          the sizes of one generation (video, latent)
:class:`PromptEmbeds`       the prompt's and the negative prompt's text embeddings
:class:`Conditioning`       every DiT input shared by all denoising steps: ``y``, ``clip_fea``, one
                            :class:`~anytalker_core.model.speaker.Speaker` per person, the prompts, the plan
=========================  =====================================================================================

Plain data with no model attached: the stages (:mod:`.stages`) make and read them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..constants import (FPS, LATENT_CHANNELS, MAX_AREA, SAMPLE_RATE, VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE,
                         WINDOW_FRAMES)
from ..errors import InputError
from ..model.speaker import Speaker
from .window_plan import LongClipOptions

__all__ = ["GenerationRequest", "GenerationResult", "VideoPlan", "PromptEmbeds", "Conditioning", "Condition",
           "ProgressFn", "StopFn", "SAMPLE_RATE"]

#: ``progress(done, total)``
ProgressFn = Callable[[int, int], None]
#: ``should_stop() -> True`` cancels at the next check
StopFn = Callable[[], bool]


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
            clip is generated in overlapping windows (:mod:`.windows`). ``0`` = one pass whatever the length.
        long_clip: how overlapping windows are made (overlap, its merge, colour matching, re-anchoring).
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
    max_area: int = MAX_AREA
    frame_num: int | None = None
    fps: int = FPS
    boxes: Sequence[Sequence[float]] | None = None
    masks: np.ndarray | None = None
    window_frames: int = WINDOW_FRAMES
    long_clip: LongClipOptions = field(default_factory=LongClipOptions)


@dataclass
class GenerationResult:
    """A generated clip.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB (``None`` when they were streamed to a ``frame_sink``).
        fps: frames per second.
        audio: mixed mono waveform ``[S]`` at ``sample_rate``, cut/padded to the video's duration.
        sample_rate: 16000.
        preview: uint8 ``[H_img, W_img, 3]`` the input image with numbered face boxes.
        boxes: float32 ``[N, 4]`` face boxes used (identity order).
        seed: the noise seed.
        timings: seconds per stage.
        num_frames: ``T``.
        work_folder: a long clip's folder of finished windows (``generate``'s ``work_dir``), or None.
    """

    frames: np.ndarray | None
    fps: int
    audio: torch.Tensor
    sample_rate: int
    preview: np.ndarray
    boxes: np.ndarray
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    num_frames: int = 0
    work_folder: Path | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and not self.num_frames:
            self.num_frames = int(self.frames.shape[0])


@dataclass(frozen=True)
class VideoPlan:
    """Sizes of one generation: video ``height x width`` (multiples of 32), ``frame_num = 4n+1``."""

    height: int
    width: int
    frame_num: int

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // VAE_SPATIAL_STRIDE, self.width // VAE_SPATIAL_STRIDE

    @property
    def latent_frames(self) -> int:
        return (self.frame_num - 1) // VAE_TEMPORAL_STRIDE + 1

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        """``[1, 16, F_lat, lat_h, lat_w]``."""
        return (1, LATENT_CHANNELS, self.latent_frames, *self.latent_hw)


@dataclass
class PromptEmbeds:
    """Text embeddings ``[1, L, text_dim]`` for the prompt and the negative prompt."""

    context: torch.Tensor
    context_null: torch.Tensor


@dataclass
class Conditioning:
    """The DiT inputs shared by every denoising step.

    Attributes:
        y: ``[1, 20, F_lat, lat_h, lat_w]`` 4 mask channels + first-frame latent.
        clip_fea: ``[1, 257, clip_dim]`` CLIP tokens of the whole first frame.
        speakers: one :class:`Speaker` per person (real audio).
        prompts: the text embeddings.
        plan: the sizes.
        start_image: uint8 ``[H, W, 3]`` the image it was built from (long clips' colour reference), or None.
    """

    y: torch.Tensor
    clip_fea: torch.Tensor
    speakers: list[Speaker]
    prompts: PromptEmbeds
    plan: VideoPlan
    start_image: np.ndarray | None = None

    def branch_inputs(self, branch: str) -> tuple[torch.Tensor, list[Speaker]]:
        """``(context, speakers)`` of a guidance branch (see :mod:`.sampling.guidance`)."""
        if branch == "cond":
            return self.prompts.context, self.speakers
        if branch == "uncond":
            return self.prompts.context_null, [s.without_audio() for s in self.speakers]
        if branch == "text_only":
            return self.prompts.context, [s.without_audio() for s in self.speakers]
        raise ValueError(f"unknown guidance branch {branch!r}")

    def window(self, start: int, length: int) -> "Conditioning":
        """The condition of video frames ``start .. start+length-1`` (``length = 4j+1``), for long-clip windows.

        Audio: each speaker's features ``[:, start:start+length]`` (the real neighbouring audio context at
        the window's edges). Masks (``y``'s 4 mask channels, token masks): the first ``F_w`` latent frames,
        which is the window's own mask (frame 0 all ones, then the same face masks every frame). ``y``'s
        latent channels and ``clip_fea``: also the first ``F_w`` frames, i.e. the timeline's first frame; for
        ``start = 0`` that is exactly the first-frame latent of a ``length``-frame video because the Wan VAE
        is causal (latent frame j sees video frames <= 4j). Long clips cut a one-window template with
        ``start = 0`` and condition later windows on motion frames (:mod:`.windows`).
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


#: the former name of :class:`Conditioning`
Condition = Conditioning
