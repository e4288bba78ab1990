"""How many voices an audio track holds (Silero VAD + GE2E speaker embeddings, the diarisation module).

The paper keeps clips with one or two speakers and separates their voices; here every track a window
uses is checked: a single-person clip's own audio, or each per-speaker track of a multi-person clip.
A track with more voices than it should hold (an off-screen second voice, or another person's voice
leaking into a speaker track) is dropped with ``speaker_count``. The numbers come from
:func:`anytalker_core.audio.diarize.diarize` with rules set for short training windows (its
defaults are tuned for whole conversations: a voice must hold 2 s of speech there); the thresholds
are measured in docs/training.md ("Data filters").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anytalker_core.constants import SAMPLE_RATE
from anytalker_core.errors import InputError

__all__ = ["VoiceCount", "VoiceCounter"]


@dataclass
class VoiceCount:
    """Voices found in one track of one window: ``voices`` (0 = no speech), seconds of speech, and per
    voice its speaking time."""

    voices: int
    speech_s: float
    speaking_s: list[float]


class VoiceCounter:
    """Counts voices with the packaged Silero VAD and GE2E encoder (loaded once, on first use).

    Args:
        new_voice_distance: cosine distance between the mean embeddings of two pieces of speech above
            which they count as two people.
        min_voice_s: a voice with less speech than this is folded into the nearest other one.
        piece_s: speech is cut into pieces of at most this length, each embedded on its own.
        window_s: GE2E window length inside the speech.
    """

    def __init__(self, new_voice_distance: float, min_voice_s: float, piece_s: float = 1.0,
                 window_s: float = 1.0):
        from anytalker_core.audio.diarize import DiarizeParams

        self.params = DiarizeParams(window_s=window_s, piece_s=piece_s, new_voice_distance=new_voice_distance,
                                    min_speaker_s=min_voice_s)
        self._vad = self._encoder = None

    def count(self, wave: torch.Tensor | np.ndarray) -> VoiceCount:
        """Voices in ``[S]`` mono 16 kHz audio."""
        from anytalker_core.audio.diarize import diarize
        from anytalker_core.audio.speakers import load_voice_encoder
        from anytalker_core.audio.vad import load_vad

        if self._vad is None:
            self._vad, self._encoder = load_vad(), load_voice_encoder()
        try:
            found = diarize(wave, SAMPLE_RATE, params=self.params, vad=self._vad, encoder=self._encoder)
        except InputError as exc:
            if "no speech" in str(exc):
                return VoiceCount(0, 0.0, [])
            raise
        speech = float(sum(e - s for s, e in found.speech))
        return VoiceCount(found.num_speakers, speech, [round(found.speaking_time(i), 2)
                                                       for i in range(found.num_speakers)])
