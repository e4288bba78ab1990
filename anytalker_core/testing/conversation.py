"""A synthetic conversation of any length: people take turns with espeak-ng sentences (long-clip tests and
benchmarks)."""

from __future__ import annotations

import torch

from ..constants import SAMPLE_RATE
from .demo import DEMO_SENTENCES
from .speech import synthesize_speech

__all__ = ["synthesize_conversation"]


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
