"""The one attention dispatch point.

Every attention in the DiT (self, text, image, AFCA) calls :func:`attention` with tensors laid out
``[B, S, heads, head_dim]``. The backend is PyTorch SDPA unless a model selects another
(``AnyTalkerDiT.attention_backend``, applied with :func:`use_attention_backend` for the duration of its
forward): ``flash_attn`` (FlashAttention 2/3) or ``sage`` (SageAttention), used only for unmasked
half-precision calls on CUDA, the only case they support; other calls fall back to SDPA, which computes
the same function. There is no process-wide setting: two loaded models may use different backends.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("sdpa", "flash_attn", "sage")
#: the kernel of the model whose forward is running (None = PyTorch SDPA)
_kernel: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("anytalker_attention_kernel", default=None)


def available_backends() -> list[str]:
    """Backends whose packages are importable here."""
    found = ["sdpa"]
    if importlib.util.find_spec("flash_attn") is not None:
        found.append("flash_attn")
    if importlib.util.find_spec("sageattention") is not None:
        found.append("sage")
    return found


def check_attention_backend(name: str) -> str:
    """``name`` if it is a backend whose package is installed here; an :class:`InputError` naming the
    missing package otherwise."""
    if name not in BACKENDS:
        raise InputError(f"attention backend {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name not in available_backends():
        package = {"flash_attn": "flash-attn", "sage": "sageattention"}[name]
        raise InputError(f"attention backend {name!r} needs the '{package}' package, which is not installed "
                         f"(pip install {package}); available here: {', '.join(available_backends())}")
    return name


def _make_kernel(name: str) -> Callable | None:
    if name == "flash_attn":
        from flash_attn import flash_attn_func

        return lambda q, k, v: flash_attn_func(q, k, v)  # [B,S,H,D] layout natively
    if name == "sage":
        from sageattention import sageattn

        return lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")
    return None


@contextlib.contextmanager
def use_attention_backend(name: str) -> Iterator[None]:
    """Run :func:`attention` calls inside the block with backend ``name`` (then restore the previous one)."""
    token = _kernel.set(_make_kernel(check_attention_backend(name)))
    try:
        yield
    finally:
        _kernel.reset(token)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]``, optional boolean ``mask`` broadcastable to
    ``[B, H, Sq, Sk]`` (True = may attend). Returns ``[B, Sq, H, D]`` in q's dtype.
    """
    kernel = _kernel.get()
    if (kernel is not None and mask is None and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)):
        return kernel(q, k.to(q.dtype), v.to(q.dtype))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
