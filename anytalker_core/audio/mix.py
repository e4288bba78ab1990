"""The output video's sound: the users' own tracks mixed on the video timeline at their own rate.

wav2vec2 needs 16 kHz mono, but the video a user saves should carry the audio they gave: a 48 kHz
stereo recording stays 48 kHz stereo. :func:`mix_on_timeline` lays the original waveforms out where
the audio conditioning put them (``AudioConditioning.turns``), with the same per-track gain the
conditioning applied (loudness normalisation), at the highest input rate and the most channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from ..io.media import check_sample_rate, resample

PEAK_CEILING = 0.99  # overlapping speech is scaled down to this peak instead of clipping

__all__ = ["mix_on_timeline"]


def _channels(wave: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    """``[C, S]`` → ``[channels, S]``: mono is repeated, equal counts pass, anything else is refused."""
    if wave.shape[0] == channels:
        return wave
    if wave.shape[0] == 1:
        return wave.expand(channels, -1)
    raise InputError(f"{what}: {wave.shape[0]} channels cannot be mixed with {channels}-channel audio; give mono "
                     f"or {channels}-channel tracks")


def mix_on_timeline(waves: Sequence[torch.Tensor], rates: Sequence[int], starts_s: Sequence[float],
                    duration_s: float, gains: Sequence[float] | None = None,
                    names: Sequence[str] | None = None) -> tuple[torch.Tensor, int]:
    """Mix tracks onto one timeline at the highest input rate and the largest channel count.

    Args:
        waves: per track ``[C_i, S_i]`` float waveforms (``[S_i]`` is taken as mono).
        rates: per track sample rate in Hz.
        starts_s: per track start on the video timeline, seconds (``AudioConditioning.turns[i][0]``).
        duration_s: length of the result, seconds (the video's duration; longer audio is cut).
        gains: per track linear gain (``AudioConditioning.gains``); default 1.
        names: per track name for messages (default "audio input k", k from 1).
    Returns:
        ``(mix [C, round(duration_s · rate)] float32, rate)``; the peak is at most 0.99.
    """
    n = len(waves)
    if n == 0:
        raise InputError("no audio tracks to mix (need one per person)")
    if not (len(rates) == len(starts_s) == n) or (gains is not None and len(gains) != n):
        raise InputError(f"mix_on_timeline: {n} tracks but {len(rates)} rates / {len(starts_s)} starts"
                         + ("" if gains is None else f" / {len(gains)} gains"))
    names = list(names) if names is not None else [f"audio input {i + 1}" for i in range(n)]
    rates = [check_sample_rate(r, f"{names[i]} sample_rate") for i, r in enumerate(rates)]
    tracks = []
    for i, wave in enumerate(waves):
        wave = torch.as_tensor(wave).detach().float().cpu()
        wave = wave.reshape(1, -1) if wave.ndim == 1 else wave
        if wave.ndim != 2:
            raise InputError(f"{names[i]}: expected a waveform [channels, samples], got {tuple(wave.shape)}")
        tracks.append(wave)
    rate = max(rates)
    channels = max(t.shape[0] for t in tracks)
    total = int(round(duration_s * rate))
    mix = torch.zeros(channels, total, dtype=torch.float32)
    for i, (wave, r, start) in enumerate(zip(tracks, rates, starts_s)):
        if r != rate:
            wave = torch.stack([resample(c, r, rate) for c in wave])
        wave = _channels(wave, channels, names[i])
        if gains is not None:
            wave = wave * float(gains[i])
        offset = int(round(float(start) * rate))
        if offset >= total:
            continue
        seg = wave[:, : total - offset]
        mix[:, offset:offset + seg.shape[1]] += seg
    peak = float(mix.abs().max()) if total else 0.0
    if peak > PEAK_CEILING:
        mix *= PEAK_CEILING / peak
    return mix, rate

