"""Flow-matching training math as small pure functions (rectified flow, as Wan2.1 was trained).

With clean latents ``x0``, Gaussian ``noise`` and a noise level ``σ ∈ [0, 1]``:

* ``x_t = (1 − σ)·x0 + σ·noise``                  (:func:`add_noise`)
* the DiT predicts the velocity ``target = noise − x0``  (:func:`flow_target`)
* it is told the timestep ``t = 1000·σ``             (:func:`sigmas_to_timesteps`)
* ``σ`` comes from a uniform or logit-normal draw ``u`` that is *shifted* towards high noise with
  ``σ = shift·u / (1 + (shift − 1)·u)`` (:func:`shift_sigmas`), the same formula the samplers in
  :mod:`anytalker_core.sampling` use at inference (shift 3 at 480p).

Every function takes an explicit ``torch.Generator`` so a run is reproducible and resumable.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from anytalker_core.errors import InputError

TimestepSampler = Literal["uniform", "logit_normal"]

NUM_TRAIN_TIMESTEPS = 1000

__all__ = ["shift_sigmas", "sample_sigmas", "add_noise", "flow_target", "sigmas_to_timesteps",
           "flow_matching_loss", "NUM_TRAIN_TIMESTEPS"]


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """``σ = shift·u / (1 + (shift − 1)·u)``; shift 1 is the identity, shift > 1 favours high noise."""
    if not shift > 0:
        raise InputError(f"timestep shift must be > 0, got {shift}")
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(
    batch_size: int,
    generator: torch.Generator,
    sampler: TimestepSampler = "uniform",
    shift: float = 3.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    min_sigma: float = 1e-3,
    max_sigma: float = 1.0,
) -> torch.Tensor:
    """Draw ``[B]`` float32 noise levels in ``[min_sigma, max_sigma]`` (CPU, from ``generator``)."""
    if sampler == "uniform":
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    elif sampler == "logit_normal":
        z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        u = torch.sigmoid(z * logit_std + logit_mean)
    else:
        raise InputError(f"timestep sampler must be 'uniform' or 'logit_normal', got {sampler!r}")
    sigma = shift_sigmas(u, shift)
    return sigma.clamp(min_sigma, max_sigma).float()


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` → ``[B, 1, 1, ...]`` broadcastable against ``like``."""
    return sigma.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 − σ)·x0 + σ·noise`` for ``x0, noise [B, ...]`` and ``sigma [B]``."""
    if x0.shape != noise.shape:
        raise InputError(f"add_noise: latents {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = _expand(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the model learns: ``noise − x0`` (what ``d x_t / d σ`` is)."""
    return noise - x0


def sigmas_to_timesteps(sigma: torch.Tensor) -> torch.Tensor:
    """``t = 1000·σ`` (float timesteps, as the DiT's sinusoidal embedding takes them)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in float32; ``weight [B]`` optionally re-weights samples (mean over the rest)."""
    err = (pred.float() - target.float()).pow(2)
    per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample)
    loss = per_sample.mean()
    if not math.isfinite(float(loss.detach())):
        raise FloatingPointError("flow-matching loss is not finite (NaN/inf): lower the learning rate or check data")
    return loss
