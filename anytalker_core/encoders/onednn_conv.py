"""Run a model's CPU convolutions through oneDNN whatever their width.

PyTorch picks oneDNN (``mkldnn_convolution``) for a float32 CPU convolution only above a size heuristic
(``batch × channels × frames × height > 20480``, ``ConvParams::use_mkldnn``); below it the convolution runs
``slow_conv3d`` / ``thnn_conv2d``, which unfold the input into a column buffer of ``C_in × k³`` times the
output for every call. The Wan VAE's causal convolutions run once per chunk of 1–4 frames, so a narrow
VAE (the test and benchmark models, or the released one's lowest-resolution layers) takes that path
hundreds of times per clip: measured on the demo VAE (4 base channels) decoding 81 frames at 64×128,
5.4 GiB of column buffers of 7–14 MiB each per decode, against 2.0 GiB (largest single buffer 7.6 MiB) and
29 % less CPU time through oneDNN. Those large, short-lived buffers are also what fragmented the C heap
and made a long clip's resident memory peak differ from window to window (BENCHMARKS.md, "Long clips").

Wide convolutions already take the oneDNN path, so on the released VAE at video sizes almost nothing
changes; values differ from the unfolded path by float32 rounding only (≤ 3e-5, typically 3e-7, on a decoded
video in -1..1). GPU tensors, other dtypes, CPU autocast, ``torch.backends.mkldnn.enabled = False`` and builds
without oneDNN take PyTorch's own choice, checked at every call (a model may move between devices).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["route_convolutions_through_onednn", "restore_pytorch_convolutions"]

_ROUTED = "_anytalker_onednn"


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _onednn_ready(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available() and not _cpu_autocast())


def _conv_forward(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    if not _onednn_ready(x, weight):
        return type(module)._conv_forward(module, x, weight, bias)
    return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, module.padding,
                                             module.stride, module.dilation, module.groups)


def route_convolutions_through_onednn(model: torch.nn.Module) -> int:
    """Make every ``Conv2d`` / ``Conv3d`` of ``model`` (zero padding given as numbers, not ``"same"``) run
    ``mkldnn_convolution`` for float32 CPU inputs when no gradient is recorded and CPU autocast is off;
    returns how many were routed.
    Idempotent; other inputs take the module's own ``_conv_forward``."""
    routed = 0
    for module in model.modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            continue
        if getattr(module, _ROUTED, False):
            routed += 1
            continue
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            continue
        module._conv_forward = functools.partial(_conv_forward, module)  # shadows the class's method
        setattr(module, _ROUTED, True)
        routed += 1
    return routed


def restore_pytorch_convolutions(model: torch.nn.Module) -> int:
    """Undo :func:`route_convolutions_through_onednn` (every convolution back on PyTorch's own kernel
    choice: a baseline for benchmarks); returns how many were restored."""
    restored = 0
    for module in model.modules():
        if getattr(module, _ROUTED, False):
            del module._conv_forward  # the class's method again
            delattr(module, _ROUTED)
            restored += 1
    return restored
