"""Loading, saving and converting AnyTalker DiT checkpoints.

Formats read:
- the released ``.pth``: ``torch.save({'model': state_dict})``, read with ``weights_only=True`` and
  memory-mapping (a pickle holding anything but tensors is refused);
- ``.safetensors``: our own export (config stored in the header metadata) or any file with the
  reference key names, optionally under a ``model.diffusion_model.`` prefix (ComfyUI style).

Configuration comes from, in order: an explicit config JSON, the safetensors metadata,
``<stem>.config.json`` / ``<stem>.json`` beside the weights, otherwise it is inferred from shapes.
Every failure raises :class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import AnyTalkerConfig, config_from_json, infer_from_state_dict, read_config_json
from ..errors import CheckpointError
from ..io.atomic import save_safetensors_atomic

log = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "anytalker_config"
_WRAPPER_KEYS = ("model", "state_dict", "module")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "model.")
_PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _read_pickle(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80":  # legacy (non-zip) torch pickle: no mmap possible
            mmap = False
        elif head == b"PK":
            raise CheckpointError(f"checkpoint '{path}': the file is truncated or corrupt (a damaged zip "
                                  "archive); download it again")
        else:
            raise CheckpointError(f"checkpoint '{path}': not a PyTorch checkpoint or safetensors file")
    else:
        mmap = True
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint '{path}': holds Python objects other than tensors, which are not loaded for safety "
            f"(weights_only). Re-save it as a plain state dict or .safetensors. Detail: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint '{path}': cannot be read — the file is truncated or corrupt "
                              f"({str(exc).splitlines()[0]})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            return {k: fh.get_tensor(k) for k in fh.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}': not a valid safetensors file — truncated or corrupt "
                              f"({exc})") from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"checkpoint '{path}': expected a state dict (or {{'model': state_dict}}), "
                              f"found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint '{path}': entries that are not tensors: {_list(bad)}")
    sd = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors (memory-mapped where possible) and any embedded config hints."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}': no such file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint '{path}': is a folder; pass the .pth or .safetensors file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}': the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(8)
    hints: dict[str, Any] = {}
    if path.suffix == ".safetensors" or (path.suffix not in _PICKLE_SUFFIXES and head[:1] not in (b"\x80", b"P")):
        sd, metadata = _read_safetensors(path)
        if CONFIG_METADATA_KEY in metadata:
            hints = config_from_json(json.loads(metadata[CONFIG_METADATA_KEY]))
    else:
        sd = _read_pickle(path)
    return _unwrap(sd, path), hints


def find_config(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".config.json"), path.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def resolve_config(path: str | Path, sd: Mapping[str, torch.Tensor], hints: Mapping[str, Any],
                   config_path: str | Path | None = None) -> AnyTalkerConfig:
    """Config from explicit JSON > embedded metadata > sibling JSON > shapes (checked against the weights)."""
    path = Path(path)
    merged = dict(hints)
    json_path = Path(config_path) if config_path else (None if hints else find_config(path))
    if json_path is not None:
        merged.update(read_config_json(json_path))
        log.info("config for %s from %s", path.name, json_path)
    return infer_from_state_dict(sd, merged, source=f"checkpoint '{path}'")


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
    return model.eval().requires_grad_(False)


def load_dit(path: str | Path, config_path: str | Path | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, weight_dtype: torch.dtype | None = None):
    """Load an AnyTalker DiT (released ``.pth`` or ``.safetensors``) in eval mode on ``device``.

    ``dtype`` is the compute dtype; ``weight_dtype=torch.float8_e4m3fn`` halves the memory of the
    transformer blocks (see :mod:`anytalker_core.quantization`).
    """
    path = Path(path)
    sd, hints = read_state_dict(path)
    config = resolve_config(path, sd, hints, config_path)
    log.info("loading %s: %s AFCA, dim %d, %d layers, %d heads", path.name, config.afca, config.dim,
             config.num_layers, config.num_heads)
    return build_dit(sd, config, path, device, dtype, weight_dtype)


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
