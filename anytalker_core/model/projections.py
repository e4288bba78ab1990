"""Token projections into the DiT width: CLIP image/face tokens and wav2vec2 audio windows."""

from __future__ import annotations

import torch
from torch import nn

from .quantization import linear_compute_dtype


class MLPProj(nn.Sequential):
    """CLIP tokens ``[B, 257, in_dim] -> [B, 257, out_dim]``: LN -> Linear -> GELU(erf) -> Linear -> LN.

    Used as ``img_emb`` (whole first frame) and ``audio_ref_emb`` (face crops). Key names
    ``proj.{0,1,3,4}`` match the released checkpoints.
    """

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.proj = nn.Sequential(nn.LayerNorm(in_dim, **kw), nn.Linear(in_dim, in_dim, **kw), nn.GELU(),
                                  nn.Linear(in_dim, out_dim, **kw), nn.LayerNorm(out_dim, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.to(linear_compute_dtype(self.proj[1])))


class AudioProjection(nn.Module):
    """Fused variant (``audio_emb``): per video frame, ``[W, L, C]`` window -> ``tokens`` tokens of width ``dim``.

    ``[B, T, W, L, C] -> [B, T, tokens, dim]``: proj1 -> ReLU -> proj2 -> ReLU -> proj3 -> LayerNorm.
    The final LayerNorm uses PyTorch's default eps 1e-5, as the reference does.
    """

    def __init__(self, in_features: int, hidden: int, tokens: int, dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.tokens, self.dim = tokens, dim
        self.proj1 = nn.Linear(in_features, hidden, **kw)
        self.proj2 = nn.Linear(hidden, hidden, **kw)
        self.proj3 = nn.Linear(hidden, tokens * dim, **kw)
        self.norm = nn.LayerNorm(dim, **kw)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, t = audio.shape[:2]
        h = audio.reshape(b * t, -1).to(linear_compute_dtype(self.proj1))
        h = torch.relu(self.proj2(torch.relu(self.proj1(h))))
        return self.norm(self.proj3(h).reshape(b, t, self.tokens, self.dim))


class LegacyAudioProjection(nn.Module):
    """Legacy variant (``audio_proj``, MultiTalk style): audio tokens per LATENT frame.

    ``first [B, 1, W, L, C]`` goes through ``proj1``; ``latter [B, F-1, W', L, C]`` (the 8-row
    windows of each group of 4 video frames) through ``proj1_vf``; both then ReLU -> proj2 -> ReLU ->
    proj3 -> LayerNorm(eps 1e-5). Returns ``[B, F, tokens, out_dim]``.
    """

    def __init__(self, first_features: int, latter_features: int, hidden: int, tokens: int, out_dim: int,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.tokens, self.out_dim = tokens, out_dim
        self.proj1 = nn.Linear(first_features, hidden, **kw)
        self.proj1_vf = nn.Linear(latter_features, hidden, **kw)
        self.proj2 = nn.Linear(hidden, hidden, **kw)
        self.proj3 = nn.Linear(hidden, tokens * out_dim, **kw)
        self.norm = nn.LayerNorm(out_dim, **kw)

    def forward(self, first: torch.Tensor, latter: torch.Tensor) -> torch.Tensor:
        b = first.shape[0]
        dtype = linear_compute_dtype(self.proj1)
        h_first = torch.relu(self.proj1(first.reshape(b, first.shape[1], -1).to(dtype)))
        h_latter = torch.relu(self.proj1_vf(latter.reshape(b, latter.shape[1], -1).to(dtype)))
        h = torch.relu(self.proj2(torch.cat([h_first, h_latter], dim=1)))
        return self.norm(self.proj3(h).reshape(b, h.shape[1], self.tokens, self.out_dim))
