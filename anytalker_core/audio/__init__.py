"""Audio inputs: wav2vec2 features (``wav2vec``), multi-speaker timelines (``timeline``). transformers is
imported only when a model is loaded or built. Test speech and the tiny wav2vec2 live in ``anytalker_core.testing``."""

from __future__ import annotations

from .timeline import AudioConditioning, build_audio_conditioning, frame_num_from_audio
from .wav2vec import Wav2VecEncoder, load_wav2vec

__all__ = [
    "AudioConditioning",
    "Wav2VecEncoder",
    "build_audio_conditioning",
    "frame_num_from_audio",
    "load_wav2vec",
    "make_tiny_wav2vec",
]


def __getattr__(name: str):
    if name == "make_tiny_wav2vec":  # lives with the other tiny test models
        from ..testing.tiny_wav2vec import make_tiny_wav2vec

        return make_tiny_wav2vec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
