"""The one weight-file reader, and the plumbing every model loader shares.

* :func:`weight_format` tells the format from the bytes, never from the file name: a file is safetensors
  when its first 8 bytes (a little-endian header length) are followed by that many bytes of a JSON object,
  so ``.sft``, ``.safetensors``, a renamed ``.bin`` -- any valid safetensors file -- is read as one, whatever
  its first byte happens to be. Otherwise it must be a ``torch.save`` archive (zip) or a legacy torch pickle.
* :class:`LazyStateDict` is a read-only ``{name: tensor}`` view: safetensors tensors load one at a time on
  access; torch files go through ``torch.load(weights_only=True)`` (memory-mapped when the file is a zip
  archive), so no arbitrary Python object is ever unpickled. :func:`read_weights` reads every tensor.
* :func:`unwrap_state_dict` takes ``{'model': sd}`` / ``{'state_dict': sd}`` / ... apart.
* :func:`to_compute_dtype` casts one weight to the compute dtype and dequantises ComfyUI's *scaled fp8*
  weights (``<layer>.weight`` in float8 times ``<layer>.scale_weight`` / ``<layer>.weight_scale``).
* :func:`describe_checkpoint` names what a file looks like, so that a wrong file gives a message such as
  "this is a Wan VAE, not a CLIP vision model".
* :func:`load_into_empty` fills a module built on the ``meta`` device (no random init of billions of
  parameters) and turns missing/unexpected/mis-shaped weights into :class:`CheckpointError`.

Errors name the file and what was expected: :class:`MissingModelError` for an absent file,
:class:`CheckpointError` for anything unreadable.
"""

from __future__ import annotations

import json
import logging
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, MissingModelError

log = logging.getLogger(__name__)

__all__ = ["WEIGHT_SUFFIXES", "weight_format", "LazyStateDict", "read_weights", "unwrap_state_dict", "strip_prefix",
           "is_quant_key", "to_compute_dtype", "describe_checkpoint", "load_into_empty", "leftover_meta"]

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")

#: a safetensors header longer than this is not believed (the format itself caps it at 100 MB)
_MAX_HEADER = 100 * 1024 * 1024
#: ``{'model': sd}`` and friends: keys under which a file may nest its state dict
_WRAPPER_KEYS = ("state_dict", "model", "module", "params")

_FP8_DTYPES = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
)

#: keys that carry quantisation bookkeeping, never a weight of their own
_QUANT_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant")
_QUANT_KEYS = ("scaled_fp8",)


def weight_format(path: str | Path, what: str = "checkpoint") -> str:
    """``"safetensors"``, ``"torch-zip"`` (``torch.save``) or ``"torch-pickle"`` (legacy ``torch.save``), read
    from the file's bytes.

    Raises:
        MissingModelError: no such file.
        CheckpointError: a folder, an empty file, a damaged zip archive, or none of the three formats.
    """
    path = Path(path)
    if not path.exists():
        raise MissingModelError(f"{what} '{path}': no such file")
    if path.is_dir():
        raise CheckpointError(f"{what} '{path}': is a folder; expected a weights file (.safetensors, .pth, ...)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} '{path}': the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) == 8:
            (header_len,) = struct.unpack("<Q", head)
            if 2 <= header_len <= min(size - 8, _MAX_HEADER):
                try:
                    header = json.loads(fh.read(header_len))
                except (UnicodeDecodeError, ValueError):
                    header = None
                if isinstance(header, dict):
                    return "safetensors"
    if zipfile.is_zipfile(path):
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol 2+: a legacy (non-zip) torch.save file
        return "torch-pickle"
    if head[:2] == b"PK":
        raise CheckpointError(f"{what} '{path}': the file is truncated or corrupt (a damaged zip archive); "
                              "download it again")
    raise CheckpointError(f"{what} '{path}': not a PyTorch checkpoint or safetensors file (cannot read it); "
                          "expected .safetensors or a torch.save state dict (.pth)")


def _torch_load(path: Path, fmt: str, what: str) -> object:
    try:
        if path.name.endswith(".safetensors"):  # torch.load would hand the name to safetensors: pass the bytes
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{what} '{path}': holds Python objects other than tensors, which are not loaded for safety "
            f"(weights_only). Re-save it as a plain state dict or .safetensors. Detail: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated archives fail in many ways inside torch
        raise CheckpointError(f"{what} '{path}': cannot read it -- the file is truncated or corrupt "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "download it again") from None


class LazyStateDict(Mapping):
    """A read-only ``{name: tensor}`` view of a weights file; safetensors tensors load on access.

    Args:
        path: the weights file (any name: the format is read from its bytes, see :func:`weight_format`).
        what: a short description used in error messages (e.g. ``"CLIP vision model"``).

    Attributes:
        metadata: the safetensors header's ``__metadata__`` (``{}`` for torch files).
        format: see :func:`weight_format`.
    """

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self.metadata: dict[str, str] = {}
        self.format = weight_format(self.path, what)
        self._handle = None
        self._tensors: dict[str, torch.Tensor] | None = None
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
                raise CheckpointError(
                    f"{what} '{self.path}': cannot read it -- not a readable safetensors file, truncated or "
                    f"corrupt ({exc}); download it again") from None
            self._keys = list(self._handle.keys())
            self.metadata = dict(self._handle.metadata() or {})
        else:
            self._tensors = unwrap_state_dict(_torch_load(self.path, self.format, what), self.path, what)
            self._keys = list(self._tensors)
        self._keyset = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keyset:
            raise KeyError(key)
        if self._handle is None:
            assert self._tensors is not None
            return self._tensors[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:  # noqa: BLE001 - a truncated file fails only when its data is read
            raise CheckpointError(f"{self.what} '{self.path}': cannot read tensor '{key}' -- the file is "
                                  f"truncated or corrupt ({exc}); download it again") from None

    def __contains__(self, key: object) -> bool:
        return key in self._keyset

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read_weights(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a weights file (unwrapped, see :func:`unwrap_state_dict`) and its safetensors metadata."""
    sd = LazyStateDict(path, what)
    return {k: sd[k] for k in sd}, sd.metadata


def unwrap_state_dict(obj: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``{'model': sd}`` / ``{'state_dict': sd}`` / ``{'module': sd}`` / ``{'params': sd}`` / ``sd`` -> ``sd``.

    A mapping without tensors is descended through its wrapper key (up to 3 levels); entries that are
    not tensors (a step counter beside the weights) are dropped.
    """
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in _WRAPPER_KEYS:
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} '{path}': holds a {type(obj).__name__}, expected a state dict of tensors "
                              "(or {'model': state_dict})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{what} '{path}': holds no tensors; expected a state dict (or {{'model': state_dict}})")
    return sd


def strip_prefix(keys: list[str], signature: str) -> str | None:
    """The prefix in front of ``signature`` in ``keys`` (``""`` when bare), or ``None`` when absent."""
    if signature in keys:
        return ""
    for key in keys:
        if key.endswith("." + signature):
            return key[: -len(signature)]
    return None


def is_quant_key(key: str) -> bool:
    """Quantisation bookkeeping (fp8 scales, ComfyUI quant metadata), not a weight."""
    return key in _QUANT_KEYS or key.endswith(_QUANT_SUFFIXES)


def to_compute_dtype(sd: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype, what: str, path: Path) -> torch.Tensor:
    """Return ``sd[key]`` in ``dtype``; float8 weights are multiplied by their ComfyUI scale first.

    Raises:
        CheckpointError: an integer/packed weight (int8, nvfp4, GGUF...) that this loader cannot dequantise.
    """
    tensor = sd[key]
    if tensor.dtype in _FP8_DTYPES:
        base = key[: -len("weight")] if key.endswith("weight") else key + "."
        scale = None
        for scale_key in (base + "scale_weight", base + "weight_scale"):
            if scale_key in sd:
                scale = sd[scale_key].to(torch.float32)
                break
        value = tensor.to(torch.float32)
        if scale is not None:
            if scale.numel() > 1 and scale.dim() == 1 and value.dim() >= 1 and scale.shape[0] == value.shape[0]:
                scale = scale.view(-1, *([1] * (value.dim() - 1)))
            value = value * scale
        return value.to(dtype)
    if not tensor.is_floating_point():
        raise CheckpointError(
            f"{what}: weight '{key}' in {path} is stored as {tensor.dtype}, a quantisation this loader cannot "
            f"read. Use an fp16/bf16/fp32 file or ComfyUI's fp8 *_scaled.safetensors."
        )
    return tensor.to(dtype)


def describe_checkpoint(keys: list[str] | Mapping[str, object]) -> str:
    """A human name for what a checkpoint's key names look like (for wrong-file messages)."""
    names = list(keys)
    text = "\n".join(names)

    def has(fragment: str) -> bool:
        return fragment in text

    if has("decoder.middle.0.residual.0.gamma") or has("decoder.mid_block.resnets.0.norm1.gamma"):
        return "a Wan VAE"
    if has("SelfAttention.relative_attention_bias") or has("DenseReluDense") or (
        has("token_embedding.weight") and has(".attn.q.weight")
    ):
        return "a T5/UMT5 text encoder"
    if has("embeddings.patch_embedding.weight") or has("visual.patch_embedding.weight") or has("visual.conv1.weight"):
        return "a CLIP vision model"
    if has("text_model.encoder.layers.") or has("textual."):
        return "a CLIP text model"
    if has("feature_extractor.conv_layers") or has("wav2vec2."):
        return "a wav2vec2 audio encoder"
    if has("blocks.0.cross_attn") or has("patch_embedding.weight") and has("head.head.weight"):
        return "a Wan/AnyTalker diffusion model (DiT)"
    if not names:
        return "an empty file"
    return f"an unknown model (first keys: {', '.join(names[:3])})"


def load_into_empty(
    factory: Callable[[], torch.nn.Module],
    state_dict: dict[str, torch.Tensor],
    *,
    what: str,
    path: Path,
    ignore_missing: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Build ``factory()`` on the meta device and assign ``state_dict`` to it (strict, shape-checked).

    Args:
        factory: builds the module (its parameters land on the meta device; nothing is initialised).
        state_dict: every parameter/persistent buffer, already in the target dtype and device.
        what, path: for error messages.
        ignore_missing: key suffixes that may be absent (they must then be filled by the caller).
    """
    with torch.device("meta"):
        module = factory()
    expected = module.state_dict()
    bad_shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad_shapes:
        raise CheckpointError(
            f"{what}: {path} has weights of unexpected shapes ({'; '.join(bad_shapes[:4])}"
            f"{' ...' if len(bad_shapes) > 4 else ''}); the file may be damaged or a different model variant"
        )
    result = module.load_state_dict(state_dict, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith(ignore_missing)]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:3])})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected weights (e.g. {', '.join(result.unexpected_keys[:3])})")
        raise CheckpointError(f"{what}: {path} does not match the expected layout: {'; '.join(parts)}")
    return module.eval().requires_grad_(False)


def leftover_meta(module: torch.nn.Module) -> list[str]:
    """Names of parameters/buffers still on the meta device after loading."""
    return [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
