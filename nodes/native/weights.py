"""An AnyTalker checkpoint as ComfyUI's own Wan MODEL.

The Wan2.1 I2V trunk of the checkpoint goes through ComfyUI's loader (``comfy.sd.load_diffusion_model_state_dict``:
its model detection, weight dtype choice, fp8 options, operations and :class:`ModelPatcher`). The AnyTalker
weights (AFCA, audio projection, face projection) are then registered as extra sub-modules of that same
``WanModel``, under their released key names and built from ComfyUI's operations. So ComfyUI's model
management loads, offloads, casts (lowvram) and LoRA-patches them with the trunk, and the diffusion model's
state dict is the released checkpoint key for key.

Fused AFCA (1.3B): ``blocks.N.cross_attn.{k_audio, v_audio, k_face, v_face, norm_k_audio, norm_k_face}``,
``audio_emb``, ``audio_ref_emb``. Legacy (14B): ``blocks.N.norm_x``, ``blocks.N.audio_cross_attn``,
``audio_proj``, ``audio_ref_emb``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from anytalker_core.errors import CheckpointError
from anytalker_core.model.afca import LegacyAudioCrossAttention
from anytalker_core.model.checkpoint import read_state_dict, resolve_config
from anytalker_core.model.config import AnyTalkerConfig, read_config_json
from anytalker_core.model.norms import RMSNorm
from anytalker_core.model.projections import AudioProjection, LegacyAudioProjection

log = logging.getLogger(__name__)

#: the attribute of the ComfyUI ``WanModel`` that holds the loaded model's AnyTalker config
CONFIG_ATTR = "anytalker_config"


# ------------------------------------------------------------------------------------ layer classes
def comfy_ops_of(diffusion_model: nn.Module) -> SimpleNamespace:
    """The ComfyUI operation classes the trunk was built with (plain, manual-cast, fp8, ...).

    Read off the trunk's own layers, so the AnyTalker layers get exactly the same casting and offload
    behaviour as the Wan blocks they sit in.
    """
    block = diffusion_model.blocks[0]
    return SimpleNamespace(Linear=type(block.cross_attn.q), LayerNorm=type(block.norm1),
                           RMSNorm=type(block.cross_attn.norm_q) if not isinstance(block.cross_attn.norm_q, nn.Identity)
                           else None)


def _comfy_leaf(layer: nn.Module, ops: SimpleNamespace, dtype: torch.dtype, compute_dtype: torch.dtype) -> nn.Module | None:
    """The ComfyUI-op equivalent of one core leaf layer (same parameters, same math), or None."""
    if isinstance(layer, nn.Linear):
        new = ops.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=dtype)
    elif isinstance(layer, nn.LayerNorm):
        new = ops.LayerNorm(layer.normalized_shape, eps=layer.eps, elementwise_affine=layer.elementwise_affine,
                            dtype=dtype)
    elif isinstance(layer, RMSNorm):
        new = ops.RMSNorm(layer.weight.shape[0], eps=layer.eps, elementwise_affine=True, dtype=dtype)
    else:
        return None
    new.compute_dtype = compute_dtype  # read by anytalker_core.model.quantization.linear_compute_dtype
    return new


def with_comfy_layers(module: nn.Module, ops: SimpleNamespace, dtype: torch.dtype, compute_dtype: torch.dtype) -> nn.Module:
    """Replace every Linear / LayerNorm / RMSNorm inside a core module by ComfyUI's op of the same shape.

    The core module keeps its ``forward`` (the math is the core's); its leaves become ComfyUI layers
    that cast their weights to the input's device and dtype as ComfyUI's model management requires.
    """
    for name, child in list(module.named_children()):
        new = _comfy_leaf(child, ops, dtype, compute_dtype)
        if new is None:
            with_comfy_layers(child, ops, dtype, compute_dtype)
        else:
            setattr(module, name, new)
    return module


# ------------------------------------------------------------------------------------ the add-on
def add_anytalker_modules(diffusion_model: nn.Module, cfg: AnyTalkerConfig, dtype: torch.dtype,
                          compute_dtype: torch.dtype) -> list[str]:
    """Register the AnyTalker layers on ComfyUI's ``WanModel`` (uninitialised); returns their state-dict keys."""
    from comfy.ldm.wan.model import MLPProj

    ops = comfy_ops_of(diffusion_model)
    settings = {"operations": ops, "device": None, "dtype": dtype}
    before = set(diffusion_model.state_dict())
    for block in diffusion_model.blocks:
        if cfg.afca == "fused":
            ca = block.cross_attn
            for name in ("k_audio", "v_audio", "k_face", "v_face"):
                layer = ops.Linear(cfg.dim, cfg.dim, dtype=dtype)
                layer.compute_dtype = compute_dtype
                setattr(ca, name, layer)
            for name in ("norm_k_audio", "norm_k_face"):
                setattr(ca, name, ops.RMSNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True, dtype=dtype)
                        if cfg.qk_norm else nn.Identity())
        else:
            block.norm_x = ops.LayerNorm(cfg.dim, cfg.eps, elementwise_affine=True, dtype=dtype)
            with torch.device("meta"):
                sublayer = LegacyAudioCrossAttention(cfg.dim, cfg.num_heads, cfg.audio_output_dim)
            block.audio_cross_attn = with_comfy_layers(sublayer, ops, dtype, compute_dtype)
    with torch.device("meta"):
        if cfg.afca == "fused":
            projection = AudioProjection(cfg.audio_frame_features, cfg.audio_intermediate_dim,
                                         cfg.audio_context_tokens, cfg.dim)
        else:
            latter_rows = 2 * (cfg.audio_window // 2 + 1) + cfg.vae_scale - 2
            projection = LegacyAudioProjection(
                cfg.audio_frame_features, latter_rows * cfg.audio_layers * cfg.audio_channels,
                cfg.audio_intermediate_dim, cfg.audio_context_tokens, cfg.audio_output_dim)
    setattr(diffusion_model, "audio_emb" if cfg.afca == "fused" else "audio_proj",
            with_comfy_layers(projection, ops, dtype, compute_dtype))
    diffusion_model.audio_ref_emb = MLPProj(cfg.clip_dim, cfg.dim, operation_settings=settings)
    setattr(diffusion_model, CONFIG_ATTR, cfg)
    return sorted(set(diffusion_model.state_dict()) - before)


def anytalker_keys(cfg: AnyTalkerConfig) -> set[str]:
    """The state-dict keys of the AnyTalker add-on for ``cfg`` (computed on the meta device)."""
    from anytalker_core.model.dit import AnyTalkerDiT

    with torch.device("meta"):
        full = set(AnyTalkerDiT(cfg).state_dict())
    prefixes = ("audio_emb.", "audio_proj.", "audio_ref_emb.")
    names = (".cross_attn.k_audio.", ".cross_attn.v_audio.", ".cross_attn.k_face.", ".cross_attn.v_face.",
             ".cross_attn.norm_k_audio.", ".cross_attn.norm_k_face.", ".norm_x.", ".audio_cross_attn.")
    return {k for k in full if k.startswith(prefixes) or any(n in k for n in names)}


# ------------------------------------------------------------------------------------ config
def find_released_config(path: Path, sd: Mapping[str, torch.Tensor]) -> Path | None:
    """A ``config_af2v_*.json`` beside the weights that describes them (same variant and width).

    The release ships ``config_af2v_1_3B.json`` / ``config_af2v_14B.json`` next to ``1_3B-single-v1.pth`` /
    ``14B-multi-v1.pth``; with both in one folder, the one whose AFCA variant and ``dim`` match the
    weights is taken.
    """
    fused = "blocks.0.cross_attn.k_audio.weight" in sd
    dim = int(sd["patch_embedding.weight"].shape[0]) if "patch_embedding.weight" in sd else None
    matches = []
    for candidate in sorted(path.parent.glob("config_af2v_*.json")):
        try:
            fields = read_config_json(candidate)
        except CheckpointError:
            continue
        if (fields.get("afca") == "fused") == fused and fields.get("dim", dim) == dim:
            matches.append(candidate)
    if len(matches) > 1:
        raise CheckpointError(f"checkpoint '{path}': several configs beside it fit the weights "
                              f"({', '.join(m.name for m in matches)}); keep one, or name it <model>.json")
    return matches[0] if matches else None


def comfy_transformer_config(cfg: AnyTalkerConfig) -> dict[str, Any]:
    """What ComfyUI's Wan detection cannot read from shapes (it assumes 128-wide heads, eps 1e-6 and T5-XXL text)."""
    if tuple(cfg.patch_size) != (1, 2, 2):
        raise CheckpointError(f"config: patch size {cfg.patch_size} is not Wan2.1's (1, 2, 2); ComfyUI's Wan "
                              "model cannot run it")
    if cfg.clip_dim != 1280:
        raise CheckpointError(f"config: CLIP width {cfg.clip_dim}; ComfyUI's Wan model takes CLIP ViT-H/14 "
                              "tokens (1280 wide) only")
    return {"num_heads": cfg.num_heads, "eps": cfg.eps, "qk_norm": cfg.qk_norm,
            "cross_attn_norm": cfg.cross_attn_norm, "freq_dim": cfg.freq_dim, "text_len": cfg.text_len,
            "text_dim": cfg.text_dim}


# ------------------------------------------------------------------------------------ the loader
def load_native_model(path: str | Path, config_path: str | Path | None = None,
                      model_options: dict | None = None, disable_dynamic: bool = True):
    """Load an AnyTalker checkpoint (released ``.pth`` or ``.safetensors``) as a ComfyUI Wan ``ModelPatcher``.

    ``model_options`` are ComfyUI's (``dtype`` e.g. ``torch.float8_e4m3fn``, ``fp8_optimizations``,
    ``custom_operations``...), as the core ``Load Diffusion Model`` node passes them.
    ``disable_dynamic`` (default): ComfyUI's classic ``ModelPatcher`` (partial loading, offloading, LoRA
    patches — what the tests verify) rather than the DynamicVRAM patcher of CUDA machines with comfy-aimdo,
    which has not been tried with the added AnyTalker layers.
    """
    import comfy.model_management as mm
    import comfy.sd

    path = Path(path)
    model_options = dict(model_options or {})
    sd, hints = read_state_dict(path)
    if config_path is None and not hints:
        config_path = find_released_config(path, sd)
    cfg = resolve_config(path, sd, hints, config_path)
    extra_keys = anytalker_keys(cfg)
    trunk = {k: v for k, v in sd.items() if k not in extra_keys}
    extra = {k: v for k, v in sd.items() if k in extra_keys}
    metadata = {"config": json.dumps({"transformer": comfy_transformer_config(cfg)})}
    patcher = comfy.sd.load_diffusion_model_state_dict(trunk, model_options=model_options, metadata=metadata,
                                                       disable_dynamic=disable_dynamic)
    if patcher is None:
        raise CheckpointError(f"checkpoint '{path}': ComfyUI does not recognise its Wan2.1 trunk")
    base = patcher.model
    dm = base.diffusion_model
    dtype = base.get_dtype()
    compute = base.get_dtype_inference()
    added = add_anytalker_modules(dm, cfg, dtype=dtype, compute_dtype=compute)
    missing = sorted(set(added) - set(extra))
    if missing:
        raise CheckpointError(f"checkpoint '{path}': AnyTalker weights missing: {', '.join(missing[:8])}")
    dm.load_state_dict(extra, strict=False)
    _check_complete(dm, sd, path)
    mm.archive_model_dtypes(dm)
    patcher.size = mm.module_size(patcher.model)
    patcher.cached_patcher_init = (load_native_model, (str(path), config_path and str(config_path), model_options))
    log.info("AnyTalker %s (%s AFCA, dim %d, %d layers) loaded as ComfyUI's Wan model, weights %s, compute %s",
             path.name, cfg.afca, cfg.dim, cfg.num_layers, dtype, compute)
    return patcher


def _check_complete(dm: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Every checkpoint tensor landed in the model and every model weight came from the checkpoint."""
    have = set(dm.state_dict())
    missing = sorted(have - set(sd))
    unused = sorted(set(sd) - have)
    if missing or unused:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit ComfyUI's Wan model with AnyTalker layers: "
            + "; ".join(p for p in (f"model weights not in the file: {', '.join(missing[:8])}" if missing else "",
                                    f"file tensors not used: {', '.join(unused[:8])}" if unused else "") if p))
