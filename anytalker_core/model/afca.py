"""Audio-Face Cross Attention (AFCA): the math that binds each voice to one face.

Self-contained with explicit inputs (query states, per-identity keys/values, token masks), so it serves
both the DiT in :mod:`anytalker_core.dit` and patches on other Wan implementations.

Visibility rule (both variants): the queries of latent frame ``j`` see the identity's 257 face
tokens plus the audio tokens of *their own* video frames. Latent frame 0 (video frame 0) sees every
audio frame in the fused variant. The reference materialises this as a dense boolean mask
``[B, 1, L_video, 257 + 32*T]`` per identity per layer; here it is computed frame by frame, so memory
and time grow linearly with clip length and with the number of identities.
:func:`dense_fused_afca` keeps the reference's dense-mask formulation for benchmarks and
equivalence tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import attention
from .layout import group_by_frame
from .quantization import linear_compute_dtype


@dataclass
class IdentityTokens:
    """One identity's tokens in DiT width, computed once per forward and shared by all blocks.

    audio: fused ``[B, T_video, tokens, dim]`` (per video frame) or legacy
           ``[B, F_lat, tokens, audio_dim]`` (per latent frame).
    face:  ``[B, 257, dim]`` face tokens (``audio_ref_emb`` of the face CLIP tokens).
    mask:  ``[B, S, 1]`` soft token mask in token order.
    """

    audio: torch.Tensor
    face: torch.Tensor
    mask: torch.Tensor


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., dim] -> [..., heads, dim/heads]``."""
    return x.unflatten(-1, (heads, -1))


def per_frame_attention(q_frames: torch.Tensor, face_k: torch.Tensor, face_v: torch.Tensor,
                        audio_k: torch.Tensor, audio_v: torch.Tensor) -> torch.Tensor:
    """Each frame's queries attend to ``[face tokens; that frame's audio tokens]``.

    q_frames ``[B, F, S_f, H, D]``, face_k/v ``[B, 257, H, D]``, audio_k/v ``[B, F, Ta, H, D]``
    -> ``[B, F, S_f, H, D]``. One batched attention call over ``B*F`` frames.
    """
    b, f, s_f, h, d = q_frames.shape
    face_k = face_k[:, None].expand(b, f, *face_k.shape[1:])
    face_v = face_v[:, None].expand(b, f, *face_v.shape[1:])
    k = torch.cat([face_k, audio_k], dim=2).flatten(0, 1)
    v = torch.cat([face_v, audio_v], dim=2).flatten(0, 1)
    out = attention(q_frames.flatten(0, 1), k, v)
    return out.reshape(b, f, s_f, h, d)


def fused_afca(q: torch.Tensor, face_k: torch.Tensor, face_v: torch.Tensor, audio_k: torch.Tensor,
               audio_v: torch.Tensor, frames: int, vae_scale: int = 4) -> torch.Tensor:
    """Frame-local fused AFCA for one identity.

    q ``[B, S, H, D]`` (shared cross-attention query), face_k/v ``[B, 257, H, D]``,
    audio_k/v ``[B, T, tokens, H, D]`` with ``T = vae_scale*(frames-1)+1`` video frames
    -> ``[B, S, H, D]``. Latent frame 0 sees all audio; frame j>=1 sees video frames
    ``vae_scale*(j-1)+1 .. vae_scale*j``.
    """
    b, t, n_tok, h, d = audio_k.shape
    if t != vae_scale * (frames - 1) + 1:
        raise ValueError(f"audio covers {t} video frames but the latent has {frames} frames "
                         f"(expected {vae_scale * (frames - 1) + 1})")
    qf = group_by_frame(q, frames)
    k0 = torch.cat([face_k, audio_k.flatten(1, 2)], dim=1)
    v0 = torch.cat([face_v, audio_v.flatten(1, 2)], dim=1)
    out0 = attention(qf[:, 0], k0, v0)[:, None]
    if frames == 1:
        return out0.flatten(1, 2)
    grouped_k = audio_k[:, 1:].reshape(b, frames - 1, vae_scale * n_tok, h, d)
    grouped_v = audio_v[:, 1:].reshape(b, frames - 1, vae_scale * n_tok, h, d)
    rest = per_frame_attention(qf[:, 1:], face_k, face_v, grouped_k, grouped_v)
    return torch.cat([out0, rest], dim=1).flatten(1, 2)


def fused_visibility_mask(frames: int, tokens_per_frame: int, video_frames: int, audio_tokens: int,
                          face_tokens: int = 257, vae_scale: int = 4,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """The reference's dense boolean AFCA mask ``[S, face_tokens + audio_tokens*video_frames]``."""
    q_frame = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)  # [S]
    k_video = torch.arange(video_frames, device=device).repeat_interleave(audio_tokens)  # [T*tok]
    lo = vae_scale * (q_frame - 1) + 1
    hi = vae_scale * q_frame
    audio_ok = (k_video[None, :] >= lo[:, None]) & (k_video[None, :] <= hi[:, None])
    audio_ok |= (q_frame == 0)[:, None]
    face_ok = torch.ones(q_frame.shape[0], face_tokens, dtype=torch.bool, device=device)
    return torch.cat([face_ok, audio_ok], dim=1)


def dense_fused_afca(q: torch.Tensor, face_k: torch.Tensor, face_v: torch.Tensor, audio_k: torch.Tensor,
                     audio_v: torch.Tensor, frames: int, vae_scale: int = 4) -> torch.Tensor:
    """The reference formulation: one attention over all keys with a dense boolean mask.

    Same inputs/outputs as :func:`fused_afca`; memory grows with ``S x (257 + tokens*T)``.
    Kept for benchmarks and equivalence tests only.
    """
    b, t, n_tok = audio_k.shape[:3]
    mask = fused_visibility_mask(frames, q.shape[1] // frames, t, n_tok, face_k.shape[1], vae_scale, q.device)
    k = torch.cat([face_k, audio_k.flatten(1, 2)], dim=1)
    v = torch.cat([face_v, audio_v.flatten(1, 2)], dim=1)
    return attention(q, k, v, mask=mask[None, None])


def fused_afca_sum(q: torch.Tensor, identities: list[IdentityTokens], k_audio: nn.Linear, v_audio: nn.Linear,
                   k_face: nn.Linear, v_face: nn.Linear, norm_k_audio: nn.Module, norm_k_face: nn.Module,
                   heads: int, frames: int, vae_scale: int, impl=fused_afca) -> torch.Tensor | None:
    """``Σ_i mask_i ⊙ AFCA_i`` as ``[B, S, dim]``, or None without identities.

    q ``[B, S, H, D]`` is the normed cross-attention query shared with text and image attention.
    """
    total = None
    for ident in identities:
        face = ident.face.to(linear_compute_dtype(k_face))
        audio = ident.audio.to(linear_compute_dtype(k_audio))
        fk = _heads(norm_k_face(k_face(face)), heads)
        fv = _heads(v_face(face), heads)
        ak = _heads(norm_k_audio(k_audio(audio)), heads)
        av = _heads(v_audio(audio), heads)
        out = impl(q, fk, fv, ak, av, frames, vae_scale).flatten(2) * ident.mask.to(q.dtype)
        total = out if total is None else total + out
    return total


class LegacyAudioCrossAttention(nn.Module):
    """The 14B release's audio sublayer (``blocks.N.audio_cross_attn``), MultiTalk style.

    Per latent frame, queries ``q_linear(x)`` attend to ``[k_face(face); K(audio of that frame)]``
    with ``K, V = kv_linear(audio).chunk(2)``; no mask, no RoPE, no q/k norm. Outputs are
    multiplied by each identity's token mask, summed, then projected by ``proj``.
    """

    def __init__(self, dim: int, heads: int, audio_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim, **kw)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim, **kw)
        self.proj = nn.Linear(dim, dim, **kw)
        self.k_face = nn.Linear(dim, dim, **kw)
        self.v_face = nn.Linear(dim, dim, **kw)

    def forward(self, x: torch.Tensor, identities: list[IdentityTokens], frames: int) -> torch.Tensor:
        """x ``[B, S, dim]`` (already ``norm_x``-ed) -> ``[B, S, dim]``."""
        dtype = linear_compute_dtype(self.q_linear)
        q = group_by_frame(_heads(self.q_linear(x.to(dtype)), self.heads), frames)
        total = None
        for ident in identities:
            face = ident.face.to(dtype)
            fk, fv = _heads(self.k_face(face), self.heads), _heads(self.v_face(face), self.heads)
            ak, av = self.kv_linear(ident.audio.to(dtype)).chunk(2, dim=-1)
            out = per_frame_attention(q, fk, fv, _heads(ak, self.heads), _heads(av, self.heads))
            out = out.flatten(1, 2).flatten(2) * ident.mask.to(dtype)
            total = out if total is None else total + out
        return self.proj(total)
