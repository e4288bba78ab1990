"""The denoising loop: noise -> latent, with guidance, progress and interruption.

The sampler does not know the DiT. It calls a *denoiser*::

    denoise(latent, t, branches) -> sequence of predictions, one per branch, each shaped like latent

* ``latent``: float32 ``[B, 16, F, H, W]`` (any shape works; the sampler only does elementwise math);
* ``t``: int64 ``[1]`` timestep on the latent's device (as the reference passes it; expand it to
  ``[B]`` for the DiT);
* ``branches``: a tuple of branch names from :mod:`.guidance` (``"cond"``, ``"uncond"``,
  ``"text_only"``). The pipeline maps each to its conditioning and may run them as one batch
  (concatenated along B) or one by one. :func:`per_branch` adapts a one-branch function
  ``fn(latent, t, branch) -> Tensor``.

The model may run in any dtype (cast the latent inside the denoiser); predictions are cast to float32
and the latent stays float32 between steps.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import torch

from ..errors import InputError, Interrupted, NonFiniteError
from ..input_names import name
from .guidance import Guidance
from .schedulers import FlowScheduler

log = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor, tuple[str, ...]], Sequence[torch.Tensor]]
BranchFn = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]

_MAX_SEED = 2**64 - 1


def per_branch(fn: BranchFn) -> Denoiser:
    """Adapt ``fn(latent, t, branch) -> prediction`` to the multi-branch :data:`Denoiser` form
    (one call per branch, no batching)."""

    def denoise(latent: torch.Tensor, t: torch.Tensor, branches: tuple[str, ...]) -> list[torch.Tensor]:
        return [fn(latent, t, branch) for branch in branches]

    return denoise


def make_noise(shape: Sequence[int], seed: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise ``[*shape]`` from a CPU ``torch.Generator`` seeded with ``seed``.

    Drawn on the CPU in float32 and then moved, so a seed gives the same video on any device.
    (The reference draws on the GPU, so its seeds do not map to these.)
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise InputError(f"seed must be an integer in 0..2**64-1, got {seed!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"noise shape must have positive sizes, got {shape}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=device, dtype=dtype)


def sample(
    denoise: Denoiser,
    noise: torch.Tensor,
    scheduler: FlowScheduler,
    guidance: Guidance | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the solver from ``noise`` to a clean latent.

    Args:
        denoise: the model, see the module docstring.
        noise: initial latent ``[B, 16, F, H, W]`` (e.g. :func:`make_noise`); not modified.
        scheduler: from :func:`~.schedulers.make_scheduler`; reset here, so it can be reused.
        guidance: :class:`Guidance` (default: the reference's single scale 4.5).
        progress: called as ``progress(step, total)`` after each step, ``step`` = 1..total.
        should_stop: checked before each step; if it returns True, :class:`Interrupted` is raised and
            nothing is returned. A prediction with NaN/inf values raises :class:`NonFiniteError` naming the step.
        on_step: called as ``on_step(index, latent)`` after each step (``index`` = 0..total-1) with the
            float32 latent after that step (previews, trajectories). Do not modify it.

    Returns:
        float32 latent, same shape and device as ``noise``.
    """
    guidance = guidance if guidance is not None else Guidance()
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise InputError(f"sample: noise must be a floating-point tensor, got {type(noise).__name__}"
                         + (f" of dtype {noise.dtype}" if isinstance(noise, torch.Tensor) else ""))
    scheduler.reset()
    branches = guidance.branches
    timesteps = scheduler.timesteps
    total = len(timesteps)
    log.debug("sampling: %s, %d steps, branches %s, latent %s", scheduler, total, branches, tuple(noise.shape))

    latent = noise.to(torch.float32)
    started = time.monotonic()
    for index, t in enumerate(timesteps):
        if should_stop is not None and should_stop():
            raise Interrupted(f"sampling stopped by request before step {index + 1} of {total}")
        timestep = t.reshape(1).to(device=latent.device)
        outputs = denoise(latent, timestep, branches)
        if len(outputs) != len(branches):
            raise RuntimeError(f"denoiser returned {len(outputs)} predictions for {len(branches)} branches {branches}")
        preds = {}
        for branch, out in zip(branches, outputs):
            if tuple(out.shape) != tuple(latent.shape):
                raise RuntimeError(f"denoiser's '{branch}' prediction has shape {tuple(out.shape)}, "
                                   f"expected the latent's {tuple(latent.shape)}")
            preds[branch] = out.to(device=latent.device, dtype=torch.float32)
            if not torch.isfinite(preds[branch]).all():
                hint = (" (at the first step: NaN/inf weights, i.e. a corrupt or mis-converted model file, "
                        "or an fp16 overflow" if index == 0 else " (an fp16 overflow?") + \
                    f"; try a {name('dtype')} of bfloat16 or float32)"
                raise NonFiniteError(f"sampling step {index + 1} of {total}: the model's '{branch}' prediction "
                                     f"contains NaN or infinite values{hint}")
        velocity = guidance.combine(preds)
        latent = scheduler.step(velocity, t, latent).to(torch.float32)
        if on_step is not None:
            on_step(index, latent)
        if progress is not None:
            progress(index + 1, total)
    log.debug("sampling: done in %.1f s", time.monotonic() - started)
    return latent
