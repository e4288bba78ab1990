"""The one attention dispatch point.

Every attention in the DiT (self, text, image, AFCA) calls :func:`attention` with tensors laid out
``[B, S, heads, head_dim]``. The backend is PyTorch SDPA unless another is selected with
:func:`set_attention_backend`: ``flash_attn`` (FlashAttention 2/3) or ``sage`` (SageAttention), used
only for unmasked half-precision calls on CUDA, the only case they support; other calls fall back
to SDPA, which computes the same function.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("sdpa", "flash_attn", "sage")
_kernel: Callable | None = None  # None = PyTorch SDPA


def available_backends() -> list[str]:
    """Backends whose packages are importable here."""
    found = ["sdpa"]
    if importlib.util.find_spec("flash_attn") is not None:
        found.append("flash_attn")
    if importlib.util.find_spec("sageattention") is not None:
        found.append("sage")
    return found


def set_attention_backend(name: str) -> None:
    """Select the attention kernel for every later call (``sdpa``, ``flash_attn`` or ``sage``)."""
    global _kernel
    if name not in BACKENDS:
        raise InputError(f"attention backend {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name not in available_backends():
        package = {"flash_attn": "flash-attn", "sage": "sageattention"}[name]
        raise InputError(f"attention backend {name!r} needs the '{package}' package, which is not installed "
                         f"(pip install {package}); available here: {', '.join(available_backends())}")
    _kernel = None
    if name == "flash_attn":
        from flash_attn import flash_attn_func

        _kernel = lambda q, k, v: flash_attn_func(q, k, v)  # noqa: E731  [B,S,H,D] layout natively
    elif name == "sage":
        from sageattention import sageattn

        _kernel = lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")  # noqa: E731
    log.info("attention backend: %s", name)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]``, optional boolean ``mask`` broadcastable to
    ``[B, H, Sq, Sk]`` (True = may attend). Returns ``[B, Sq, H, D]`` in q's dtype.
    """
    if (_kernel is not None and mask is None and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)):
        return _kernel(q, k.to(q.dtype), v.to(q.dtype))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
