"""The AnyTalker DiT: Wan2.1 I2V diffusion transformer with Audio-Face Cross Attention.

Read in dependency order: self-attention -> cross-attention (text, image and fused AFCA) -> block
-> head -> model. Parameter names match the released checkpoints key for key, so a state dict
loads without remapping. The residual stream and the adaLN modulation are kept in float32; every
linear layer runs in the weight dtype (fp32, bf16 or fp16), as the reference does under autocast, or
in the compute dtype of blocks whose weights are stored in fp8 (:mod:`anytalker_core.quantization`).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .afca import IdentityTokens, LegacyAudioCrossAttention, fused_afca_sum
from .attention import attention, check_attention_backend, use_attention_backend
from .speaker import Speaker
from .config import AnyTalkerConfig
from .embeddings import apply_rope, rope_angles, rope_cos_sin, sinusoidal_embedding
from ..errors import InputError
from .layout import audio_window_for_latent_frames, flatten_token_mask, unpatchify
from .norms import FP32LayerNorm, RMSNorm
from .projections import AudioProjection, LegacyAudioProjection, MLPProj
from .quantization import linear_compute_dtype

log = logging.getLogger(__name__)


def _norm_or_identity(enabled: bool, dim: int, eps: float, **kw) -> nn.Module:
    return RMSNorm(dim, eps, **kw) if enabled else nn.Identity()


class SelfAttention(nn.Module):
    """Full self-attention over the video tokens with 3-D RoPE on q and k."""

    def __init__(self, cfg: AnyTalkerConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        dim = cfg.dim
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, **kw) for _ in range(4))
        self.norm_q = _norm_or_identity(cfg.qk_norm, dim, cfg.eps, **kw)
        self.norm_k = _norm_or_identity(cfg.qk_norm, dim, cfg.eps, **kw)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x ``[B, S, dim]`` -> ``[B, S, dim]``."""
        x = x.to(linear_compute_dtype(self.q))
        q = self.norm_q(self.q(x)).unflatten(-1, (self.heads, -1))
        k = self.norm_k(self.k(x)).unflatten(-1, (self.heads, -1))
        v = self.v(x).unflatten(-1, (self.heads, -1))
        out = attention(apply_rope(q, *rope), apply_rope(k, *rope), v)
        return self.o(out.flatten(2))


class CrossAttention(nn.Module):
    """Text + image cross-attention; with ``afca`` also the fused Audio-Face Cross Attention.

    One query ``q = norm_q(q(x))`` serves all three; their outputs are summed *before* the shared
    output projection ``o``: ``o(text + image + Σ_i mask_i ⊙ AFCA_i)``.
    """

    def __init__(self, cfg: AnyTalkerConfig, afca: bool, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        dim, eps = cfg.dim, cfg.eps
        self.heads, self.vae_scale = cfg.num_heads, cfg.vae_scale
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, **kw) for _ in range(4))
        self.k_img, self.v_img = nn.Linear(dim, dim, **kw), nn.Linear(dim, dim, **kw)
        self.norm_q = _norm_or_identity(cfg.qk_norm, dim, eps, **kw)
        self.norm_k = _norm_or_identity(cfg.qk_norm, dim, eps, **kw)
        self.norm_k_img = _norm_or_identity(cfg.qk_norm, dim, eps, **kw)
        self.has_afca = afca
        if afca:
            self.k_audio, self.v_audio = nn.Linear(dim, dim, **kw), nn.Linear(dim, dim, **kw)
            self.k_face, self.v_face = nn.Linear(dim, dim, **kw), nn.Linear(dim, dim, **kw)
            self.norm_k_audio = _norm_or_identity(cfg.qk_norm, dim, eps, **kw)
            self.norm_k_face = _norm_or_identity(cfg.qk_norm, dim, eps, **kw)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))

    def forward(self, x: torch.Tensor, text: torch.Tensor, image: torch.Tensor,
                identities: list[IdentityTokens], frames: int) -> torch.Tensor:
        """x ``[B, S, dim]``, text ``[B, Lt, dim]``, image ``[B, 257, dim]`` -> ``[B, S, dim]``."""
        dtype = linear_compute_dtype(self.q)
        x, text, image = x.to(dtype), text.to(dtype), image.to(dtype)
        q = self._heads(self.norm_q(self.q(x)))
        out = attention(q, self._heads(self.norm_k(self.k(text))), self._heads(self.v(text))).flatten(2)
        out = out + attention(q, self._heads(self.norm_k_img(self.k_img(image))),
                              self._heads(self.v_img(image))).flatten(2)
        if self.has_afca and identities:
            out = out + fused_afca_sum(q, identities, self.k_audio, self.v_audio, self.k_face, self.v_face,
                                       self.norm_k_audio, self.norm_k_face, self.heads, frames,
                                       self.vae_scale)
        return self.o(out)


class Block(nn.Module):
    """One Wan transformer block with adaLN modulation; legacy models add the audio sublayer."""

    def __init__(self, cfg: AnyTalkerConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        dim, eps = cfg.dim, cfg.eps
        self.legacy = cfg.afca == "legacy"
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.self_attn = SelfAttention(cfg, **kw)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True, **kw) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg, afca=not self.legacy, **kw)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim, **kw), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim, **kw))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim, **kw) / dim ** 0.5)
        if self.legacy:
            self.norm_x = FP32LayerNorm(dim, eps, elementwise_affine=True, **kw)
            self.audio_cross_attn = LegacyAudioCrossAttention(dim, cfg.num_heads, cfg.audio_output_dim, **kw)

    def forward(self, x: torch.Tensor, e: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                text: torch.Tensor, image: torch.Tensor, identities: list[IdentityTokens],
                frames: int) -> torch.Tensor:
        """x ``[B, S, dim]`` float32 residual stream; e ``[B, 6, dim]`` float32 time projection."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x).float() * (1 + scale1) + shift1, rope)
        x = x + y.float() * gate1
        x = x + self.cross_attn(self.norm3(x), text, image, identities, frames).float()
        if self.legacy and identities:
            x = x + self.audio_cross_attn(self.norm_x(x), identities, frames).float()
        y = self.ffn((self.norm2(x).float() * (1 + scale2) + shift2).to(linear_compute_dtype(self.ffn[0])))
        return x + y.float() * gate2


class Head(nn.Module):
    """Final adaLN + linear to ``prod(patch) * out_dim`` channels per token."""

    def __init__(self, cfg: AnyTalkerConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False, **kw)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim, **kw)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim, **kw) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x ``[B, S, dim]``, e ``[B, dim]`` time embedding -> ``[B, S, p*q*r*out_dim]`` float32."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(2, dim=1)
        h = self.norm(x).float() * (1 + scale) + shift
        return self.head(h.to(self.head.weight.dtype)).float()


class AnyTalkerDiT(nn.Module):
    """Wan2.1 I2V DiT with AFCA for any number of identities (N = 0 behaves like plain Wan I2V).

    ``forward(x, t, context, clip_fea, y, speakers)``; see :meth:`forward`. One set of AFCA weights
    serves every identity.
    """

    def __init__(self, config: AnyTalkerConfig, device=None, dtype=None):
        super().__init__()
        self.config = cfg = config
        kw = dict(device=device, dtype=dtype)
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, **kw)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim, **kw), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim, **kw))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim, **kw), nn.SiLU(), nn.Linear(dim, dim, **kw))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, **kw))
        self.blocks = nn.ModuleList(Block(cfg, **kw) for _ in range(cfg.num_layers))
        self.head = Head(cfg, **kw)
        self.img_emb = MLPProj(cfg.clip_dim, dim, **kw)
        self.audio_ref_emb = MLPProj(cfg.clip_dim, dim, **kw)
        if cfg.afca == "fused":
            self.audio_emb = AudioProjection(cfg.audio_frame_features, cfg.audio_intermediate_dim,
                                             cfg.audio_context_tokens, dim, **kw)
        else:
            latter_rows = 2 * (cfg.audio_window // 2 + 1) + cfg.vae_scale - 2
            self.audio_proj = LegacyAudioProjection(
                cfg.audio_frame_features, latter_rows * cfg.audio_layers * cfg.audio_channels,
                cfg.audio_intermediate_dim, cfg.audio_context_tokens, cfg.audio_output_dim, **kw)
        self.gradient_checkpointing = False
        self._attention_backend = "sdpa"

    # ------------------------------------------------------------------ helpers
    @property
    def attention_backend(self) -> str:
        """The attention kernel of this model's forward passes: ``sdpa`` (default), ``flash_attn`` or ``sage``."""
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, name: str) -> None:
        self._attention_backend = check_attention_backend(name)  # fails now, naming a missing package

    def __call__(self, *args, **kwargs):
        with use_attention_backend(self._attention_backend):
            return super().__call__(*args, **kwargs)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (training memory ~ one block's activations)."""
        self.gradient_checkpointing = enabled

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def embed_identity(self, speaker: Speaker) -> IdentityTokens:
        """Project one speaker's audio and face tokens into DiT width (done once per forward)."""
        cfg = self.config
        face = self.audio_ref_emb(speaker.face_clip)
        if cfg.afca == "fused":
            audio = self.audio_emb(speaker.audio)
        else:
            audio = self.audio_proj(*audio_window_for_latent_frames(speaker.audio, cfg.vae_scale))
        return IdentityTokens(audio=audio, face=face, mask=flatten_token_mask(speaker.token_mask))

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B]`` timesteps (0..1000) -> time embedding ``[B, dim]`` and projection ``[B, 6, dim]`` (float32)."""
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t).to(self.dtype)).float()
        e0 = self.time_projection(e.to(self.dtype)).float().unflatten(1, (6, self.config.dim))
        return e, e0

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """``[B, L, text_dim]`` -> zero-padded to ``text_len`` rows -> ``[B, text_len, dim]``."""
        pad = self.config.text_len - context.shape[1]
        context = torch.nn.functional.pad(context.to(self.dtype), (0, 0, 0, pad))
        return self.text_embedding(context)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor,
                y: torch.Tensor, speakers: Sequence[Speaker] = ()) -> torch.Tensor:
        """Predict the flow-matching velocity.

        x ``[B, 16, F, H, W]`` noisy latent; t ``[B]`` or ``[1]`` timesteps in 0..1000;
        context ``[B, L<=text_len, text_dim]`` text embedding (zero rows are padding, as the reference);
        clip_fea ``[B, 257, clip_dim]`` CLIP tokens of the first frame; y ``[B, 20, F, H, W]``
        (4 mask channels + 16 first-frame latent channels); speakers: N >= 0 identities.
        Returns ``[B, 16, F, H, W]`` float32.
        """
        self._check_inputs(x, t, context, clip_fea, y, speakers)
        cfg = self.config
        b = x.shape[0]
        h = self.patch_embedding(torch.cat([x, y], dim=1).to(self.dtype))
        grid = tuple(h.shape[2:])
        frames = grid[0]
        tokens = h.flatten(2).transpose(1, 2).float()  # [B, S, dim] float32 residual stream
        rope = rope_cos_sin(rope_angles(grid, cfg.head_dim, device=x.device))

        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        e, e0 = self.embed_time(t)
        text = self.embed_text(context)
        image = self.img_emb(clip_fea)
        if cfg.afca == "legacy":  # reference quirk: the text attention also sees the CLIP tokens
            text = torch.cat([image, text], dim=1)
        identities = [self.embed_identity(s) for s in speakers]

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, e0, rope, text, image, identities, frames, use_reentrant=False)
            else:
                tokens = block(tokens, e0, rope, text, image, identities, frames)
        out = self.head(tokens, e)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_dim)

    def _check_inputs(self, x, t, context, clip_fea, y, speakers) -> None:
        """Clear errors for inconsistent inputs instead of shape errors deep inside torch."""
        cfg = self.config
        if x.dim() != 5:
            raise InputError(f"x: expected a latent [B, {cfg.out_dim}, F, H, W], got shape {tuple(x.shape)}")
        b, _, f, hh, ww = x.shape
        if x.shape[1] + y.shape[1] != cfg.in_dim:
            raise InputError(f"x ({x.shape[1]} ch) + y ({y.shape[1]} ch) must give the model's {cfg.in_dim} "
                             "input channels (16 noise + 4 mask + 16 first-frame latent)")
        if tuple(y.shape[2:]) != (f, hh, ww) or y.shape[0] != b:
            raise InputError(f"y: expected [{b}, 20, {f}, {hh}, {ww}] to match x, got {tuple(y.shape)}")
        _, ph, pw = cfg.patch_size
        if hh % ph or ww % pw:
            raise InputError(f"x: latent height/width {hh}x{ww} must be multiples of the patch size {ph}x{pw}")
        if t.numel() not in (1, b):
            raise InputError(f"t: expected 1 or {b} timesteps, got {t.numel()}")
        if context.dim() != 3 or context.shape[-1] != cfg.text_dim or context.shape[1] > cfg.text_len:
            raise InputError(f"context: expected [B, L<={cfg.text_len}, {cfg.text_dim}] text embeddings, "
                             f"got {tuple(context.shape)}")
        if clip_fea.dim() != 3 or clip_fea.shape[-1] != cfg.clip_dim:
            raise InputError(f"clip_fea: expected [B, 257, {cfg.clip_dim}] CLIP tokens, got {tuple(clip_fea.shape)}")
        video_frames = cfg.vae_scale * (f - 1) + 1
        grid = (f, hh // ph, ww // pw)
        audio_shape = (cfg.audio_window, cfg.audio_layers, cfg.audio_channels)
        for i, s in enumerate(speakers):
            if s.audio.dim() != 5 or s.audio.shape[1] != video_frames or tuple(s.audio.shape[2:]) != audio_shape:
                raise InputError(
                    f"speaker {i + 1}: audio must be [B, {video_frames}, {', '.join(map(str, audio_shape))}] "
                    f"(one window per video frame of a {video_frames}-frame clip), got {tuple(s.audio.shape)}")
            if s.face_clip.dim() != 3 or s.face_clip.shape[-1] != cfg.clip_dim:
                raise InputError(f"speaker {i + 1}: face_clip must be [B, 257, {cfg.clip_dim}], got "
                                 f"{tuple(s.face_clip.shape)}")
            if tuple(s.token_mask.shape[1:]) != grid:
                raise InputError(f"speaker {i + 1}: token_mask must be [B, {grid[0]}, {grid[1]}, {grid[2]}] "
                                 f"(latent frames, lat_h/2, lat_w/2), got {tuple(s.token_mask.shape)}")
