"""CLIP ViT-H/14 image encoder (Wan2.1's open-clip XLM-RoBERTa ViT-H/14 vision tower), run by transformers.

Accepted weights (layout read from key names, sizes from shapes):

* ComfyUI: ``models/clip_vision/clip_vision_h.safetensors`` -- transformers ``CLIPVisionModel`` names
  (``vision_model.embeddings.patch_embedding.weight``, ``vision_model.encoder.layers.{i}.self_attn.q_proj`` ...,
  plus ``visual_projection.weight``, unused here).
* Wan / Wan2.1-Fun: ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (``visual.patch_embedding``,
  ``visual.transformer.{i}.attn.to_qkv`` ...; the text tower is ignored).

:meth:`ClipVisionEncoder.encode` reproduces Wan's ``CLIPModel.visual``: the image is taken to ``-1..1``, resized
to the model's square input (224) with bicubic interpolation (``align_corners=False``, no antialias, no crop --
the aspect ratio is not kept), mapped back to ``0..1``, normalised with the OpenAI CLIP mean/std, and the output is
the hidden states after all but the last transformer block (``use_31_block=True`` = ``hidden_states[-2]``, no
final LayerNorm): ``[B, 257, 1280]`` for ViT-H/14.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from ..io.weights import (LazyStateDict, describe_checkpoint, is_quant_key, load_into_empty, strip_prefix,
                          to_compute_dtype)

log = logging.getLogger(__name__)

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipVisionEncoder", "load_clip_vision", "make_tiny_clip_vision", "reference_pixels"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_WHAT = "CLIP vision model"
_HF_SIGNATURE = "embeddings.patch_embedding.weight"
_WAN_SIGNATURE = "transformer.0.attn.to_qkv.weight"
#: attention heads of the known CLIP towers (not recoverable from tensor shapes)
_KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_HEADS_METADATA_KEY = "num_attention_heads"


def _wan_to_hf(sd, prefix: str, dtype: torch.dtype, path: Path) -> dict[str, torch.Tensor]:
    """Wan ``XLMRobertaCLIP.visual`` keys (``prefix`` = ``"visual."`` or a bare visual tower's ``""``) ->
    ``CLIPVisionModel`` keys (without ``vision_model.``)."""
    out: dict[str, torch.Tensor] = {}

    def get(key: str) -> torch.Tensor:
        return to_compute_dtype(sd, prefix + key, dtype, _WHAT, path)

    try:
        out["embeddings.patch_embedding.weight"] = get("patch_embedding.weight")
        out["embeddings.class_embedding"] = get("cls_embedding").reshape(-1)
        pos = get("pos_embedding")
        out["embeddings.position_embedding.weight"] = pos.reshape(pos.shape[-2], pos.shape[-1])
        for name in ("weight", "bias"):
            out[f"pre_layrnorm.{name}"] = get(f"pre_norm.{name}")
            out[f"post_layernorm.{name}"] = get(f"post_norm.{name}")
        pattern = re.compile(re.escape(prefix) + r"transformer\.(\d+)\.")
        layers = sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})
        for i in layers:
            src, dst = f"transformer.{i}.", f"encoder.layers.{i}."
            for name in ("weight", "bias"):
                q, k, v = get(f"{src}attn.to_qkv.{name}").chunk(3, dim=0)
                out[f"{dst}self_attn.q_proj.{name}"] = q.contiguous()
                out[f"{dst}self_attn.k_proj.{name}"] = k.contiguous()
                out[f"{dst}self_attn.v_proj.{name}"] = v.contiguous()
                out[f"{dst}self_attn.out_proj.{name}"] = get(f"{src}attn.proj.{name}")
                out[f"{dst}layer_norm1.{name}"] = get(f"{src}norm1.{name}")
                out[f"{dst}layer_norm2.{name}"] = get(f"{src}norm2.{name}")
                out[f"{dst}mlp.fc1.{name}"] = get(f"{src}mlp.0.{name}")
                out[f"{dst}mlp.fc2.{name}"] = get(f"{src}mlp.2.{name}")
    except KeyError as exc:
        raise CheckpointError(f"{_WHAT}: {path} lacks the Wan open-clip weight {exc}") from exc
    return out


def hf_to_wan_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPVisionModel`` keys (without ``vision_model.``) -> Wan ``visual.*`` keys (writes Wan-layout test files)."""
    out = {
        "visual.patch_embedding.weight": hf["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": hf["embeddings.class_embedding"].reshape(1, 1, -1),
        "visual.pos_embedding": hf["embeddings.position_embedding.weight"].unsqueeze(0),
    }
    for name in ("weight", "bias"):
        out[f"visual.pre_norm.{name}"] = hf[f"pre_layrnorm.{name}"]
        out[f"visual.post_norm.{name}"] = hf[f"post_layernorm.{name}"]
    layers = sorted({int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for name in ("weight", "bias"):
            out[f"{dst}attn.to_qkv.{name}"] = torch.cat(
                [hf[f"{src}self_attn.{p}_proj.{name}"] for p in ("q", "k", "v")], dim=0
            )
            out[f"{dst}attn.proj.{name}"] = hf[f"{src}self_attn.out_proj.{name}"]
            out[f"{dst}norm1.{name}"] = hf[f"{src}layer_norm1.{name}"]
            out[f"{dst}norm2.{name}"] = hf[f"{src}layer_norm2.{name}"]
            out[f"{dst}mlp.0.{name}"] = hf[f"{src}mlp.fc1.{name}"]
            out[f"{dst}mlp.2.{name}"] = hf[f"{src}mlp.fc2.{name}"]
    return out


def _canonical_state_dict(sd: LazyStateDict, path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Any accepted layout -> ``CLIPVisionModel`` keys without the ``vision_model.`` prefix."""
    keys = list(sd.keys())
    prefix = strip_prefix(keys, _WAN_SIGNATURE)  # Wan's open-clip tower: 'visual.' + its own names
    if prefix is not None and prefix + "cls_embedding" in sd:
        return _wan_to_hf(sd, prefix, dtype, path)
    prefix = strip_prefix(keys, _HF_SIGNATURE)
    if prefix is not None:
        return {
            key[len(prefix):]: to_compute_dtype(sd, key, dtype, _WHAT, path)
            for key in keys
            if key.startswith(prefix) and not is_quant_key(key) and not key.endswith("position_ids")
            and key[len(prefix):].startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm."))
        }
    raise CheckpointError(
        f"{path} is not a {_WHAT}: it looks like {describe_checkpoint(keys)}. Expected ComfyUI's "
        f"clip_vision_h.safetensors (keys like 'vision_model.{_HF_SIGNATURE}') or Wan's "
        f"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (keys like 'visual.{_WAN_SIGNATURE}'), "
        f"in models/clip_vision/."
    )


def _default_heads(hidden: int) -> int:
    """Heads implied by a width: the known towers, else head width 64 (or 16 for tiny test widths)."""
    if hidden in _KNOWN_HEADS:
        return _KNOWN_HEADS[hidden]
    head_dim = 64 if hidden % 64 == 0 else 16 if hidden % 16 == 0 else hidden
    return hidden // head_dim


def _num_heads(hidden: int, metadata: dict[str, str], path: Path) -> int:
    if _HEADS_METADATA_KEY in metadata:
        return int(metadata[_HEADS_METADATA_KEY])
    heads = _default_heads(hidden)
    if hidden not in _KNOWN_HEADS:
        log.warning("%s: %s has an unusual width %d; assuming %d attention heads", _WHAT, path, hidden, heads)
    return heads


def _config_from_state_dict(state: dict[str, torch.Tensor], metadata: dict[str, str], path: Path):
    """``(CLIPVisionConfig with all but the last block, total blocks, positions)`` from tensor shapes."""
    from transformers import CLIPVisionConfig

    try:
        hidden, _, patch, _ = state["embeddings.patch_embedding.weight"].shape
        positions = int(state["embeddings.position_embedding.weight"].shape[0])
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
        intermediate = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{_WHAT}: {path} lacks the weight {exc} needed to infer the model size") from exc
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"{_WHAT}: {path}: {positions} position embeddings is not 1 + a square grid")
    if layers < 2:
        raise CheckpointError(f"{_WHAT}: {path} has {layers} transformer block(s); the penultimate output needs ≥ 2")
    config = CLIPVisionConfig(
        hidden_size=int(hidden), intermediate_size=int(intermediate), num_hidden_layers=layers - 1,
        num_attention_heads=_num_heads(int(hidden), metadata, path), image_size=int(grid * patch),
        patch_size=int(patch), hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3,
    )
    return config, layers, positions


class ClipVisionEncoder:
    """Penultimate-layer CLIP image tokens, preprocessed exactly as Wan2.1 does.

    Attributes:
        hidden_size: token width (1280 for ViT-H/14; the DiT's ``img_emb``/``audio_ref_emb`` input width).
        num_tokens: tokens per image (257 = 1 class token + 16×16 patches for ViT-H/14 at 224 px).
        image_size: the square input size the image is resized to (224).
    """

    def __init__(self, model: torch.nn.Module, image_size: int, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.image_size = image_size
        self.device = device
        self.dtype = dtype
        config = model.config
        self.hidden_size = int(config.hidden_size)
        self.num_tokens = (image_size // int(config.patch_size)) ** 2 + 1

    def to(self, device: str | torch.device) -> ClipVisionEncoder:
        """Move the model to ``device`` (for offloading between stages); returns ``self``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, H, W, 3]`` in 0..1 (or uint8) -> normalised pixels ``[B, 3, S, S]`` float32 (S = 224)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"CLIP vision: images must be a tensor [B, H, W, 3] (RGB, channels last), got {shape}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise InputError(f"CLIP vision: images must be float in 0..1 or uint8, got {images.dtype}")
        images = images.float()
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise InputError(f"CLIP vision: image values must lie in 0..1, got {lo:.3g}..{hi:.3g}")
        return reference_pixels(images.to(self.device), self.image_size)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, H, W, 3]`` in 0..1 -> penultimate tokens ``[B, num_tokens, hidden_size]`` float32."""
        pixels = self.preprocess(images).to(self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state.float()


def reference_pixels(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                     std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Wan's CLIP input: ``images [B, H, W, 3]`` float 0..1 -> normalised pixels ``[B, 3, size, size]``.

    The reference resizes the -1..1 image to the square input with bicubic interpolation (no crop, no
    antialias) and normalises it; the resized values are neither clamped nor rounded. (ComfyUI's own
    ``clip_preprocess`` clamps and rounds them to 1/255; the node pack feeds this instead.)
    """
    x = images.float().permute(0, 3, 1, 2).mul(2.0).sub(1.0)  # Wan feeds -1..1
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    mean_t = torch.tensor(list(mean), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(list(std), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def load_clip_vision(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ClipVisionEncoder:
    """Load the CLIP vision tower from ``clip_vision_h.safetensors`` or Wan's open-clip ``.pth``.

    Only the blocks up to the penultimate one are built (Wan never runs the last block), so the model's
    ``last_hidden_state`` is Wan's ``use_31_block`` output.

    Raises:
        MissingModelError: the file does not exist.
        CheckpointError: it is not a CLIP vision model (the message says what it looks like), or is damaged.
    """
    from transformers import CLIPVisionModel

    path = Path(path)
    device = torch.device(device)
    sd = LazyStateDict(path, _WHAT)
    state = _canonical_state_dict(sd, path, dtype)
    config, layers, positions = _config_from_state_dict(state, sd.metadata, path)
    # the last block is never run (Wan's use_31_block): leave it out
    state = {k: v.to(device) for k, v in state.items() if not k.startswith(f"encoder.layers.{layers - 1}.")}

    def build() -> torch.nn.Module:
        return CLIPVisionModel(config)

    with torch.device("meta"):
        probe_keys = list(build().state_dict().keys())
    if any(k.startswith("vision_model.") for k in probe_keys):  # transformers < 5 nests the tower
        state = {f"vision_model.{k}": v for k, v in state.items()}
    model = load_into_empty(build, state, what=_WHAT, path=path, ignore_missing=("position_ids",))
    tower = getattr(model, "vision_model", model)
    tower.embeddings.register_buffer(
        "position_ids", torch.arange(positions, device=device).expand((1, -1)), persistent=False
    )
    log.info("loaded %s from %s (width %d, %d of %d blocks, %d px) on %s/%s",
             _WHAT, path, config.hidden_size, layers - 1, layers, config.image_size, device, dtype)
    return ClipVisionEncoder(model, int(config.image_size), device, dtype)


def make_tiny_clip_vision(
    path: str | Path,
    *,
    layout: str = "comfy",
    hidden_size: int = 32,
    num_layers: int = 3,
    num_heads: int = 2,
    intermediate_size: int = 64,
    image_size: int = 224,
    patch_size: int = 14,
    seed: int = 0,
) -> Path:
    """Write a tiny random CLIP vision tower in a user file layout; returns ``path``.

    ``layout="comfy"``: a ``clip_vision_h.safetensors``-style file (``vision_model.*`` + ``visual_projection``);
    ``layout="wan"``: a Wan ``.pth`` (``visual.*``). The defaults keep Wan's 257 tokens (224 px, patch 14) at
    width 32: build a matching tiny DiT with its CLIP input width (``clip_dim``) = ``hidden_size``.
    The head count is stored in the safetensors metadata (real files need none: their width implies it).
    """
    from safetensors.torch import save_file

    if layout not in ("comfy", "wan"):
        raise InputError(f"make_tiny_clip_vision: layout must be 'comfy' or 'wan', got {layout!r}")
    if hidden_size % num_heads:
        raise InputError(f"make_tiny_clip_vision: hidden_size {hidden_size} not divisible by {num_heads} heads")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=gen)

    positions = (image_size // patch_size) ** 2 + 1
    hf: dict[str, torch.Tensor] = {
        "embeddings.patch_embedding.weight": rnd(hidden_size, 3, patch_size, patch_size, scale=(3 * patch_size**2) ** -0.5),
        "embeddings.class_embedding": rnd(hidden_size, scale=0.5),
        "embeddings.position_embedding.weight": rnd(positions, hidden_size, scale=0.5),
        "pre_layrnorm.weight": rnd(hidden_size, scale=0.1, offset=1.0),
        "pre_layrnorm.bias": rnd(hidden_size, scale=0.1),
        "post_layernorm.weight": rnd(hidden_size, scale=0.1, offset=1.0),
        "post_layernorm.bias": rnd(hidden_size, scale=0.1),
    }
    for i in range(num_layers):
        p = f"encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            hf[f"{p}self_attn.{proj}_proj.weight"] = rnd(hidden_size, hidden_size, scale=hidden_size**-0.5)
            hf[f"{p}self_attn.{proj}_proj.bias"] = rnd(hidden_size, scale=0.1)
        for norm in ("layer_norm1", "layer_norm2"):
            hf[f"{p}{norm}.weight"] = rnd(hidden_size, scale=0.1, offset=1.0)
            hf[f"{p}{norm}.bias"] = rnd(hidden_size, scale=0.1)
        hf[f"{p}mlp.fc1.weight"] = rnd(intermediate_size, hidden_size, scale=hidden_size**-0.5)
        hf[f"{p}mlp.fc1.bias"] = rnd(intermediate_size, scale=0.1)
        hf[f"{p}mlp.fc2.weight"] = rnd(hidden_size, intermediate_size, scale=intermediate_size**-0.5)
        hf[f"{p}mlp.fc2.bias"] = rnd(hidden_size, scale=0.1)
    if layout == "comfy":
        state = {f"vision_model.{k}": v for k, v in hf.items()}
        state["visual_projection.weight"] = rnd(hidden_size, hidden_size, scale=hidden_size**-0.5)
        save_file(state, str(path), metadata={_HEADS_METADATA_KEY: str(num_heads)})
    else:
        if _default_heads(hidden_size) != num_heads:
            raise InputError(
                f"make_tiny_clip_vision: a Wan .pth cannot record the head count; width {hidden_size} implies "
                f"{_default_heads(hidden_size)} heads, not {num_heads}"
            )
        state = hf_to_wan_state_dict(hf)
        state["visual.head"] = rnd(hidden_size, hidden_size, scale=hidden_size**-0.5)
        state["log_scale"] = torch.tensor(math.log(1 / 0.07))
        torch.save(state, path)
    return path
