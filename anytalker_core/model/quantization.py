"""fp8 weight storage for the DiT's transformer blocks (computation in bf16/fp16/fp32, or in fp8).

The blocks hold almost all of the DiT's weights. The "14B" release (legacy AFCA) has 21.0 B parameters:
39.1 GiB in bf16, 19.9 GiB with the blocks' linear weights stored as ``float8_e4m3fn`` with one float32
scale per output channel (1.3B release: 3.5 -> 1.8 GiB), so it fits a 24 GB GPU with little room to
spare and a 32 GB one comfortably. Embeddings, projections, norms, biases and the head keep the compute
dtype.

Per-channel scales (``amax`` of each output row / 448) keep rows with small weights from losing their
mantissa to one large row elsewhere in the tensor. The matmul:

* on a CUDA GPU with fp8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell),
  ``torch._scaled_mm``: the activations are quantised per token to e4m3 and multiplied in fp8 with
  row-wise scales (tokens x weight channels) — a real fp8 matmul, with no dequantised weight. It
  adds the activations' rounding: ~3.7 % rel-L2 per layer on random data, against ~2 % for the
  weights alone;
* elsewhere (CPU, older GPUs), ``x @ W_fp8.to(compute)^T`` with the per-channel scales applied to the
  *output* (``[out]`` multiplies instead of a ``[out, in]`` dequantisation): memory, not speed.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max


def linear_compute_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype a linear layer computes in: its weight dtype, or the compute dtype of an fp8 layer."""
    return getattr(linear, "compute_dtype", None) or linear.weight.dtype


def fp8_matmul_supported(device: torch.device) -> bool:
    """True on CUDA devices with fp8 tensor cores (compute capability 8.9 or newer)."""
    return (device.type == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= (8, 9))


class FP8Linear(nn.Module):
    """``nn.Linear`` with the weight stored in fp8 and one float32 scale per output channel.

    ``weight`` ``[out, in]`` fp8 and ``scale`` ``[out]`` float32: the real weight is ``weight * scale[:, None]``.
    """

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype, fp8_dtype: torch.dtype = torch.float8_e4m3fn):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / torch.finfo(fp8_dtype).max).clamp(min=torch.finfo(torch.float32).tiny)
        self.weight = nn.Parameter((w / scale[:, None]).to(fp8_dtype), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = (nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
                     if linear.bias is not None else None)

    def _fp8_matmul(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x @ W^T`` (scales applied) on fp8 tensor cores, or None where the kernel does not apply.

        The activations are quantised to e4m3 with one scale per token (row), the weight carries its
        per-channel scales: ``torch._scaled_mm`` with row-wise scales, output in the compute dtype.
        """
        if (self.weight.dtype != torch.float8_e4m3fn or self.in_features % 16 or self.out_features % 16
                or self.compute_dtype not in (torch.bfloat16, torch.float16)):
            return None
        rows = x.reshape(-1, self.in_features)
        x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / _E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        x8 = (rows / x_scale.to(rows.dtype)).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(x8, self.weight.t(), scale_a=x_scale, scale_b=self.scale[None].float(),
                               out_dtype=self.compute_dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        out = self._fp8_matmul(x) if fp8_matmul_supported(x.device) else None
        if out is None:
            out = F.linear(x, self.weight.to(self.compute_dtype)) * self.scale.to(self.compute_dtype)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"storage={self.weight.dtype} (per-channel scales), compute={self.compute_dtype}")


def quantize_blocks_fp8(model: nn.Module, compute_dtype: torch.dtype,
                        fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> int:
    """Replace every ``nn.Linear`` inside ``model.blocks`` by an :class:`FP8Linear`, in place.

    Other parameters are cast to ``compute_dtype``. Returns the number of layers converted. Move the
    model afterwards with ``model.to(device)`` only: ``model.to(dtype)`` would undo the fp8 storage.
    """
    if fp8_dtype not in FP8_DTYPES:
        raise InputError(f"fp8 weight dtype must be one of {FP8_DTYPES}, got {fp8_dtype}")
    if compute_dtype in FP8_DTYPES:
        raise InputError("the compute dtype of an fp8 model must be bfloat16, float16 or float32")
    converted = 0
    for block in model.blocks:
        for name, module in list(block.named_modules()):
            if type(module) is nn.Linear:
                parent_name, _, attr = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, attr, FP8Linear(module, compute_dtype, fp8_dtype))
                converted += 1
    for param in model.parameters():
        if param.dtype not in FP8_DTYPES and param.dtype != compute_dtype:
            param.data = param.data.to(compute_dtype)
    log.info("stored %d block linear layers in %s (compute in %s)", converted, fp8_dtype, compute_dtype)
    return converted
