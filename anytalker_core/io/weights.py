"""Shared checkpoint plumbing for the three frozen encoders (private to ``anytalker_core.encoders``).

* :class:`LazyStateDict` reads ``.safetensors`` (lazily, one tensor at a time) and ``.pth``/``.pt``/``.bin``
  (``torch.load(weights_only=True, mmap=True)``, never unpickling arbitrary objects).
* :func:`to_compute_dtype` casts one weight to the compute dtype and dequantises ComfyUI's *scaled fp8*
  weights (``<layer>.weight`` in float8 times ``<layer>.scale_weight`` / ``<layer>.weight_scale``).
* :func:`describe_checkpoint` names what a file looks like, so that a wrong file gives a message such as
  "this is a Wan VAE, not a CLIP vision model".
* :func:`load_into_empty` fills a module built on the ``meta`` device (no random init of billions of
  parameters) and turns missing/unexpected/mis-shaped weights into :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, MissingModelError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")

_FP8_DTYPES = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
)

#: keys that carry quantisation bookkeeping, never a weight of their own
_QUANT_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant")
_QUANT_KEYS = ("scaled_fp8",)


class LazyStateDict(Mapping):
    """A read-only ``{name: tensor}`` view of a checkpoint file; safetensors tensors load on access.

    Args:
        path: the checkpoint file.
        what: a short description used in error messages (e.g. ``"CLIP vision model"``).
    """

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self.metadata: dict[str, str] = {}
        if not self.path.exists():
            raise MissingModelError(f"{what} file not found: {self.path}")
        if self.path.is_dir():
            raise CheckpointError(f"{what}: expected a weights file, got the folder {self.path}")
        suffix = self.path.suffix.lower()
        self._handle = None
        self._tensors: dict[str, torch.Tensor] | None = None
        try:
            if suffix in (".safetensors", ".sft"):
                from safetensors import safe_open

                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
                self._keys = list(self._handle.keys())
                self.metadata = dict(self._handle.metadata() or {})
            else:
                try:
                    obj = torch.load(str(self.path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:  # legacy (non-zip) .pth files cannot be memory-mapped
                    if "mmap" not in str(exc):
                        raise
                    obj = torch.load(str(self.path), map_location="cpu", weights_only=True)
                self._tensors = _unwrap_state_dict(obj, self.path, what)
                self._keys = list(self._tensors.keys())
        except (CheckpointError, MissingModelError):
            raise
        except Exception as exc:  # corrupt file, pickle with objects, truncated download, ...
            raise CheckpointError(
                f"{what}: cannot read {self.path} ({type(exc).__name__}: {exc}). Expected a .safetensors file "
                f"or a PyTorch state dict (.pth); re-download it if it may be truncated."
            ) from exc

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._handle is not None:
            if key not in self._keyset:
                raise KeyError(key)
            return self._handle.get_tensor(key)
        assert self._tensors is not None
        return self._tensors[key]

    @property
    def _keyset(self) -> set[str]:
        ks = getattr(self, "_ks", None)
        if ks is None:
            ks = self._ks = set(self._keys)
        return ks

    def __contains__(self, key: object) -> bool:
        return key in self._keyset

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _unwrap_state_dict(obj: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``{'model': sd}`` / ``{'state_dict': sd}`` / ``{'module': sd}`` / ``sd`` -> ``sd`` (tensors only)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "module", "params"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what}: {path} holds a {type(obj).__name__}, expected a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


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
