"""AFCA inside ComfyUI's own Wan blocks, through ComfyUI's patch hooks.

Three hooks, all put on a clone of the MODEL by :func:`patch_model`:

* a ``DIFFUSION_MODEL`` wrapper (:class:`AnyTalkerForward`) projects every person's audio and face tokens
  once per model call, with the layers registered on the ``WanModel`` (:mod:`.weights`), and hands them
  to the blocks in ``transformer_options``. Batch entries of the unconditional branch
  (``transformer_options["cond_or_uncond"]``) get zeroed audio, as the reference's null branch, and so
  do the entries listed in ``transformer_options[ZERO_AUDIO]`` (the text-only branch of :mod:`.guider`).
* fused AFCA (1.3B): it sits inside cross-attention and shares its query, so each block is replaced
  (``patches_replace["dit"][("double_block", i)]``) by :func:`fused_block`, the stock block computed
  from the block's own layers with ``o(text + image + Σ_i mask_i ⊙ AFCA_i)`` as cross-attention.
* legacy AFCA (14B): an ``attn2_patch`` (after cross-attention, before the FFN, where MultiTalk's audio
  layer sits) adds ``audio_cross_attn(norm_x(x))``; a block replacement gives the text attention the CLIP
  tokens in front of the text, as the reference's 14B code does.

The AFCA math is ``anytalker_core.model.afca`` (``fused_afca_sum``, ``LegacyAudioCrossAttention``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from anytalker_core.errors import InputError
from anytalker_core.model.afca import IdentityTokens, fused_afca_sum, project_fused_identities
from anytalker_core.model.layout import (
    audio_window_for_latent_frames,
    flatten_token_mask,
)
from anytalker_core.model.speaker import Speaker

from .weights import CONFIG_ATTR

#: transformer_options key of the per-call :class:`ForwardState`
STATE = "anytalker"
#: transformer_options entry: uuids of conditioning entries that get zeroed audio (text-only guidance branch)
ZERO_AUDIO = "anytalker_zero_audio"
WRAPPER_KEY = "anytalker_afca"
UNCOND = 1  # ComfyUI's cond_or_uncond marker of the negative branch


@dataclass
class ForwardState:
    """What the blocks need during one model call."""

    model: nn.Module  # ComfyUI's WanModel with the AnyTalker layers
    identities: list[IdentityTokens]
    frames: int  # latent frames
    image_tokens: int  # CLIP image tokens at the front of the context (257)


def audio_enabled(transformer_options: dict, batch: int) -> torch.Tensor:
    """``[B]`` bool: which batch entries get the real audio.

    ComfyUI batches the conditionings of one model call in chunks; ``cond_or_uncond[i]`` is the index of
    chunk ``i``'s conditioning in the sampler's list (1 = the negative one) and ``uuids[i]`` its entry's
    id. A chunk gets zeroed audio when it is the negative branch or its uuid is listed in
    ``transformer_options[ZERO_AUDIO]`` (the text-only branch of :class:`.guider.AnyTalkerGuider`).
    """
    marks = transformer_options.get("cond_or_uncond")
    if not marks:
        return torch.ones(batch, dtype=torch.bool)
    if batch % len(marks):
        raise RuntimeError(f"AnyTalker: batch of {batch} does not split into {len(marks)} conditioning chunks")
    silent = transformer_options.get(ZERO_AUDIO, ())
    uuids = transformer_options.get("uuids") or [None] * len(marks)
    per = batch // len(marks)
    return torch.tensor([m != UNCOND and u not in silent for m, u in zip(marks, uuids) for _ in range(per)],
                        dtype=torch.bool)


def embed_identities(dm: nn.Module, speakers: Sequence[Speaker], enabled: torch.Tensor,
                     device: torch.device, dtype: torch.dtype) -> list[IdentityTokens]:
    """Each person's audio/face tokens in DiT width for a batch of ``len(enabled)`` entries.

    ``speaker.audio [1, T, W, L, C]`` → fused ``[B, T, tokens, dim]`` / legacy ``[B, F, tokens, audio_dim]``;
    ``face_clip [1, 257, clip_dim]`` → ``[B, 257, dim]``; ``token_mask [1, F, h, w]`` → ``[B, F*h*w, 1]``.
    Entries with ``enabled`` False get zero wav2vec features (before projection, as the reference).
    """
    cfg = getattr(dm, CONFIG_ATTR)
    b = int(enabled.shape[0])
    keep = enabled.to(device).view(b, 1, 1, 1, 1)
    out = []
    for s in speakers:
        audio = s.audio.to(device=device, dtype=dtype).expand(b, *s.audio.shape[1:])
        audio = torch.where(keep, audio, torch.zeros((), device=device, dtype=dtype))
        if cfg.afca == "fused":
            tokens = dm.audio_emb(audio)
        else:
            tokens = dm.audio_proj(*audio_window_for_latent_frames(audio, cfg.vae_scale))
        face = dm.audio_ref_emb(s.face_clip.to(device=device, dtype=dtype)).expand(b, -1, -1)
        mask = flatten_token_mask(s.token_mask.to(device=device, dtype=dtype)).expand(b, -1, -1)
        out.append(IdentityTokens(audio=list(tokens.split(1)), face=face, mask=mask))  # audio per batch entry
    return out


class AnyTalkerForward:
    """``WrappersMP.DIFFUSION_MODEL`` wrapper: the identities' tokens for this call → ``transformer_options``."""

    def __init__(self, speakers: Sequence[Speaker]):
        self.speakers = list(speakers)

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                 transformer_options={}, **kwargs):  # noqa: B006 - ComfyUI's own signature
        dm = executor.class_obj
        if clip_fea is None:
            raise InputError("AnyTalker: the conditioning has no CLIP vision output; build it with "
                             "AnyTalker To Video (native)")
        enabled = audio_enabled(transformer_options, x.shape[0])
        identities = embed_identities(dm, self.speakers, enabled, x.device, x.dtype)
        options = dict(transformer_options)
        options[STATE] = ForwardState(model=dm, identities=identities, frames=x.shape[2],
                                      image_tokens=clip_fea.shape[-2])
        return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            self.speakers = [dataclasses.replace(s, audio=s.audio.to(device_or_dtype),
                                                 face_clip=s.face_clip.to(device_or_dtype),
                                                 token_mask=s.token_mask.to(device_or_dtype)) for s in self.speakers]
        return self


# ------------------------------------------------------------------------------------ fused AFCA
def fused_cross_attention(ca: nn.Module, x: torch.Tensor, context: torch.Tensor, image_tokens: int,
                          state: ForwardState, transformer_options: dict) -> torch.Tensor:
    """ComfyUI's ``WanI2VCrossAttention`` plus fused AFCA on the shared query, before the output projection."""
    from comfy.ldm.modules.attention import optimized_attention

    context_img, context = context[:, :image_tokens], context[:, image_tokens:]
    q = ca.norm_q(ca.q(x))
    k, v = ca.norm_k(ca.k(context)), ca.v(context)
    k_img, v_img = ca.norm_k_img(ca.k_img(context_img)), ca.v_img(context_img)
    img_x = optimized_attention(q, k_img, v_img, heads=ca.num_heads, transformer_options=transformer_options)
    out = optimized_attention(q, k, v, heads=ca.num_heads, transformer_options=transformer_options) + img_x
    kv = project_fused_identities(state.identities, ca.k_audio, ca.v_audio, ca.k_face, ca.v_face,
                                  ca.norm_k_audio, ca.norm_k_face, ca.num_heads)
    afca = fused_afca_sum(q.unflatten(-1, (ca.num_heads, -1)), kv, x.shape[0], state.frames,
                          getattr(state.model, CONFIG_ATTR).vae_scale)
    if afca is not None:
        out = out + afca.to(out.dtype)
    return ca.o(out)


def fused_block(block: nn.Module, x: torch.Tensor, e: torch.Tensor, freqs: torch.Tensor, context: torch.Tensor,
                state: ForwardState, transformer_options: dict) -> torch.Tensor:
    """ComfyUI's ``WanAttentionBlock.forward`` with :func:`fused_cross_attention` as its cross-attention."""
    import comfy.model_management as mm
    from comfy.ldm.wan.model import repeat_e

    modulation = mm.cast_to(block.modulation, dtype=x.dtype, device=x.device)
    e = (modulation + e).chunk(6, dim=1) if e.ndim < 4 else (modulation.unsqueeze(0) + e).unbind(2)
    x = x.contiguous()
    y = block.self_attn(torch.addcmul(repeat_e(e[0], x), block.norm1(x), 1 + repeat_e(e[1], x)), freqs,
                        transformer_options=transformer_options)
    x = torch.addcmul(x, y, repeat_e(e[2], x))
    x = x + fused_cross_attention(block.cross_attn, block.norm3(x), context, state.image_tokens, state,
                                  transformer_options)
    for patch in transformer_options.get("patches", {}).get("attn2_patch", []):
        x = patch({"x": x, "transformer_options": transformer_options})
    y = block.ffn(torch.addcmul(repeat_e(e[3], x), block.norm2(x), 1 + repeat_e(e[4], x)))
    return torch.addcmul(x, y, repeat_e(e[5], x))


class FusedAfcaBlock:
    """``patches_replace["dit"][("double_block", i)]`` for the fused variant."""

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        state: ForwardState | None = options.get(STATE)
        if state is None:  # not an AnyTalker call (no conditioning node): plain Wan I2V block
            return extra["original_block"](args)
        block = state.model.blocks[options["block_index"]]
        return {"img": fused_block(block, args["img"], args["vec"], args["pe"], args["txt"], state, options)}


# ------------------------------------------------------------------------------------ legacy AFCA
class LegacyTextBlock:
    """Block replacement for the legacy variant: the text attention sees ``[CLIP tokens; text]``.

    The reference's 14B code concatenates the image tokens in front of the text for the text attention
    (and still runs the separate image attention); the stock block is called with that context.
    """

    def __call__(self, args: dict, extra: dict) -> dict:
        state: ForwardState | None = args["transformer_options"].get(STATE)
        if state is None:
            return extra["original_block"](args)
        txt = args["txt"]
        n = state.image_tokens
        return extra["original_block"]({**args, "txt": torch.cat([txt[:, :n], txt], dim=1)})


class LegacyAudioPatch:
    """``attn2_patch``: ``x + audio_cross_attn(norm_x(x))`` in the block being run (legacy variant)."""

    def __call__(self, kwargs: dict) -> torch.Tensor:
        x = kwargs["x"]
        options = kwargs["transformer_options"]
        state: ForwardState | None = options.get(STATE)
        if state is None or not state.identities:
            return x
        block = state.model.blocks[options["block_index"]]
        layer = block.audio_cross_attn
        return x + layer(block.norm_x(x), layer.project(state.identities), state.frames).to(x.dtype)


# ------------------------------------------------------------------------------------ apply
def is_anytalker_model(model_patcher) -> bool:
    return hasattr(model_patcher.model.diffusion_model, CONFIG_ATTR)


def patch_model(model_patcher, speakers: Sequence[Speaker]):
    """A clone of the AnyTalker MODEL that runs AFCA for ``speakers`` (identity order)."""
    import comfy.patcher_extension

    if not is_anytalker_model(model_patcher):
        raise InputError("model: not an AnyTalker model; load it with Load AnyTalker Diffusion Model (native)")
    cfg = getattr(model_patcher.model.diffusion_model, CONFIG_ATTR)
    model = model_patcher.clone()
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                               AnyTalkerForward(speakers))
    block = FusedAfcaBlock() if cfg.afca == "fused" else LegacyTextBlock()
    for i in range(cfg.num_layers):
        model.set_model_patch_replace(block, "dit", "double_block", i)
    attn2 = model.model_options["transformer_options"].get("patches", {}).get("attn2_patch", [])
    if cfg.afca == "legacy" and not any(isinstance(p, LegacyAudioPatch) for p in attn2):
        model.set_model_attn2_patch(LegacyAudioPatch())
    return model
