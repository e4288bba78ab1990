"""Sampling: flow-matching solvers, classifier-free guidance, the denoising loop and size rules.

Light to import: diffusers is loaded only when a ``unipc``/``dpmpp`` scheduler is built.
"""

from .guidance import (
    BRANCHES,
    COND,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NEGATIVE_PROMPT,
    TEXT_ONLY,
    UNCOND,
    WAN_NEGATIVE_PROMPT,
    Guidance,
)
from .sampler import Denoiser, make_noise, per_branch, sample
from .schedulers import DEFAULT_SOLVER, SOLVERS, FlowScheduler, default_shift, make_scheduler
from .sizes import (
    MAX_AREA_480P,
    frames_for_duration,
    is_valid_frame_count,
    latent_frames,
    latent_size,
    snap_frame_count,
    target_size,
    video_frames,
)

__all__ = [
    "BRANCHES", "COND", "UNCOND", "TEXT_ONLY", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NEGATIVE_PROMPT",
    "WAN_NEGATIVE_PROMPT", "Guidance", "Denoiser", "make_noise", "per_branch", "sample", "DEFAULT_SOLVER",
    "SOLVERS", "FlowScheduler", "default_shift", "make_scheduler", "MAX_AREA_480P", "frames_for_duration",
    "is_valid_frame_count", "latent_frames", "latent_size", "snap_frame_count", "target_size", "video_frames",
]
