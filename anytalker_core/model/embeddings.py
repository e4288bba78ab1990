"""Position and time encodings of Wan2.1: 3-D RoPE and the sinusoidal timestep embedding."""

from __future__ import annotations

import torch


def sinusoidal_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """``[B]`` timesteps -> ``[B, dim]`` float32 embedding ``[cos | sin]`` (computed in float64)."""
    half = dim // 2
    pos = timesteps.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device).div(half))
    angles = torch.outer(pos, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim channels given to the frame, height and width axes (Wan: 44/42/42 for 128)."""
    axis = 2 * (head_dim // 6)
    return head_dim - 2 * axis, axis, axis


def rope_angles(grid: tuple[int, int, int], head_dim: int, device: torch.device | str = "cpu",
                theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles ``[F*h*w, head_dim/2]`` (float64) for a latent token grid, f-major order."""
    f, h, w = grid
    parts = []
    for size, n in zip(rope_split(head_dim), (f, h, w)):
        inv = 1.0 / torch.pow(theta, torch.arange(0, size, 2, dtype=torch.float64, device=device).div(size))
        parts.append(torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv))
    af, ah, aw = parts
    angles = torch.cat([
        af[:, None, None, :].expand(f, h, w, -1),
        ah[None, :, None, :].expand(f, h, w, -1),
        aw[None, None, :, :].expand(f, h, w, -1),
    ], dim=-1)
    return angles.reshape(f * h * w, -1)


def rope_rotation(angles: torch.Tensor) -> torch.Tensor:
    """complex64 unit rotations ``exp(i*angle)`` of shape ``[S, 1, head_dim/2]``, broadcast over heads."""
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)[:, None, :]


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x [B, S, heads, head_dim]`` as complex numbers (float32 math).

    One complex multiply per pair, as the reference does (``rope_apply``); ``rotation`` from
    :func:`rope_rotation`.
    """
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rotation).flatten(-2).to(x.dtype)
