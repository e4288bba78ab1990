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

from .afca import LegacyAudioCrossAttention, fused_afca_sum, project_fused_identities
from .attention import (attention, check_attention_backend, sequence_attention, sequence_split,
                        use_attention_backend, use_sequence_parallel)
from .speaker import Speaker
from .config import AnyTalkerConfig
from .embeddings import apply_rope, rope_angles, rope_rotation, sinusoidal_embedding
from ..errors import InputError
from .layout import audio_window_for_latent_frames, flatten_token_mask, stack_rows, unpatchify
from .norms import FP32LayerNorm, RMSNorm
from .prepared import KV, BlockKV, IdentityKV, IdentityTokens, PreparedConditioning, branch_row
from .projections import AudioProjection, LegacyAudioProjection, MLPProj
from .quantization import linear_compute_dtype

log = logging.getLogger(__name__)

# Tokens per FFN piece (Block._ffn): bounds the hidden layer at 1024 x ffn_dim (35 MiB at the 1.3B width in
# fp32) whatever the clip length or the number of batched guidance branches; matmuls of 1024 rows still
# run at full speed on CPUs and GPUs.
FFN_CHUNK_TOKENS = 1024


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

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x ``[B, S, dim]``, rope ``[S, 1, head_dim/2]`` complex rotations -> ``[B, S, dim]``."""
        x = x.to(linear_compute_dtype(self.q))
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (self.heads, -1)), rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (self.heads, -1)), rope)
        v = self.v(x).unflatten(-1, (self.heads, -1))
        out = sequence_attention(q, k, v)
        del q, k, v  # only the attention output is needed for the projection
        return self.o(out.flatten(2))


class CrossAttention(nn.Module):
    """Text + image cross-attention; with ``afca`` also the fused Audio-Face Cross Attention.

    One query ``q = norm_q(q(x))`` serves all three; their outputs are summed *before* the shared
    output projection ``o``: ``o(text + image + Σ_i mask_i ⊙ AFCA_i)``. The block calls :meth:`query`
    once per query row and :meth:`attend` once per guidance branch (``Block._cross_attention``).
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

    def project(self, cond: PreparedConditioning) -> BlockKV:
        """This block's keys/values of the text, image and (fused AFCA) identity tokens."""
        dtype = linear_compute_dtype(self.k)
        text = cond.text.to(dtype)
        text_kv = KV(self._heads(self.norm_k(self.k(text))), self._heads(self.v(text)))
        image = cond.image.to(linear_compute_dtype(self.k_img))
        image_kv = KV(self._heads(self.norm_k_img(self.k_img(image))), self._heads(self.v_img(image)))
        identities = None
        if self.has_afca:
            identities = project_fused_identities(cond.identities, self.k_audio, self.v_audio, self.k_face,
                                                  self.v_face, self.norm_k_audio, self.norm_k_face, self.heads)
        return BlockKV(text=text_kv, image=image_kv, identities=identities or [])

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The query ``norm_q(q(x))`` ``[B, S, heads, head_dim]`` shared by text, image and AFCA attention."""
        return self._heads(self.norm_q(self.q(x.to(linear_compute_dtype(self.q)))))

    def attend(self, q: torch.Tensor, kv: BlockKV, branch: int, frames: int,
               shared: dict | None = None) -> torch.Tensor:
        """The cross-attention output ``o(text + image + Σ_i mask_i ⊙ AFCA_i)`` ``[1, S, dim]`` of one branch.

        q ``[1, S, heads, head_dim]`` (:meth:`query`) of this branch's tokens; ``kv`` of all branches.
        ``shared``: a dict kept across the branches of one call when they all use the same ``q`` (the
        first block of a guided step): the image and face attentions, equal in every branch, are
        computed for the first branch only.
        """
        out = attention(q, branch_row(kv.text.k, branch), branch_row(kv.text.v, branch)).flatten(2)
        image = kv.image
        if shared is not None and image.k.shape[0] == 1:
            if "image" not in shared:
                shared["image"] = attention(q, image.k, image.v).flatten(2)
            out = out + shared["image"]
        else:
            out = out + attention(q, branch_row(image.k, branch), branch_row(image.v, branch)).flatten(2)
        if self.has_afca and kv.identities:
            rows = [IdentityKV(face=KV(branch_row(i.face.k, branch), branch_row(i.face.v, branch)),
                               audio=[i.audio[branch]], mask=branch_row(i.mask, branch)) for i in kv.identities]
            split = sequence_split()  # AFCA needs each token's frame: run it at the tokens' place in the clip
            afca = fused_afca_sum(split.full(q, 1), rows, 1, frames, self.vae_scale, face_parts=shared)
            out.add_(split.local(afca, 1))
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

    def project(self, cond: PreparedConditioning) -> BlockKV:
        """Keys/values of everything this block reads besides the video tokens (see :mod:`.prepared`)."""
        kv = self.cross_attn.project(cond)
        if self.legacy:
            kv.identities = self.audio_cross_attn.project(cond.identities)
        return kv

    def forward(self, x: torch.Tensor, e: torch.Tensor, rope: torch.Tensor, kv: BlockKV | None,
                frames: int, cond: PreparedConditioning | None = None) -> torch.Tensor:
        """x ``[1 or K, S, dim]`` float32 residual stream; e ``[1 or K, 6, dim]`` float32 time projection;
        ``kv`` of ``K`` branches -> ``[K, S, dim]``. A batch-1 ``x`` is shared by every branch up to
        the cross-attention, where the branches' conditioning first differs. ``kv=None``: projected here
        from ``cond`` (inside the block's own call, where a sharded block has its weights gathered).

        Every sublayer runs one batch row at a time (the FFN also in pieces of
        :data:`FFN_CHUNK_TOKENS` tokens) and adds its output to the residual stream row by row, so a
        batch of guidance branches costs the intermediate tensors of one branch, not of all of them.
        """
        if kv is None:
            kv = self.project(cond)
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e).chunk(6, dim=1)

        def self_attention(r: int) -> torch.Tensor:
            xr = x[r:r + 1]
            h = self.norm1(xr).float() * (1 + branch_row(scale1, r)) + branch_row(shift1, r)
            return xr + self.self_attn(h, rope).float() * branch_row(gate1, r)

        x = stack_rows(x.shape[0], self_attention)
        x = self._cross_attention(x, kv, frames)
        if self.legacy and kv.identities:
            split = sequence_split()
            x = stack_rows(x.shape[0], lambda b: x[b:b + 1] + split.local(self.audio_cross_attn.attend(
                split.full(self.norm_x(x[b:b + 1]), 1), kv.identities, b, frames), 1).float())
        return self._ffn(x, shift2, scale2, gate2)

    def _cross_attention(self, x: torch.Tensor, kv: BlockKV, frames: int) -> torch.Tensor:
        """``x + cross_attn(norm3(x))`` ``[K, S, dim]`` float32, one branch at a time (x ``[1 or K, S, dim]``)."""
        ca, branches = self.cross_attn, kv.text.k.shape[0]
        if x.shape[0] == 1:
            q, shared = ca.query(self.norm3(x)), ({} if branches > 1 else None)
            return stack_rows(branches, lambda b: x + ca.attend(q, kv, b, frames, shared).float())
        return stack_rows(branches, lambda b: x[b:b + 1] + ca.attend(
            ca.query(self.norm3(x[b:b + 1])), kv, b, frames).float())

    def _ffn(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``x + gate * ffn(norm2(x) * (1 + scale) + shift)`` over ``[B, S, dim]`` float32, in pieces of at
        most :data:`FFN_CHUNK_TOKENS` tokens of one row.

        The norm, the modulation and the FFN act on each token alone, so the pieces give the same result
        while the FFN's ``ffn_dim``-wide hidden layer (the largest activation of a block) exists for one
        piece at a time.
        """
        dtype = linear_compute_dtype(self.ffn[0])
        out = torch.empty_like(x)
        for r in range(x.shape[0]):
            for start in range(0, x.shape[1], FFN_CHUNK_TOKENS):
                piece = x[r:r + 1, start:start + FFN_CHUNK_TOKENS]
                h = (self.norm2(piece).float() * (1 + branch_row(scale, r)) + branch_row(shift, r)).to(dtype)
                out[r:r + 1, start:start + FFN_CHUNK_TOKENS] = piece + self.ffn(h).float() * branch_row(gate, r)
        return out


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

    def compile_blocks(self, **options) -> None:
        """Compile every transformer block with ``torch.compile`` (``options`` are passed on, e.g.
        ``mode="max-autotune"``). The first forward at a new size compiles (minutes on a CPU); later ones
        reuse the kernels. Blocks see two input shapes in guided sampling (the shared batch-1 prefix of
        the first block, K branches after it), so expect two compilations."""
        for block in self.blocks:
            block.compile(**options)
        log.info("compiled %d blocks with torch.compile %s", len(self.blocks), options or "")

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def embed_identities(self, speakers: Sequence[Speaker], branches: int) -> list[IdentityTokens]:
        """Project the speakers' audio and face tokens into DiT width, once for ``branches`` rows.

        An all-zero audio row (the unconditional branch) is projected once and shared by every identity
        and branch that has it; for the fused variant from a single video frame (``[1, 1, tokens, dim]``),
        since every frame of zero features gives the same tokens.
        """
        cfg = self.config
        zero: dict[tuple, torch.Tensor] = {}
        out = []
        for s in speakers:
            rows = []
            for b in range(branches):
                audio = s.audio if s.audio.shape[0] == 1 else s.audio[b:b + 1]
                if not audio.any():
                    key = tuple(audio.shape)
                    if key not in zero:
                        zero[key] = self._embed_audio(audio[:, :1] if cfg.afca == "fused" else audio)
                    rows.append(zero[key])
                elif s.audio.shape[0] == 1 and rows:
                    rows.append(rows[0])
                else:
                    rows.append(self._embed_audio(audio))
            out.append(IdentityTokens(audio=rows, face=self.audio_ref_emb(s.face_clip),
                                      mask=flatten_token_mask(s.token_mask)))
        return out

    def _embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``[1, T, W, L, C]`` windowed features -> fused ``[1, T, tokens, dim]`` / legacy ``[1, F, tokens, d]``."""
        if self.config.afca == "fused":
            return self.audio_emb(audio)
        return self.audio_proj(*audio_window_for_latent_frames(audio, self.config.vae_scale))

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

    def condition(self, context: torch.Tensor, clip_fea: torch.Tensor, speakers: Sequence[Speaker] = (),
                  *, cache_kv: bool = False) -> PreparedConditioning:
        """Prepare the conditioning of ``K = context.shape[0]`` branches (see :mod:`.prepared`).

        context ``[K, L<=text_len, text_dim]``; clip_fea ``[1 or K, 257, clip_dim]``; each speaker's
        audio ``[1 or K, T, W, L, C]``, face_clip and token_mask with batch 1 or K (batch 1 = the same
        for every branch). ``cache_kv`` also computes every block's keys/values now, so that the
        forward passes of a whole sampling run reuse them (:meth:`PreparedConditioning.nbytes` tells their size).
        """
        branches = context.shape[0]
        text = self.embed_text(context)
        image = self.img_emb(clip_fea)
        if self.config.afca == "legacy":  # reference quirk: the text attention also sees the CLIP tokens
            text = torch.cat([image.expand(branches, *image.shape[1:]), text], dim=1)
        cond = PreparedConditioning(branches=branches, text=text, image=image,
                            identities=self.embed_identities(speakers, branches))
        if cache_kv:
            cond.blocks = [block.project(cond) for block in self.blocks]
            if not torch.is_grad_enabled():  # the blocks read only their keys/values now
                cond.text = cond.image = None
                cond.identities = []
            log.debug("conditioning of %d branch(es) prepared: %.1f MiB", branches, cond.nbytes() / 2**20)
        return cond

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Complex RoPE rotations ``[F*h*w, 1, head_dim/2]`` of a token grid (kept for the last grid used)."""
        key = (grid, str(device))
        if getattr(self, "_rope_key", None) != key:
            self._rope_value = rope_rotation(rope_angles(grid, self.config.head_dim, device=device))
            self._rope_key = key
        return self._rope_value

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
        return self.forward_conditioned(x, t, y, self.condition(context, clip_fea, speakers))

    def forward_conditioned(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                            cond: PreparedConditioning) -> torch.Tensor:
        """The velocity of ``K = cond.branches`` rows from a prepared :class:`PreparedConditioning`.

        x ``[1 or K, 16, F, H, W]`` (batch 1: one latent for every branch, as in guided sampling),
        t ``[1]`` or ``[K]``, y ``[1 or K, 20, F, H, W]`` -> ``[K, 16, F, H, W]`` float32. A batch-1
        x with a single t runs the first block's self-attention once for all branches.
        """
        with use_attention_backend(self._attention_backend):
            return self._forward_conditioned(x, t, y, cond)

    def _forward_conditioned(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                             cond: PreparedConditioning) -> torch.Tensor:
        cfg = self.config
        h = self.patch_embedding(torch.cat([x, y.expand(x.shape[0], *y.shape[1:])], dim=1).to(self.dtype))
        grid = tuple(h.shape[2:])
        frames = grid[0]
        tokens = h.flatten(2).transpose(1, 2).contiguous().float()  # [B, S, dim] float32 residual stream
        del h
        rope = self.rope(grid, x.device)
        split = sequence_split(grid)  # sequence parallelism: this process's latent frames (else all tokens)
        tokens, rope = split.local(tokens, 1), split.local(rope, 0)
        t = t.reshape(-1)
        if t.numel() == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        e, e0 = self.embed_time(t)
        if t.numel() > tokens.shape[0]:  # one latent, per-branch timesteps
            tokens = tokens.expand(t.numel(), *tokens.shape[1:])

        for i, block in enumerate(self.blocks):
            kv = cond.blocks[i] if cond.blocks is not None else None
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(self._run_block, block, tokens, e0, rope, cond, kv, frames, split,
                                    use_reentrant=False)
            else:
                tokens = self._run_block(block, tokens, e0, rope, cond, kv, frames, split)
        out = split.gather(self.head(tokens, e), 1)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_dim)

    @staticmethod
    def _run_block(block: Block, tokens: torch.Tensor, e0: torch.Tensor, rope: torch.Tensor, cond: PreparedConditioning,
                   kv: BlockKV | None, frames: int, split) -> torch.Tensor:
        with use_sequence_parallel(split):  # also when recomputed in the backward pass
            return block(tokens, e0, rope, kv, frames, cond=cond if kv is None else None)

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
