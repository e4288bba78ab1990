"""Audio inputs: wav2vec2 features (``wav2vec``), multi-speaker timelines (``timeline``), test speech
(``speech``). transformers is imported only when a model is loaded or built."""

from __future__ import annotations

from .timeline import AudioConditioning, build_audio_conditioning, frame_num_from_audio
from .wav2vec import Wav2VecEncoder, load_wav2vec, make_tiny_wav2vec

__all__ = [
    "AudioConditioning",
    "Wav2VecEncoder",
    "build_audio_conditioning",
    "frame_num_from_audio",
    "load_wav2vec",
    "make_tiny_wav2vec",
]
