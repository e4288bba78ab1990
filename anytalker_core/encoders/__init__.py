"""The three frozen Wan2.1 encoders for the standalone path (inside ComfyUI its native nodes do this work).

* :mod:`.text` -- UMT5-XXL: :func:`load_text_encoder` -> :class:`TextEncoder` (``.encode(prompts)``, ``.dim``).
* :mod:`.clip_vision` -- CLIP ViT-H/14: :func:`load_clip_vision` -> :class:`ClipVisionEncoder`
  (``.encode(images)``, ``.hidden_size``, ``.num_tokens``).
* :mod:`.vae` -- Wan2.1 VAE: :func:`load_vae` -> :class:`WanVAE` (``.encode``/``.decode``),
  :func:`encode_first_frame_condition`.

Each loader reads ComfyUI's repackaged single files (and Wan's original ``.pth`` files), maps their key names to
transformers/diffusers modules and infers sizes from tensor shapes; ``make_tiny_*`` writes tiny random models in
the same layouts for tests and demos. transformers/diffusers are imported only when a loader runs.
"""

from __future__ import annotations

from .clip_vision import ClipVisionEncoder, load_clip_vision, make_tiny_clip_vision
from .text import TextEncoder, load_text_encoder, make_tiny_text_encoder
from .vae import WanVAE, encode_first_frame_condition, load_vae, make_tiny_vae

__all__ = [
    "ClipVisionEncoder",
    "TextEncoder",
    "WanVAE",
    "encode_first_frame_condition",
    "load_clip_vision",
    "load_text_encoder",
    "load_vae",
    "make_tiny_clip_vision",
    "make_tiny_text_encoder",
    "make_tiny_vae",
]
