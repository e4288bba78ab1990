"""Per-identity conditioning: what binds one voice to one face."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Speaker:
    """One identity (person) as the DiT consumes it; identity i is the i-th face from the left.

    audio:      ``[B, T_video, W, L, C]`` windowed wav2vec2 features, one row per video frame
                (W=5 window, L layers, C channels). All zeros = audio-unconditional.
    face_clip:  ``[B, 257, clip_dim]`` CLIP ViT-H/14 penultimate tokens of this person's face crop.
    token_mask: ``[B, F_lat, lat_h/2, lat_w/2]`` soft mask in [0, 1] on the DiT token grid; the
                identity's AFCA output is multiplied by it.
    """

    audio: torch.Tensor
    face_clip: torch.Tensor
    token_mask: torch.Tensor

    def with_audio(self, audio: torch.Tensor) -> "Speaker":
        return Speaker(audio=audio, face_clip=self.face_clip, token_mask=self.token_mask)

    def without_audio(self) -> "Speaker":
        """The audio-unconditional twin (zero wav2vec2 features, as the reference's CFG uses)."""
        return self.with_audio(torch.zeros_like(self.audio))
