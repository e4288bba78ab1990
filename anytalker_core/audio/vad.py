"""Voice-activity detection with Silero VAD: where a waveform contains speech.

The model is the TorchScript file that the ``silero-vad`` wheel ships (``silero_vad/data/silero_vad.jit``,
MIT licence), so nothing is downloaded. It is located without importing the ``silero_vad`` package,
whose import sets ``torch.set_num_threads(1)`` for the whole process, and it needs neither torchaudio
nor onnxruntime. The model scores 32 ms windows (512 samples at 16 kHz) with a speech probability;
:func:`speech_intervals` turns those into ``(start, end)`` seconds with Silero's own
``get_speech_timestamps_from_probs`` (threshold, a lower release threshold, minimum speech and
silence durations, padding).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..errors import InputError, MissingModelError

log = logging.getLogger(__name__)

WINDOW = 512  # samples per probability at 16 kHz (32 ms)
HOP_S = WINDOW / SAMPLE_RATE

@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside (Silero's advice: its 32 ms steps are too small to share out;
    on a busy CPU, idle worker threads spinning cost several times the work itself)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


__all__ = ["SileroVAD", "VADParams", "load_vad", "speech_intervals", "intervals_from_probabilities"]


@dataclass(frozen=True)
class VADParams:
    """Rules that turn per-window speech probabilities into intervals (Silero's defaults).

    Attributes:
        threshold: a window with probability ≥ this starts (or continues) speech.
        release: speech ends only below this (``threshold - 0.15`` as in Silero).
        min_speech_s: shorter speech runs are dropped.
        min_silence_s: shorter pauses inside speech are bridged.
        pad_s: each interval is widened by this much on both sides (clipped to the audio and
            to the neighbours).
    """

    threshold: float = 0.5
    release: float = 0.35
    min_speech_s: float = 0.25
    min_silence_s: float = 0.1
    pad_s: float = 0.03


def _packaged_model() -> Path:
    from ..io.model_paths import packaged_file

    return packaged_file(
        "silero_vad", "data/silero_vad.jit",
        "voice-activity detection needs the silero-vad package (its model ships in the wheel): pip install silero-vad",
        "the silero-vad package has no model file at '{path}'; reinstall it (pip install --force-reinstall silero-vad)")


class SileroVAD:
    """A loaded Silero VAD (TorchScript). Call :meth:`probabilities` with 16 kHz mono audio."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else _packaged_model()
        if not self.path.is_file():
            raise MissingModelError(f"Silero VAD model '{self.path}' does not exist")
        try:
            self.model = torch.jit.load(str(self.path), map_location="cpu").eval()
        except RuntimeError as exc:
            raise MissingModelError(f"Silero VAD model '{self.path}' could not be loaded ({exc})") from None
        self._lock = threading.Lock()  # the model keeps a recurrent state between calls

    def probabilities(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        """Speech probability of each 32 ms window of ``wave`` (``[S]`` float, 16 kHz) → ``[ceil(S/512)]``."""
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not isinstance(wave, torch.Tensor) else wave)
        x = x.detach().cpu().float().reshape(-1)
        if x.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        with self._lock, torch.inference_mode(), one_thread():
            probs = self.model.audio_forward(x[None], SAMPLE_RATE)
        return probs.reshape(-1).numpy().astype(np.float32)


_CACHE: dict[str, SileroVAD] = {}
_CACHE_LOCK = threading.Lock()


def load_vad(path: str | Path | None = None) -> SileroVAD:
    """The Silero VAD from the installed ``silero-vad`` wheel (or ``path``), loaded once per process."""
    key = str(path) if path is not None else ""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = SileroVAD(path)
            log.debug("loaded Silero VAD from %s", _CACHE[key].path)
        return _CACHE[key]


def _silero_postprocess():
    """``silero_vad.get_speech_timestamps_from_probs``; the package's import sets torch to one thread, undone here."""
    threads = torch.get_num_threads()
    try:
        from silero_vad.utils_vad import get_speech_timestamps_from_probs
    except ImportError:
        raise MissingModelError("voice-activity detection needs the silero-vad package (>= 6.2): "
                                "pip install -U silero-vad") from None
    finally:
        torch.set_num_threads(threads)
    return get_speech_timestamps_from_probs


def intervals_from_probabilities(probs: np.ndarray, duration_s: float,
                                 params: VADParams = VADParams()) -> list[tuple[float, float]]:
    """Per-window probabilities (``HOP_S`` apart) → speech ``(start, end)`` seconds, by Silero's own rules."""
    spans = _silero_postprocess()(
        [float(p) for p in probs], sampling_rate=SAMPLE_RATE, threshold=params.threshold,
        neg_threshold=params.release, min_speech_duration_ms=int(round(params.min_speech_s * 1000)),
        min_silence_duration_ms=int(round(params.min_silence_s * 1000)), speech_pad_ms=int(round(params.pad_s * 1000)),
        audio_length_samples=int(round(duration_s * SAMPLE_RATE)))
    return [(t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in spans]


def speech_intervals(wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE, offset_s: float = 0.0,
                     vad: SileroVAD | None = None, params: VADParams = VADParams()) -> list[tuple[float, float]]:
    """Where ``wave`` (``[S]`` mono at ``sample_rate``) contains speech, as ``(start, end)`` seconds.

    ``offset_s`` shifts the result (e.g. onto a video timeline). Resamples to 16 kHz when needed.
    """
    from ..io.media import resample

    x = wave.detach().cpu().float().reshape(-1) if isinstance(wave, torch.Tensor) else torch.as_tensor(
        np.asarray(wave, dtype=np.float32).reshape(-1))
    if not torch.isfinite(x).all():
        raise InputError("speech detection: the audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE and x.numel():
        x = resample(x, sample_rate, SAMPLE_RATE)
    vad = vad if vad is not None else load_vad()
    probs = vad.probabilities(x)
    spans = intervals_from_probabilities(probs, x.numel() / SAMPLE_RATE, params)
    return [(offset_s + s, offset_s + e) for s, e in spans]
