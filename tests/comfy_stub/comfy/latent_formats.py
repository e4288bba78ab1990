"""Stand-in of ``comfy.latent_formats.Wan21`` (the Wan2.1 VAE's per-channel mean/std, scale 1).

The numbers are ComfyUI's own, recorded from ComfyUI 0.29.0 into ``../golden/comfyui.json`` by
``scripts/record_comfy_stub_golden.py`` (the real-ComfyUI suite checks the file against the live one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "comfyui.json").read_text())
_WAN21 = _GOLDEN["latent_formats.Wan21"]


class Wan21:
    latent_channels = _WAN21["latent_channels"]
    latent_dimensions = _WAN21["latent_dimensions"]

    def __init__(self):
        self.scale_factor = _WAN21["scale_factor"]
        self.latents_mean = torch.tensor(_WAN21["latents_mean"]).view(1, self.latent_channels, 1, 1, 1)
        self.latents_std = torch.tensor(_WAN21["latents_std"]).view(1, self.latent_channels, 1, 1, 1)

    def process_in(self, latent):
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent):
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return latent * std / self.scale_factor + mean
