"""Tiny random-weight model set and sample inputs for ``anytalker generate --demo`` and the tests.

:func:`build_demo_models` writes one file per component in the *real* formats and in ComfyUI's
``models/`` layout (so the demo also exercises :mod:`.model_paths` and every loader):

====================================================  ==================================================
file                                                  what
====================================================  ==================================================
``diffusion_models/anytalker_demo_tiny.safetensors``  AnyTalker DiT (fused AFCA by default), config inside
``text_encoders/umt5_xxl_tiny.safetensors``           UMT5 encoder with its SentencePiece tokenizer
``clip_vision/clip_vision_h_tiny.safetensors``        CLIP vision tower (257 tokens, like ViT-H/14)
``vae/wan_2.1_vae_tiny.safetensors``                  Wan2.1 VAE (16 latent channels, stride 4x8x8)
``audio_encoders/wav2vec2-base-960h-tiny/``           wav2vec2 (Hugging Face folder)
====================================================  ==================================================

The DiT's input widths are the tiny encoders' output widths (``text_dim`` = T5 width, ``clip_dim`` =
CLIP width, ``audio_layers``/``audio_channels`` = wav2vec2 layers/width). Everything is random:
the video it produces is noise. It proves that every stage runs and connects, nothing more.

:func:`demo_inputs` makes the inputs: scikit-image's astronaut photo repeated side by side (one
copy per person) and one espeak-ng sentence per person.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, MissingModelError

log = logging.getLogger(__name__)

__all__ = ["DEMO_BANNER", "DemoWidths", "DemoInputs", "build_demo_models", "make_demo_dit", "demo_image",
           "demo_inputs",
           "DEMO_SENTENCES", "DEMO_PROMPT"]

DEMO_BANNER = "demo mode: random weights, the output is noise"

DEMO_PROMPT = "Two astronauts talk to each other in front of an American flag, realistic video."

DEMO_SENTENCES = (
    ("Hello, can you hear me from up here?", "en-us"),
    ("Yes, loud and clear, the view is amazing.", "en-gb"),
    ("Wait for me, I am coming too.", "en-us+f3"),
    ("Mission control, we are ready.", "en-gb+m3"),
)


@dataclass(frozen=True)
class DemoWidths:
    """Sizes of the tiny models (the DiT's input widths follow the encoders')."""

    text_dim: int = 32
    clip_dim: int = 32
    audio_layers: int = 2
    audio_channels: int = 64
    dit_dim: int = 32
    dit_layers: int = 2
    afca: str = "fused"  # "legacy" for a 14B-style DiT
    seed: int = 0


@dataclass
class DemoInputs:
    """The demo's image (uint8 ``[H, W, 3]``), one speech file per person, and the prompt."""

    image: np.ndarray
    audio: list[Path]
    prompt: str


def make_demo_dit(path: str | Path, widths: DemoWidths = DemoWidths()) -> Path:
    """A random DiT sized for the demo encoders, every parameter perturbed (no dead branch), saved as
    safetensors with its config in the metadata."""
    from ..model.checkpoint import save_dit
    from ..model.config import AnyTalkerConfig
    from ..model.dit import AnyTalkerDiT

    config = AnyTalkerConfig.tiny(afca=widths.afca, dim=widths.dit_dim, num_layers=widths.dit_layers,
                                  text_dim=widths.text_dim, clip_dim=widths.clip_dim,
                                  audio_layers=widths.audio_layers, audio_channels=widths.audio_channels)
    with torch.random.fork_rng():
        torch.manual_seed(widths.seed)
        model = AnyTalkerDiT(config)
        gen = torch.Generator().manual_seed(widths.seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return save_dit(model, path)


def build_demo_models(directory: str | Path, widths: DemoWidths = DemoWidths()):
    """Write the tiny model set under ``directory`` (ComfyUI ``models/`` layout) and return its
    :class:`~.model_paths.ModelPaths` (found by the same search users' files go through)."""
    from .tiny_wav2vec import make_tiny_wav2vec
    from ..encoders import make_tiny_clip_vision, make_tiny_text_encoder, make_tiny_vae
    from ..io.model_paths import resolve_model_paths

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    make_demo_dit(root / "diffusion_models" / "anytalker_demo_tiny.safetensors", widths)
    make_tiny_text_encoder(root / "text_encoders", d_model=widths.text_dim, seed=widths.seed)
    make_tiny_clip_vision(root / "clip_vision" / "clip_vision_h_tiny.safetensors", hidden_size=widths.clip_dim,
                          seed=widths.seed)
    make_tiny_vae(root / "vae" / "wan_2.1_vae_tiny.safetensors", seed=widths.seed)
    make_tiny_wav2vec(root / "audio_encoders" / "wav2vec2-base-960h-tiny", hidden_size=widths.audio_channels,
                      num_layers=widths.audio_layers, seed=widths.seed)
    log.info("demo: wrote tiny random models to %s", root)
    return resolve_model_paths(root)


def demo_image(num_people: int = 2, size: int = 256) -> np.ndarray:
    """scikit-image's astronaut (a real photo, one face) resized to ``size`` and repeated side by side."""
    from PIL import Image

    try:
        from skimage.data import astronaut
    except ImportError:
        raise MissingModelError("the demo image comes from scikit-image: pip install scikit-image") from None
    if not 1 <= num_people <= len(DEMO_SENTENCES):
        raise InputError(f"the demo has 1 to {len(DEMO_SENTENCES)} people, got {num_people} (one per --audio)")
    face = np.asarray(Image.fromarray(astronaut()).resize((size, size), Image.BICUBIC))
    return np.concatenate([face] * num_people, axis=1)


def demo_inputs(directory: str | Path, num_people: int = 2) -> DemoInputs:
    """Write one espeak-ng sentence per person under ``directory`` and build the demo image."""
    from .speech import espeak_available, synthesize_speech

    if not espeak_available():
        raise MissingModelError(
            "the demo speaks its sentences with espeak-ng, which is not installed "
            "(apt-get install espeak-ng / brew install espeak-ng); or pass your own --audio files"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    audio = []
    for i in range(num_people):
        text, voice = DEMO_SENTENCES[i]
        path = directory / f"person{i + 1}.wav"
        synthesize_speech(text, path, voice=voice)
        audio.append(path)
    return DemoInputs(image=demo_image(num_people), audio=audio, prompt=DEMO_PROMPT)
