"""Loudness in LUFS (ITU-R BS.1770-4, K-weighted and gated) with pyloudnorm, and normalisation to a target.

pyloudnorm measures over 400 ms blocks, so a clip shorter than one block is measured on its periodic
extension to 400 ms (the loudness of a sound repeated is the loudness of the sound).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError, MissingModelError

DEFAULT_TARGET_LUFS = -23.0  # EBU R128
PEAK_CEILING = 0.99
BLOCK_S = 0.4

__all__ = ["DEFAULT_TARGET_LUFS", "integrated_loudness", "normalize_loudness"]


def _meter(sample_rate: int):
    try:
        import pyloudnorm
    except ImportError:
        raise MissingModelError("loudness normalisation needs pyloudnorm: pip install pyloudnorm") from None
    return pyloudnorm.Meter(int(sample_rate), block_size=BLOCK_S)


def integrated_loudness(wave: np.ndarray | torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness of ``wave`` (``[S]`` mono or ``[C, S]``) in LUFS; ``-inf`` for silence."""
    x = wave.detach().cpu().double().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float64)
    if x.ndim == 2:
        x = x.T  # pyloudnorm wants [S, C]
    elif x.ndim != 1:
        raise InputError(f"loudness: expected audio [samples] or [channels, samples], got shape {x.shape}")
    if x.shape[0] == 0:
        raise InputError("loudness: the audio is empty (0 samples)")
    block = int(np.ceil(BLOCK_S * sample_rate)) + 1
    if x.shape[0] < block:
        x = np.resize(x.T, x.T.shape[:-1] + (block,)).T if x.ndim == 2 else np.resize(x, block)
    return float(_meter(sample_rate).integrated_loudness(x))


def normalize_loudness(wave: torch.Tensor, sample_rate: int, target_lufs: float = DEFAULT_TARGET_LUFS,
                       peak_ceiling: float = PEAK_CEILING) -> torch.Tensor:
    """Scale ``wave`` to ``target_lufs`` integrated loudness, never beyond a ``peak_ceiling`` sample peak.

    Silence (no block above BS.1770's -70 LUFS gate) is returned unchanged.
    """
    x = wave.detach().cpu().float()
    level = integrated_loudness(x, sample_rate)
    if not np.isfinite(level):
        return x.clone()
    gain = 10 ** ((target_lufs - level) / 20)
    peak = float(x.abs().max())
    if peak * gain > peak_ceiling:
        gain = peak_ceiling / peak
    return x * gain
