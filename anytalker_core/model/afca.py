"""Audio-Face Cross Attention (AFCA): the math that binds each voice to one face.

Self-contained with explicit inputs (query states, per-identity keys/values, token masks), so it serves
both the DiT in :mod:`anytalker_core.dit` and patches on other Wan implementations.

Visibility rule (both variants): the queries of latent frame ``j`` see the identity's 257 face
tokens plus the audio tokens of *their own* video frames. Latent frame 0 (video frame 0) sees every
audio frame in the fused variant. The reference materialises this as a dense boolean mask
``[B, 1, L_video, 257 + 32*T]`` per identity per layer; here it is computed frame by frame, so memory
and time grow linearly with clip length and with the number of identities. The faces, which every
query sees, are attended once for all queries and merged with each frame's audio attention through
the log-sum-exp of both (exact up to rounding), so face keys are never copied per frame.
:func:`dense_fused_afca` keeps the reference's dense-mask formulation for benchmarks and
equivalence tests.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import attention, attention_with_lse, merge_attention
from .layout import group_by_frame, stack_rows
from .prepared import KV, IdentityKV, IdentityTokens, branch_row
from .quantization import linear_compute_dtype

__all__ = ["IdentityTokens", "fused_afca", "dense_fused_afca", "fused_afca_sum", "fused_visibility_mask",
           "per_frame_attention", "project_fused_identities", "LegacyAudioCrossAttention"]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., dim] -> [..., heads, dim/heads]``."""
    return x.unflatten(-1, (heads, -1))


def per_frame_attention(q_frames: torch.Tensor, face_k: torch.Tensor, face_v: torch.Tensor,
                        audio_k: torch.Tensor, audio_v: torch.Tensor) -> torch.Tensor:
    """Each frame's queries attend to ``[face tokens; that frame's audio tokens]``.

    q_frames ``[B, F, S_f, H, D]``, face_k/v ``[B, 257, H, D]``, audio_k/v ``[B, F, Ta, H, D]``
    -> ``[B, F, S_f, H, D]``. The face keys are not copied per frame: one attention of all queries
    over the faces and one batched attention of each frame over its audio, merged exactly through
    their log-sum-exps (:func:`~anytalker_core.attention.merge_attention`).
    """
    b, f, s_f, h, d = q_frames.shape
    face = attention_with_lse(q_frames.reshape(b, f * s_f, h, d), face_k, face_v)
    out_a, lse_a = attention_with_lse(q_frames.flatten(0, 1), audio_k.flatten(0, 1), audio_v.flatten(0, 1))
    audio = out_a.reshape(b, f * s_f, h, d), lse_a.reshape(b, f * s_f, h)
    return merge_attention([face, audio]).reshape(b, f, s_f, h, d)


def _audio_part(q: torch.Tensor, audio: KV, frames: int, vae_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of the audio keys each query may see (fused rule), ``[B, S, H, D]`` / ``[B, S, H]``."""
    b, s, h, d = q.shape
    s_f = s // frames
    t = vae_scale * (frames - 1) + 1
    ak, av = audio.k, audio.v
    if ak.shape[1] == 1:
        # zero audio: every video frame has the same tokens; attending to n copies of a key set is
        # attending to one copy with lse + log(n) (n = t for latent frame 0, vae_scale after it)
        out, lse = attention_with_lse(q, ak[:, 0], av[:, 0])
        counts = torch.full((frames,), float(vae_scale), device=q.device)
        counts[0] = float(t)
        offset = torch.log(counts).repeat_interleave(s_f)[None, :, None]
        return out, lse + offset
    if ak.shape[1] != t:
        raise ValueError(f"audio covers {ak.shape[1]} video frames but the latent has {frames} frames "
                         f"(expected {t})")
    n_tok = ak.shape[2]
    out0, lse0 = attention_with_lse(q[:, :s_f], ak.flatten(1, 2), av.flatten(1, 2))
    if frames == 1:
        return out0, lse0
    q_rest = q[:, s_f:].reshape(b * (frames - 1), s_f, h, d)
    grouped_k = ak[:, 1:].reshape(b * (frames - 1), vae_scale * n_tok, h, d)
    grouped_v = av[:, 1:].reshape(b * (frames - 1), vae_scale * n_tok, h, d)
    out_r, lse_r = attention_with_lse(q_rest, grouped_k, grouped_v)
    out = torch.cat([out0, out_r.reshape(b, -1, h, d)], dim=1)
    lse = torch.cat([lse0, lse_r.reshape(b, -1, h)], dim=1)
    return out, lse


def fused_afca(q: torch.Tensor, face: KV, audio: KV, frames: int, vae_scale: int = 4,
               face_part: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Frame-local fused AFCA for one identity.

    q ``[B, S, H, D]`` (shared cross-attention query), face k/v ``[B, 257, H, D]``,
    audio k/v ``[B, T, tokens, H, D]`` with ``T = vae_scale*(frames-1)+1`` video frames, or ``T = 1``
    for audio equal in every frame (zero audio) -> ``[B, S, H, D]``. Latent frame 0 sees all audio;
    frame j>=1 sees video frames ``vae_scale*(j-1)+1 .. vae_scale*j``; every query sees the faces.
    ``face_part``: the ``(out, lse)`` of q over the faces when already computed (shared branches).
    """
    if face_part is None:
        face_part = attention_with_lse(q, face.k, face.v)
    return merge_attention([face_part, _audio_part(q, audio, frames, vae_scale)])


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


def dense_fused_afca(q: torch.Tensor, face: KV, audio: KV, frames: int, vae_scale: int = 4,
                     face_part: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The reference formulation: one attention over all keys with a dense boolean mask.

    Same inputs/outputs as :func:`fused_afca` (``face_part`` is ignored); memory grows with
    ``S x (257 + tokens*T)``. Kept for benchmarks and equivalence tests only.
    """
    t = vae_scale * (frames - 1) + 1
    ak, av = audio.k, audio.v
    if ak.shape[1] == 1:
        ak, av = ak.expand(-1, t, *ak.shape[2:]), av.expand(-1, t, *av.shape[2:])
    n_tok = ak.shape[2]
    mask = fused_visibility_mask(frames, q.shape[1] // frames, t, n_tok, face.k.shape[1], vae_scale, q.device)
    k = torch.cat([face.k, ak.flatten(1, 2)], dim=1)
    v = torch.cat([face.v, av.flatten(1, 2)], dim=1)
    return attention(q, k, v, mask=mask[None, None])


def project_fused_identities(identities: list[IdentityTokens], k_audio: nn.Module, v_audio: nn.Module,
                             k_face: nn.Module, v_face: nn.Module, norm_k_audio: nn.Module,
                             norm_k_face: nn.Module, heads: int) -> list[IdentityKV]:
    """One block's fused-AFCA keys/values: ``K = norm_k(k(tokens))``, ``V = v(tokens)`` per identity.

    An audio tensor shared by several branches (or identities) is projected once.
    """
    done: dict[int, KV] = {}

    def audio_kv(audio: torch.Tensor) -> KV:
        if id(audio) not in done:
            a = audio.to(linear_compute_dtype(k_audio))
            done[id(audio)] = KV(_heads(norm_k_audio(k_audio(a)), heads), _heads(v_audio(a), heads))
        return done[id(audio)]

    out = []
    for ident in identities:
        face = ident.face.to(linear_compute_dtype(k_face))
        out.append(IdentityKV(face=KV(_heads(norm_k_face(k_face(face)), heads), _heads(v_face(face), heads)),
                              audio=[audio_kv(a) for a in ident.audio], mask=ident.mask))
    return out


def fused_afca_sum(q: torch.Tensor, identities: list[IdentityKV], branches: int, frames: int, vae_scale: int,
                   impl=fused_afca, face_parts: dict | None = None) -> torch.Tensor | None:
    """``Σ_i mask_i ⊙ AFCA_i`` as ``[K, S, dim]`` for ``K = branches`` rows, or None without identities.

    q ``[1 or K, S, H, D]`` is the normed cross-attention query shared with text and image attention
    (batch 1: the same for every branch, as in the first block of a guided step). Work shared by
    branches (the same query and face, or the same audio) is done once. ``face_parts``: a dict the
    caller keeps across calls whose ``q`` holds the same values (one call per branch), so that the
    attention of that query over a face is computed once for all of them. Each identity's output is added into the
    branch's sum as soon as it is computed.
    """
    if not identities:
        return None
    face_parts = {} if face_parts is None else face_parts
    results: dict[tuple, torch.Tensor] = {}
    # audio tensors several branches share (zero audio): their results are kept for the later branches
    uses: dict[tuple, int] = {}

    def result_key(b: int, i: int) -> tuple:
        ident = identities[i]
        return (0 if q.shape[0] == 1 else b, i, branch_row(ident.face.k, b).data_ptr(), id(ident.audio[b]))

    for b in range(branches):
        for i in range(len(identities)):
            key = result_key(b, i)
            uses[key] = uses.get(key, 0) + 1

    def row(b: int) -> torch.Tensor:
        qb = branch_row(q, b)
        total = None
        for i, ident in enumerate(identities):
            key = result_key(b, i)
            out = results.get(key)
            if out is None:
                face = KV(branch_row(ident.face.k, b), branch_row(ident.face.v, b))
                face_key = ("face", i, face.k.data_ptr(), 0 if q.shape[0] == 1 else b)
                if impl is fused_afca and face_key not in face_parts:
                    face_parts[face_key] = attention_with_lse(qb, face.k, face.v)
                out = impl(qb, face, ident.audio[b], frames, vae_scale, face_part=face_parts.get(face_key)).flatten(2)
                if uses[key] > 1:
                    results[key] = out
            uses[key] -= 1
            if uses[key] == 0:
                results.pop(key, None)
            out = out * branch_row(ident.mask, b).to(q.dtype)
            total = out if total is None else total.add_(out)
            del out
        return total

    return stack_rows(branches, row)


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

    def project(self, identities: list[IdentityTokens]) -> list[IdentityKV]:
        """This sublayer's keys/values: ``k_face/v_face`` of the faces, ``kv_linear`` of each audio tensor."""
        dtype = linear_compute_dtype(self.kv_linear)
        done: dict[int, KV] = {}
        out = []
        for ident in identities:
            face = ident.face.to(dtype)
            for audio in ident.audio:
                if id(audio) not in done:
                    ak, av = self.kv_linear(audio.to(dtype)).chunk(2, dim=-1)
                    done[id(audio)] = KV(_heads(ak, self.heads), _heads(av, self.heads))
            out.append(IdentityKV(face=KV(_heads(self.k_face(face), self.heads), _heads(self.v_face(face), self.heads)),
                                  audio=[done[id(a)] for a in ident.audio], mask=ident.mask))
        return out

    def attend(self, x: torch.Tensor, identities: list[IdentityKV], branch: int, frames: int) -> torch.Tensor:
        """x ``[1, S, dim]`` (already ``norm_x``-ed) of branch ``branch``, keys/values from :meth:`project`
        -> ``[1, S, dim]``."""
        dtype = linear_compute_dtype(self.q_linear)
        q = group_by_frame(_heads(self.q_linear(x.to(dtype)), self.heads), frames)
        total = None
        for ident in identities:
            fk, fv = branch_row(ident.face.k, branch), branch_row(ident.face.v, branch)
            audio = ident.audio[branch]
            out = per_frame_attention(q, fk, fv, audio.k, audio.v)
            out = out.flatten(1, 2).flatten(2) * branch_row(ident.mask, branch).to(dtype)
            total = out if total is None else total.add_(out)
            del out
        return self.proj(total)

    def forward(self, x: torch.Tensor, identities: list[IdentityKV], frames: int) -> torch.Tensor:
        """x ``[K, S, dim]`` (already ``norm_x``-ed), keys/values from :meth:`project` -> ``[K, S, dim]``."""
        return torch.cat([self.attend(x[b:b + 1], identities, b, frames) for b in range(x.shape[0])])
