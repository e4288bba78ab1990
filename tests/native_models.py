"""Stand-ins for ComfyUI's native model objects, with ComfyUI's call surface, backed by anytalker_core's
tiny real-format models (built by ``anytalker_core.testing.demo.build_demo_models``).

Not part of tests/comfy_stub (which never imports this project): these objects are this project's own
encoders dressed as ComfyUI's, so the stub-based node tests check the nodes' plumbing, not ComfyUI's
numbers. The real-ComfyUI suite (tests/test_comfyui_values.py) compares the node graph, with ComfyUI's
own text encoder, CLIP vision and VAE, against ``AnyTalkerPipeline``.

* :class:`NativeVAE` — ``comfy.sd.VAE`` for a Wan2.1 VAE: ``encode(IMAGE frames [T, H, W, 3] 0..1)`` →
  raw latent ``[1, 16, F, h, w]``; ``decode(raw latent)`` → ``[1, T, H, W, 3]`` 0..1; ``latent_channels``.
* :class:`NativeClipVision` — ``comfy.clip_vision.ClipVisionModel``: ``model(pixel_values=...,
  intermediate_output=-2)`` → ``(last, penultimate, ...)``; ``patcher``, ``load_device``, ``image_size``.
* :func:`text_conditioning` — what CLIP Text Encode returns for Wan: ``[[embeds [1, 512, D], {}]]``,
  the prompt's tokens followed by zeros (ComfyUI pads UMT5 to 512 tokens and zeroes the padding).
* :func:`vae_decode_node` — ComfyUI's VAE Decode node (5-D video output flattened to frames).
"""

from __future__ import annotations

import torch
from comfy.latent_formats import Wan21


class NativeVAE:
    latent_channels = 16

    def __init__(self, path) -> None:
        from anytalker_core.encoders import load_vae

        self.inner = load_vae(path)
        self.format = Wan21()

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        video = pixel_samples[..., :3].movedim(-1, 0).unsqueeze(0) * 2.0 - 1.0  # [1, 3, T, H, W]
        return self.format.process_out(self.inner.encode(video))

    def decode(self, samples_in: torch.Tensor) -> torch.Tensor:
        video = self.inner.decode(self.format.process_in(samples_in.float()))  # [1, 3, T, H, W] -1..1
        return video.add(1.0).div(2.0).clamp(0.0, 1.0).movedim(1, -1)


class NativeClipVision:
    def __init__(self, path) -> None:
        from anytalker_core.encoders import load_clip_vision

        self.inner = load_clip_vision(path)
        self.image_size = int(getattr(self.inner, "image_size", 224))
        self.load_device = torch.device("cpu")
        self.patcher = object()

    def model(self, pixel_values: torch.Tensor, intermediate_output=None):
        assert intermediate_output == -2, intermediate_output
        # anytalker_core's tower stops before the last block: its last state is the penultimate one
        hidden = self.inner.model(pixel_values=pixel_values.to(self.inner.dtype)).last_hidden_state.float()
        return hidden, hidden, None, None


def text_conditioning(text_encoder_path, prompt: str, length: int = 512) -> list:
    from anytalker_core.encoders import load_text_encoder

    embeds = load_text_encoder(text_encoder_path).encode([prompt])[0]  # [L, D]
    embeds = embeds.reshape(-1, embeds.shape[-1])
    padded = torch.zeros(1, max(length, embeds.shape[0]), embeds.shape[-1])
    padded[0, : embeds.shape[0]] = embeds
    return [[padded, {"pooled_output": None}]]


def vae_decode_node(vae: NativeVAE, samples: dict) -> torch.Tensor:
    images = vae.decode(samples["samples"])
    return images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
