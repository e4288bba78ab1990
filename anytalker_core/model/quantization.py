"""fp8 weight storage for the DiT's transformer blocks (computation stays in bf16/fp16/fp32).

The blocks hold almost all of the DiT's weights. The "14B" release (legacy AFCA) has 21.0 B parameters:
39.1 GiB in bf16, 19.9 GiB with the blocks' linear weights stored as ``float8_e4m3fn`` with one float32
scale per tensor (1.3B release: 3.5 -> 1.8 GiB), so it fits a 24 GB GPU with little room to spare and a
32 GB one comfortably. Each layer dequantises its weight to the compute dtype when it runs. Embeddings,
projections, norms, biases and the head keep the compute dtype. This trades a little accuracy
(8-bit mantissa-less weights; measured in the tests) for memory; it is not faster.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def linear_compute_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype a linear layer computes in: its weight dtype, or the compute dtype of an fp8 layer."""
    return getattr(linear, "compute_dtype", None) or linear.weight.dtype


class FP8Linear(nn.Module):
    """``nn.Linear`` with the weight stored in fp8 (per-tensor scale), computed in ``compute_dtype``.

    ``weight`` ``[out, in]`` fp8, ``scale`` float32 scalar: the real weight is ``weight * scale``.
    """

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype, fp8_dtype: torch.dtype = torch.float8_e4m3fn):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        w = linear.weight.detach().float()
        scale = (w.abs().max() / torch.finfo(fp8_dtype).max).clamp(min=torch.finfo(torch.float32).tiny)
        self.weight = nn.Parameter((w / scale).to(fp8_dtype), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = (nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
                     if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(self.compute_dtype) * self.scale.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"storage={self.weight.dtype}, compute={self.compute_dtype}")


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
