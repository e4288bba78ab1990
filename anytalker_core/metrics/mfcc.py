"""MFCC exactly as ``python_speech_features.mfcc`` with its defaults (the SyncNet audio front end):
25 ms rectangular window, 10 ms step, pre-emphasis 0.97, 512-point FFT, 26 mel filters 0-8 kHz, 13
ortho-DCT cepstra, lifter 22, c0 replaced by the log frame energy; numpy only."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..errors import InputError

__all__ = ["mfcc", "to_int16_scale"]


def _hz_to_mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def _mel_to_hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def _mel_filterbank(nfilt: int, nfft: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Triangular filters on FFT bins ``floor((nfft + 1) * hz / sr)`` (python_speech_features layout)."""
    mels = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mels) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    return bank


def _dct_ortho(x: np.ndarray) -> np.ndarray:
    """DCT-II with orthonormal scaling along the last axis (``scipy.fftpack.dct(norm='ortho')``)."""
    n = x.shape[-1]
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    scale = np.full((n, 1), math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return x @ (basis * scale).T


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE, winlen: float = 0.025,
         winstep: float = 0.01, numcep: int = 13, nfilt: int = 26, nfft: int = 512, preemph: float = 0.97,
         ceplifter: int = 22) -> np.ndarray:
    """MFCCs as ``python_speech_features.mfcc`` computes them with its defaults.

    Args:
        signal: ``[S]`` mono samples (on the int16 scale for SyncNet, as ``scipy.io.wavfile`` returns them).
    Returns:
        ``float64 [N, numcep]`` with ``N = 1 + ceil((S - win) / step)`` frames (the tail zero-padded).
    """
    signal = np.asarray(signal, dtype=np.float64).reshape(-1)
    if signal.size == 0:
        raise InputError("mfcc: the audio is empty")
    signal = np.append(signal[0], signal[1:] - preemph * signal[:-1])
    frame_len = int(math.floor(winlen * sample_rate + 0.5))
    frame_step = int(math.floor(winstep * sample_rate + 0.5))
    n = signal.size
    num_frames = 1 if n <= frame_len else 1 + int(math.ceil((n - frame_len) / frame_step))
    pad = (num_frames - 1) * frame_step + frame_len
    padded = np.concatenate([signal, np.zeros(pad - n)])
    idx = np.arange(frame_len)[None, :] + frame_step * np.arange(num_frames)[:, None]
    frames = padded[idx]  # rectangular window
    power = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = power @ _mel_filterbank(nfilt, nfft, sample_rate, 0, sample_rate / 2).T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    ceps = _dct_ortho(np.log(feat))[:, :numcep]
    if ceplifter > 0:
        lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
        ceps = ceps * lift
    ceps[:, 0] = np.log(energy)
    return ceps


def to_int16_scale(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float audio in -1..1 -> the int16 sample values SyncNet's MFCCs were trained on (float64)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().float().numpy()
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    return np.clip(np.round(wave * 32768.0), -32768, 32767)
