"""Multi-speaker audio conditioning: one wav2vec2 feature track per identity on one video timeline.

Two modes, as in the reference (``wan/utils/infer_utils.py::process_audio_features``):

* ``pad`` — everybody's audio starts at frame 0 (overlapping speech, listeners with their own
  silence). ``F`` = the largest ``4n+1`` ≤ ``ceil(longest duration · fps)``. Each track is encoded
  the reference's way: if its frame count ``T`` is not a multiple of ``F``, the *normalised*
  waveform gets ``(F - T % F) · (16000 // fps)`` zero samples appended and ``T`` is rounded up to
  the next multiple of ``F``; features (window included) are computed at that length and the first
  ``F`` frames kept. This reproduces the reference bit for bit (its quirk: a track a few frames
  longer than ``F`` is encoded at ``2F`` frames, which changes every value slightly).
* ``concat`` — speakers take turns: track ``k`` starts at frame ``Σ_{j<k} T_j``; each track is
  encoded alone and is zero outside its turn (zero = the audio-unconditional input).
  ``F`` = the largest ``4n+1`` ≤ ``ceil(total duration · fps)``.

The result also carries the mixed waveform to mux into the output video and, per track, the
interval of the timeline it occupies and the intervals where it is actually speaking (Silero VAD,
:mod:`.vad`), in seconds — the speaking intervals the Interactivity and Sync-C* metrics need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from ..constants import FPS
from ..errors import InputError, Interrupted
from ..input_names import name as input_name
from ..io.media import check_sample_rate, load_audio, resample
from . import loudness
from .vad import VADParams, speech_intervals
from .wav2vec import SAMPLE_RATE, Wav2VecEncoder, video_frames_for_samples
from .windowed import WINDOW_RADIUS, WindowedFeatures

log = logging.getLogger(__name__)

Mode = Literal["pad", "concat"]
MIN_FRAMES = 5  # the smallest 4n+1 clip with motion (n = 1)
SILENCE_PEAK = 1e-4  # -80 dBFS: a track whose peak stays below this is treated as silent
PEAK_CEILING = 0.99
#: speaking intervals: Silero's rules, but pauses under 0.3 s do not end a person's speech
SPEAKING = VADParams(min_silence_s=0.3)

__all__ = [
    "AudioConditioning",
    "build_audio_conditioning",
    "frame_num_from_audio",
    "largest_4n1",
    "check_frame_num",
    "voiced_intervals",
]


@dataclass
class AudioConditioning:
    """Audio inputs for one generation.

    Attributes:
        windowed: the windowed wav2vec2 features ``[N, F, 5, L, C]`` (identity order = track order), stored
            once per frame (:class:`~.windowed.WindowedFeatures`, CPU); :attr:`features` is the dense stack.
        frame_num: ``F`` video frames (``4n+1``).
        mixed: ``[S]`` float32 16 kHz mono, the audio of the output video (exactly ``F / fps`` s).
        fps: video frame rate.
        mode: ``"pad"`` or ``"concat"``.
        sample_rate: rate of ``mixed`` (16000).
        track_frames: ``T_i`` — frames each track covers alone (``ceil(S_i / 16000 · fps)``).
        turns: per track ``(start, end)`` seconds of the video timeline its audio occupies.
        speaking: per track, speaking ``(start, end)`` intervals in seconds (Silero VAD, within
            its turn and the video); empty for a silent track (that person only listens).
        gains: per track, the linear gain applied before encoding (loudness normalisation; 1 when
            off) — the same gain :func:`.mix.mix_on_timeline` gives the original-rate mix.
    """

    windowed: WindowedFeatures
    frame_num: int
    mixed: torch.Tensor
    fps: float
    mode: str
    sample_rate: int = SAMPLE_RATE
    track_frames: list[int] = field(default_factory=list)
    turns: list[tuple[float, float]] = field(default_factory=list)
    speaking: list[list[tuple[float, float]]] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)

    @property
    def features(self) -> torch.Tensor:
        """The dense windowed features ``[N, F, 5, L, C]`` float32 (built on each access; long clips take
        ``windowed.span(start, end)`` per window instead)."""
        return self.windowed.dense()

    @property
    def num_tracks(self) -> int:
        return self.windowed.num_tracks

    @property
    def duration(self) -> float:
        """Video duration in seconds."""
        return self.frame_num / self.fps


# ----------------------------------------------------------------------------- frame counts


def largest_4n1(frames: int) -> int:
    """Largest ``4n+1`` ≤ ``frames`` (``frames`` ≥ 1)."""
    return (int(frames) - 1) // 4 * 4 + 1


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not np.isfinite(fps) \
            or fps <= 0 or fps > SAMPLE_RATE:
        raise InputError(f"fps must be a positive number (frames per second, e.g. 24), got {fps!r}")
    return float(fps)


def frame_num_from_audio(num_samples: Sequence[int], fps: float, mode: Mode,
                         sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames (``4n+1``) for tracks of ``num_samples`` samples, as the reference computes them.

    ``pad``: from ``ceil(longest duration · fps)``; ``concat``: from ``ceil(total duration · fps)``.
    """
    if mode not in ("pad", "concat"):
        raise InputError(f"mode must be 'pad' or 'concat', got {mode!r}")
    if not num_samples:
        raise InputError("no audio tracks given (need one per person)")
    fps = _check_fps(fps)
    durations = [n / sample_rate for n in num_samples]
    total = max(durations) if mode == "pad" else sum(durations)
    frames = int(np.ceil(total * fps))
    if frames < MIN_FRAMES:
        raise InputError(
            f"audio too short: {total:.3f} s gives {frames} video frames at {fps} fps; "
            f"need at least {MIN_FRAMES} frames ({MIN_FRAMES / fps:.3f} s)"
        )
    return largest_4n1(frames)


def check_frame_num(frame_num: int, available: int, mode: str, fps: float) -> int:
    """Validate a user-given frame count: ``4n+1``, ≥ 5, and not longer than the audio allows."""
    if isinstance(frame_num, bool) or not isinstance(frame_num, (int, np.integer)):
        raise InputError(f"{input_name('frame_num')} must be an integer of the form 4n+1 (5, 9, ..., 81), "
                         f"got {frame_num!r}")
    frame_num = int(frame_num)
    if frame_num < MIN_FRAMES or (frame_num - 1) % 4:
        lower = max(MIN_FRAMES, largest_4n1(max(frame_num, 1)))
        raise InputError(
            f"{input_name('frame_num')} must be of the form 4n+1 and at least {MIN_FRAMES} "
            f"(e.g. {lower} or {lower + 4}), got {frame_num}"
        )
    if frame_num > available:
        what = "the longest track" if mode == "pad" else "all tracks one after another"
        raise InputError(
            f"{input_name('frame_num')} {frame_num} exceeds the audio: {what} covers at most {available} frames (4n+1) "
            f"at {fps:g} fps; use {input_name('frame_num')} <= {available} or longer audio"
        )
    return frame_num


def check_timeline(tracks: Sequence[torch.Tensor | np.ndarray | str | Path], mode: str, fps: float,
                   frame_num: int | None = None, sample_rate: int = SAMPLE_RATE) -> int:
    """The checks :func:`build_audio_conditioning` makes before encoding, without an encoder: every track
    usable, ``mode`` known, ``frame_num`` valid for the audio. Returns the clip's frame count (``4n+1``)."""
    if mode not in ("pad", "concat"):
        raise InputError(
            f"mode must be 'pad' (people talk at the same time) or 'concat' (they take turns), got {mode!r}")
    fps = _check_fps(fps)
    waves = _prepare_tracks(tracks, check_sample_rate(sample_rate), fps)
    available = frame_num_from_audio([w.numel() for w in waves], fps, mode)
    return available if frame_num is None else check_frame_num(frame_num, available, mode, fps)


# ----------------------------------------------------------------------------- speaking intervals


def voiced_intervals(wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE,
                     offset_s: float = 0.0) -> list[tuple[float, float]]:
    """Where a track is speaking, as ``(start, end)`` seconds shifted by ``offset_s``: Silero VAD
    (:mod:`.vad`), pauses shorter than 0.3 s bridged (a person pausing mid-sentence is still the speaker)."""
    return speech_intervals(wave, sample_rate, offset_s=offset_s, params=SPEAKING)


def _clip_intervals(intervals: list[tuple[float, float]], end: float) -> list[tuple[float, float]]:
    return [(s, min(e, end)) for s, e in intervals if s < end]


# ----------------------------------------------------------------------------- assembly


def _prepare_tracks(tracks: Sequence[torch.Tensor | np.ndarray | str | Path], sample_rate: int,
                    fps: float) -> list[torch.Tensor]:
    """Load/resample every track to 16 kHz float32 ``[S]`` and check it is usable."""
    if isinstance(tracks, (torch.Tensor, np.ndarray, str, Path)):
        raise InputError("tracks must be a list with one audio per person (got a single track, wrap it in a list)")
    if len(tracks) == 0:
        raise InputError("no audio tracks given (need one per person)")
    out = []
    for i, track in enumerate(tracks):
        name = input_name("audio_n", i + 1)
        if isinstance(track, (str, Path)):
            name = f"{name} ('{track}')"
            wave = load_audio(track, SAMPLE_RATE)
        else:
            wave = track.detach().cpu().float() if isinstance(track, torch.Tensor) else torch.as_tensor(
                np.asarray(track, dtype=np.float32))
            if wave.ndim == 2 and 1 in wave.shape:
                wave = wave.reshape(-1)
            if wave.ndim != 1:
                raise InputError(f"{name}: expected a mono waveform [S], got shape {tuple(wave.shape)}")
            if sample_rate != SAMPLE_RATE and wave.numel():
                wave = resample(wave, sample_rate, SAMPLE_RATE)
        if wave.numel() == 0:
            raise InputError(f"{name} is empty (0 samples)")
        if not torch.isfinite(wave).all():
            raise InputError(f"{name} contains NaN or infinite samples")
        peak = float(wave.abs().max())
        if peak < SILENCE_PEAK:
            log.info("%s is silent (peak %.1e): person %d only listens", name, peak, i + 1)
        frames = video_frames_for_samples(wave.numel(), fps)
        if frames < MIN_FRAMES:
            raise InputError(
                f"{name} is too short: {wave.numel() / SAMPLE_RATE:.3f} s is {frames} video frames at {fps} fps, "
                f"need at least {MIN_FRAMES} ({MIN_FRAMES / fps:.3f} s)"
            )
        out.append(wave)
    if all(float(w.abs().max()) < SILENCE_PEAK for w in out):
        raise InputError(
            f"every audio track is silent (peak below {SILENCE_PEAK:g}): at least one person must speak; a silent "
            "track means that person only listens")
    return out


def _encode_pad(encoder: Wav2VecEncoder, wave: torch.Tensor, frame_num: int, fps: float) -> torch.Tensor:
    """The reference's pad-mode encoding of one track → per-frame hidden states ``[min(T, F + 2), L, C]``
    (CPU): the clip's ``F`` frames and the two after them that the last frames' windows read."""
    values = encoder.normalize(wave)
    frames = video_frames_for_samples(values.numel(), fps)
    if frames % frame_num:
        extra = frame_num - frames % frame_num
        values = torch.cat([values, values.new_zeros(extra * int(SAMPLE_RATE // fps))])
        frames += extra
    return encoder.encode(values, frames, keep=frame_num + WINDOW_RADIUS).cpu()


def build_audio_conditioning(
    tracks: Sequence[torch.Tensor | np.ndarray | str | Path],
    mode: Mode = "pad",
    fps: float = FPS,
    encoder: Wav2VecEncoder | None = None,
    frame_num: int | None = None,
    normalize_loudness: bool | float = False,
    sample_rate: int = SAMPLE_RATE,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AudioConditioning:
    """Encode one audio track per identity and lay them out on the video timeline.

    Args:
        tracks: one per identity (left to right): ``[S]`` waveforms at ``sample_rate`` (tensor or
            numpy) or audio file paths (any format; decoded to 16 kHz mono).
        mode: ``"pad"`` (simultaneous, start together) or ``"concat"`` (turn-taking, in order).
        fps: video frame rate (reference: 24).
        encoder: a loaded :class:`Wav2VecEncoder` (:func:`load_wav2vec`).
        frame_num: video frames; ``None`` derives the largest ``4n+1`` from the audio; a given value
            must be ``4n+1``, ≥ 5 and no longer than the audio.
        normalize_loudness: ``False`` (default, as the reference); ``True`` scales every track to
            -23 LUFS (BS.1770-4 integrated loudness, :mod:`.loudness`); a float is the target in LUFS.
            Peaks stay ≤ 0.99. Affects features and the mix.
        sample_rate: rate of waveform tracks (resampled to 16 kHz); ignored for paths.
        progress: called ``(done, total)`` after each track; should_stop: return True to cancel.
    Returns:
        :class:`AudioConditioning` with features ``[N, F, 5, L, C]`` float32.
    """
    if encoder is None:
        raise InputError("build_audio_conditioning needs a wav2vec2 encoder (load one with load_wav2vec)")
    if mode not in ("pad", "concat"):
        raise InputError(
            f"mode must be 'pad' (people talk at the same time) or 'concat' (they take turns), got {mode!r}")
    fps = _check_fps(fps)
    sample_rate = check_sample_rate(sample_rate)
    waves = _prepare_tracks(tracks, sample_rate, fps)
    if normalize_loudness is not False and normalize_loudness is not None:
        target = loudness.DEFAULT_TARGET_LUFS if normalize_loudness is True else float(normalize_loudness)
        if not -60.0 <= target <= 0.0:
            raise InputError(f"normalize_loudness target must be between -60 and 0 LUFS, got {target}")
        normalized = [loudness.normalize_loudness(w, SAMPLE_RATE, target, PEAK_CEILING) for w in waves]
        gains = [float(nw.abs().max() / w.abs().max()) if float(w.abs().max()) > 0 else 1.0
                 for w, nw in zip(waves, normalized)]
        waves = normalized
    else:
        gains = [1.0] * len(waves)

    available = frame_num_from_audio([w.numel() for w in waves], fps, mode)
    frame_num = available if frame_num is None else check_frame_num(frame_num, available, mode, fps)
    track_frames = [video_frames_for_samples(w.numel(), fps) for w in waves]
    n = len(waves)

    segments: list[list[tuple[int, torch.Tensor, int]]] = []  # per track: (timeline start, hidden, frames)
    starts: list[int] = []
    cursor = 0
    for i, wave in enumerate(waves):
        if should_stop is not None and should_stop():
            raise Interrupted("audio feature extraction cancelled")
        if mode == "pad":
            segments.append([(0, _encode_pad(encoder, wave, frame_num, fps), frame_num)])
            starts.append(0)
        else:
            starts.append(cursor)
            if cursor < frame_num:
                keep = min(track_frames[i], frame_num - cursor)
                hidden = encoder.encode(encoder.normalize(wave), track_frames[i], keep=keep + WINDOW_RADIUS)
                segments.append([(cursor, hidden.cpu(), keep)])  # zero outside its turn
            else:
                log.warning("audio track %d starts after the last video frame (%d) and is cut off entirely",
                            i, frame_num)
                segments.append([])
            cursor += track_frames[i]
        if progress is not None:
            progress(i + 1, n)

    duration = frame_num / fps
    total = int(round(duration * SAMPLE_RATE))
    mixed = torch.zeros(total, dtype=torch.float32)
    turns: list[tuple[float, float]] = []
    speaking: list[list[tuple[float, float]]] = []
    for wave, start, frames in zip(waves, starts, track_frames):
        offset = int(round(start / fps * SAMPLE_RATE))
        if offset < total:
            seg = wave[: total - offset]
            mixed[offset:offset + seg.numel()] += seg
        t0 = start / fps
        turns.append((min(t0, duration), min(t0 + wave.numel() / SAMPLE_RATE, duration)))
        speaking.append(_clip_intervals(voiced_intervals(wave, offset_s=t0), duration))
    peak = float(mixed.abs().max()) if total else 0.0
    if peak > PEAK_CEILING:  # overlapping speech: scale the mix down instead of clipping it
        mixed *= PEAK_CEILING / peak
    log.info("audio conditioning: %d track(s), mode %s, %d frames @ %s fps", n, mode, frame_num, fps)
    return AudioConditioning(
        windowed=WindowedFeatures.on_timeline(segments, frame_num), frame_num=frame_num, mixed=mixed, fps=float(fps), mode=mode,
        track_frames=track_frames, turns=turns, speaking=speaking, gains=gains,
    )
