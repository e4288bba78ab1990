"""Stand-in of ``comfy.latent_formats.Wan21`` (the Wan2.1 VAE's per-channel mean/std, scale 1)."""

from __future__ import annotations

import torch

from anytalker_core.encoders.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD


class Wan21:
    latent_channels = 16
    latent_dimensions = 3

    def __init__(self):
        self.scale_factor = 1.0
        self.latents_mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
        self.latents_std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)

    def process_in(self, latent):
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent):
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return latent * std / self.scale_factor + mean
