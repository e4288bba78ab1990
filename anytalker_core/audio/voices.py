"""One recording of a conversation → one track per person (the mix gated to each person's turns).

:func:`split_voices` diarises the recording (:mod:`.diarize`) and gates the original audio — its own
sample rate and channels — to each speaker's turns, with short raised-cosine fades so that gating
does not click. Overlapping speech goes to every speaker who speaks in it. Without a separation
model a person's track also holds whatever else sounds during their turns (the other voice in
overlapping speech included); with one (``separate=``, :mod:`.separation`) it is the separated source
matched to that person, gated the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from .diarize import MAX_SPEAKERS, Diarization, DiarizeParams, diarize, intervals_json, order_speakers

if TYPE_CHECKING:
    from .separation import Separator

log = logging.getLogger(__name__)

FADE_S = 0.01

__all__ = ["SplitVoices", "gate", "split_voices", "write_split", "SPEAKER_ORDERS"]

#: ``--speaker-order`` choices (see :func:`.diarize.order_speakers`)
SPEAKER_ORDERS = ("first", "most")


@dataclass
class SplitVoices:
    """The result of :func:`split_voices`.

    Attributes:
        tracks: per speaker ``[C, S]`` float32 at ``sample_rate`` (same shape as the input).
        sample_rate: the input's rate.
        diarization: who speaks when (``turns`` in the same speaker order as ``tracks``).
    """

    tracks: list[np.ndarray]
    sample_rate: int
    diarization: Diarization

    @property
    def intervals(self) -> dict[str, list[list[float]]]:
        """``speaker_duration.json``-style intervals (``left``/``right`` for two people)."""
        return intervals_json(self.diarization.turns)


def gate(num_samples: int, sample_rate: int, spans: Sequence[tuple[float, float]], fade_s: float = FADE_S) -> np.ndarray:
    """``[S]`` float32 gain: 1 inside ``spans`` (seconds), 0 outside, raised-cosine fades of ``fade_s`` outside each span."""
    g = np.zeros(num_samples, dtype=np.float32)
    fade = max(1, int(round(fade_s * sample_rate)))
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(1, fade + 1) / (fade + 1)))).astype(np.float32)
    for s, e in spans:
        a, b = max(0, int(round(s * sample_rate))), min(num_samples, int(round(e * sample_rate)))
        if b <= a:
            continue
        g[a:b] = 1.0
        lo = max(0, a - fade)
        g[lo:a] = np.maximum(g[lo:a], ramp[fade - (a - lo):])
        hi = min(num_samples, b + fade)
        g[b:hi] = np.maximum(g[b:hi], ramp[::-1][:hi - b])
    return g


def _as_channels(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    x = wave.detach().cpu().float().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"conversation audio: expected [samples] or [channels, samples] with samples, got shape "
                         f"{tuple(x.shape)}")
    return x


def split_voices(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    num_speakers: int | None = None,
    speaker_order: str = "first",
    order: Sequence[int] | None = None,
    max_speakers: int = MAX_SPEAKERS,
    params: DiarizeParams = DiarizeParams(),
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    separate: str | Path | Separator | None = None,
) -> SplitVoices:
    """Split one conversation recording into one track per speaker.

    Args:
        wave: ``[S]`` or ``[C, S]`` at ``sample_rate``.
        num_speakers: how many people talk; ``None`` estimates it.
        speaker_order: ``"first"`` (first to speak = person 1) or ``"most"`` (longest = person 1).
        order: manual override after the rule, e.g. ``[2, 1]`` swaps two people (1-based).
        separate: an Asteroid separation checkpoint (path) or a loaded :class:`.separation.Separator`:
            each track is then the separated source matched to that speaker (mono on every channel).
    Returns:
        :class:`SplitVoices` with ``[C, S]`` tracks at the input's rate.
    """
    from .separation import Separator, load_separator, separate_tracks

    x = _as_channels(wave)
    separator = load_separator(separate) if separate is not None and not isinstance(separate, Separator) \
        else separate  # a bad file fails before the long work
    diar = diarize(x, sample_rate, num_speakers=num_speakers, max_speakers=max_speakers, params=params,
                   progress=progress, should_stop=should_stop)
    diar = order_speakers(diar, speaker_order, order)
    sources = [x] * diar.num_speakers if separator is None else separate_tracks(
        x, sample_rate, diar, separator.separate, should_stop=should_stop)
    tracks = [src * gate(x.shape[1], sample_rate, spans)[None] for src, spans in zip(sources, diar.turns)]
    for i, spans in enumerate(diar.turns):
        log.info("speaker %d: %d turn(s), %.1f s of speech", i + 1, len(spans), diar.speaking_time(i))
    return SplitVoices(tracks=tracks, sample_rate=int(sample_rate), diarization=diar)


def write_split(result: SplitVoices, out_dir: str | Path) -> list[Path]:
    """Write ``speaker1.wav … speakerN.wav`` (16-bit PCM, the input's rate and channels) and
    ``intervals.json`` into ``out_dir`` (created if needed); each file is written atomically."""
    import soundfile as sf

    from ..io.atomic import atomic_path, write_json_atomic

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' is a file; expected a folder for speaker1.wav ... and intervals.json")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, track in enumerate(result.tracks):
        path = out / f"speaker{i + 1}.wav"
        with atomic_path(path) as tmp:
            sf.write(str(tmp), np.clip(track.T, -1.0, 1.0), result.sample_rate, subtype="PCM_16", format="WAV")
        paths.append(path)
    path = out / "intervals.json"
    write_json_atomic(path, result.intervals)
    paths.append(path)
    return paths
