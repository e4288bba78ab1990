"""Pure tensor-layout functions shared by the DiT, the AFCA and the data pipeline.

Token order everywhere is the latent grid after 1x2x2 patching flattened f-major, then h, then w:
``token = f * (H/2) * (W/2) + hh * (W/2) + ww``.
"""

from __future__ import annotations

from typing import Callable

import torch


def flatten_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[B, F, h, w]`` soft identity mask -> ``[B, F*h*w, 1]`` in token order."""
    return mask.flatten(1).unsqueeze(-1)


def group_by_frame(tokens: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, F*S_f, ...]`` -> ``[B, F, S_f, ...]`` (tokens of one latent frame are contiguous)."""
    b, s = tokens.shape[:2]
    if s % frames:
        raise ValueError(f"{s} tokens cannot be split into {frames} latent frames")
    return tokens.reshape(b, frames, s // frames, *tokens.shape[2:])


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int],
               channels: int) -> torch.Tensor:
    """Head output ``[B, F*h*w, p*q*r*C]`` (channels ordered p, q, r, c) -> ``[B, C, F*p, h*q, w*r]``."""
    b = tokens.shape[0]
    f, h, w = grid
    p, q, r = patch
    x = tokens.reshape(b, f, h, w, p, q, r, channels)
    x = torch.einsum("bfhwpqrc->bcfphqwr", x)
    return x.reshape(b, channels, f * p, h * q, w * r)


def audio_window_for_latent_frames(audio: torch.Tensor, vae_scale: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Split windowed per-video-frame audio into the legacy projection's two inputs.

    ``audio [B, T, W, L, C]`` with ``T = vae_scale*(F-1)+1`` ->
    ``first [B, 1, W, L, C]`` (video frame 0's window) and
    ``latter [B, F-1, 2*(W//2+1) + (vae_scale-2), L, C]``: per group of ``vae_scale`` video frames,
    rows ``0..W//2`` of the group's first frame, the centre row of its middle frames and rows
    ``W//2..W-1`` of its last frame (8 rows for W=5, vae_scale=4), as MultiTalk/AnyTalker-14B feed it.
    """
    b, t, w = audio.shape[:3]
    if (t - 1) % vae_scale:
        raise ValueError(f"audio has {t} video frames; expected {vae_scale}n+1")
    mid = w // 2
    first = audio[:, :1]
    groups = audio[:, 1:].reshape(b, (t - 1) // vae_scale, vae_scale, *audio.shape[2:])
    head = groups[:, :, 0, : mid + 1]
    middle = groups[:, :, 1:-1, mid]
    tail = groups[:, :, -1, mid:]
    return first, torch.cat([head, middle, tail], dim=2)


def stack_rows(rows: int, row: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``[rows, ...]`` from ``row(r)`` ``[1, ...]`` computed one after the other and written into one
    tensor, so that only one row's intermediate tensors exist at a time (``torch.cat`` would hold every
    row twice)."""
    first = row(0)
    if rows == 1:
        return first
    out = first.new_empty(rows, *first.shape[1:])
    out[:1] = first
    del first
    for r in range(1, rows):
        out[r:r + 1] = row(r)
    return out
