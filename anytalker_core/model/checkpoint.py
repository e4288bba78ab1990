"""Loading, saving and converting AnyTalker DiT checkpoints.

Formats read:
- the released ``.pth``: ``torch.save({'model': state_dict})``, read with ``weights_only=True`` and
  memory-mapping (a pickle holding anything but tensors is refused);
- ``.safetensors``: our own export (config stored in the header metadata) or any file with the
  reference key names, optionally under a ``model.diffusion_model.`` prefix (ComfyUI style).

Configuration comes from, in order: an explicit config JSON, the safetensors metadata,
``<stem>.config.json`` / ``<stem>.json`` beside the weights, the released folder's ``config_af2v_*.json``
that fits the weights, otherwise it is inferred from shapes (:func:`resolve_config`). The bytes are
read by :func:`anytalker_core.io.weights.read_weights` (the format comes from the file's content, not its
name). Every failure raises :class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import AnyTalkerConfig, config_from_json, infer_from_state_dict, read_config_json
from ..errors import CheckpointError
from ..io.atomic import save_safetensors_atomic
from ..io.weights import read_weights

log = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "anytalker_config"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "model.")


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ComfyUI/DDP prefix shared by every key (``model.diffusion_model.``, ``module.``, ...)."""
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors (memory-mapped where possible) and any embedded config hints."""
    path = Path(path)
    if not path.exists():  # a CheckpointError (not MissingModelError): the user named this exact file
        raise CheckpointError(f"checkpoint '{path}': no such file")
    sd, metadata = read_weights(path, "checkpoint")
    hints: dict[str, Any] = {}
    if CONFIG_METADATA_KEY in metadata:
        hints = config_from_json(json.loads(metadata[CONFIG_METADATA_KEY]))
    return _strip_prefixes(sd), hints


#: the released Hugging Face folder keeps one ``config_af2v_<size>.json`` per model beside the ``.pth`` files
RELEASED_CONFIG_GLOB = "config_af2v_*.json"


def find_config(path: Path) -> Path | None:
    """A config named after the weights: ``<stem>.config.json``, else ``<stem>.json``."""
    for candidate in (path.with_suffix(".config.json"), path.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def released_configs(path: Path) -> list[Path]:
    """The released layout's ``config_af2v_*.json`` files beside ``path`` (sorted)."""
    return sorted(p for p in Path(path).parent.glob(RELEASED_CONFIG_GLOB) if p.is_file())


def resolve_config(path: str | Path, sd: Mapping[str, torch.Tensor], hints: Mapping[str, Any],
                   config_path: str | Path | None = None) -> AnyTalkerConfig:
    """The model config, from the first source present (each checked against the weights):

    1. ``config_path`` (an explicit JSON);
    2. ``hints`` (the config stored in our safetensors metadata);
    3. ``<stem>.config.json`` / ``<stem>.json`` beside the weights;
    4. the released folder's ``config_af2v_*.json`` beside the weights: the one that fits the weights
       (the folder holds one per model size, e.g. ``config_af2v_1_3B.json`` and ``config_af2v_14B.json``);
    5. the shapes alone.
    """
    path = Path(path)
    source = f"checkpoint '{path}'"
    json_path = Path(config_path) if config_path else (None if hints else find_config(path))
    if json_path is not None or hints:
        merged = dict(hints)
        if json_path is not None:
            merged.update(read_config_json(json_path))
            log.info("config for %s from %s", path.name, json_path)
        return infer_from_state_dict(sd, merged, source=source)
    rejected = []
    for candidate in released_configs(path):
        try:
            config = infer_from_state_dict(sd, read_config_json(candidate), source=source)
        except CheckpointError as exc:
            rejected.append(f"{candidate.name}: {exc}")
            continue
        log.info("config for %s from %s", path.name, candidate)
        return config
    if rejected:
        raise CheckpointError(f"{source}: none of the released configs beside it fits the weights ("
                              + "; ".join(rejected) + "); pass the right one with --config")
    return infer_from_state_dict(sd, {}, source=source)


def check_keys(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Missing/unexpected keys and shape mismatches, all listed in one message."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} (model expects {tuple(v.shape)})"
             for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_list(wrong)}")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not fit the AnyTalker DiT ({model.config.afca} AFCA): "
                              + "; ".join(problems))


def build_dit(sd: Mapping[str, torch.Tensor], config: AnyTalkerConfig, path: Path,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              weight_dtype: torch.dtype | None = None):
    """Construct the model without allocating, check keys, then materialise with the weights.

    ``weight_dtype`` fp8 stores the blocks' linear weights in fp8 (quantised on the CPU from the
    memory-mapped file, before anything reaches ``device``); ``dtype`` is the compute dtype.
    """
    from .dit import AnyTalkerDiT
    from .quantization import FP8_DTYPES, quantize_blocks_fp8

    if weight_dtype not in (None, dtype) and weight_dtype not in FP8_DTYPES:
        raise CheckpointError(f"weight_dtype {weight_dtype} is not supported: use the compute dtype or an fp8 dtype")
    with torch.device("meta"):
        model = AnyTalkerDiT(config)
    check_keys(model, sd, path)
    model.load_state_dict(sd, strict=True, assign=True)
    if weight_dtype in FP8_DTYPES:
        quantize_blocks_fp8(model, compute_dtype=dtype, fp8_dtype=weight_dtype)
        model = model.to(device=device)
    else:
        model = model.to(device=device, dtype=dtype)
    _align_cpu_storage(model)
    return model.eval().requires_grad_(False)


def _align_cpu_storage(model: torch.nn.Module, alignment: int = 64) -> None:
    """Give each CPU weight that is not ``alignment``-byte aligned its own freshly allocated copy.

    safetensors stores tensors at 8-byte offsets, and ``assign=True`` keeps them there. MKL's
    single-row matrix-vector kernels (e.g. the time embedding's Linear on one timestep) sum in a
    different order for data that is not 16-byte aligned, so a model loaded from ``.safetensors``
    differed in the last bits from the model it was saved from (and from the same weights loaded
    from a ``.pth``, whose zip entries are 64-byte aligned). Freshly allocated tensors are aligned.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()


def load_dit(path: str | Path, config_path: str | Path | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, weight_dtype: torch.dtype | None = None, attention: str = "sdpa"):
    """Load an AnyTalker DiT (released ``.pth`` or ``.safetensors``) in eval mode on ``device``.

    ``dtype`` is the compute dtype; ``weight_dtype=torch.float8_e4m3fn`` halves the memory of the
    transformer blocks (see :mod:`anytalker_core.model.quantization`); ``attention`` is the model's
    attention backend (``AnyTalkerDiT.attention_backend``: ``sdpa``, ``flash_attn`` or ``sage``).
    """
    from .attention import check_attention_backend

    check_attention_backend(attention)  # before the weights are read: a missing package fails fast
    path = Path(path)
    sd, hints = read_state_dict(path)
    config = resolve_config(path, sd, hints, config_path)
    log.info("loading %s: %s AFCA, dim %d, %d layers, %d heads", path.name, config.afca, config.dim,
             config.num_layers, config.num_heads)
    model = build_dit(sd, config, path, device, dtype, weight_dtype)
    model.attention_backend = attention
    return model


def save_dit(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the inference format: ``.safetensors`` with the config in its metadata (atomic)."""
    path = Path(path)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}
    save_safetensors_atomic(path, sd, {CONFIG_METADATA_KEY: json.dumps(model.config.to_dict()),
                                        "format": "pt"})
    return path


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None,
                       config_path: str | Path | None = None) -> AnyTalkerConfig:
    """``.pth -> .safetensors`` (optionally cast to bf16/fp16), validated against the model first."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"output '{dst}': must end in .safetensors")
    sd, hints = read_state_dict(src)
    config = resolve_config(src, sd, hints, config_path)
    from .dit import AnyTalkerDiT

    with torch.device("meta"):
        check_keys(AnyTalkerDiT(config), sd, src)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in sd.items()}
    save_safetensors_atomic(dst, tensors, {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), "format": "pt"})
    log.info("wrote %s (%d tensors, %s)", dst, len(tensors), dtype or "original dtypes")
    return config
