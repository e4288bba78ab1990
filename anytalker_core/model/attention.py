"""The one attention dispatch point.

Every attention in the DiT (self, text, image, AFCA) calls :func:`attention` (or
:func:`attention_with_lse`, which also returns the log-sum-exp of the scores so that attentions over
disjoint key sets can be merged exactly, :func:`merge_attention`) with tensors laid out
``[B, S, heads, head_dim]``. The backend is PyTorch SDPA unless a model selects another
(``AnyTalkerDiT.attention_backend``, applied with :func:`use_attention_backend` for the duration of its
forward): ``flash_attn`` (FlashAttention 2/3) or ``sage`` (SageAttention), used only for unmasked
half-precision calls on CUDA, the only case they support; other calls fall back to SDPA, which computes
the same function. There is no process-wide setting: two loaded models may use different backends.

Sequence parallelism (training long clips over several processes, ``train/sequence_parallel.py``) enters
here too: inside :func:`use_sequence_parallel` each process holds the video tokens of some latent frames,
:func:`sequence_attention` (the video tokens' self-attention) exchanges heads for tokens around the one
:func:`attention` call (Ulysses all-to-all), and :func:`sequence_split` tells the model which tokens are
this process's. Outside it, the split is the identity and nothing is exchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("sdpa", "flash_attn", "sage")
#: the kernel of the model whose forward is running (None = PyTorch SDPA)
_kernel: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("anytalker_attention_kernel", default=None)


class SequenceSplit(Protocol):
    """How the video tokens ``[B, S, ...]`` are split over processes (sequence parallelism)."""

    def for_grid(self, grid: tuple[int, int, int]) -> "SequenceSplit":
        """Bind to a latent token grid ``(F, h, w)`` (f-major tokens): this process's share is a run of frames."""

    def local(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This process's tokens of the whole sequence ``x`` (along ``dim``)."""

    def full(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This process's tokens ``x`` at their place in a zero-filled whole sequence (no communication)."""

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The whole sequence from every process's tokens (differentiable; gradients are summed back)."""

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S_local, H, D]`` -> ``[B, S, H/P, D]``: all tokens of this process's heads."""

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, H/P, D]`` -> ``[B, S_local, H, D]`` (the inverse of :meth:`sequence_to_heads`)."""


class _WholeSequence:
    """No sequence parallelism: one process holds every token (every method is the identity)."""

    def for_grid(self, grid):
        return self

    def local(self, x, dim):
        return x

    full = gather = local

    def sequence_to_heads(self, x):
        return x

    heads_to_sequence = sequence_to_heads


WHOLE_SEQUENCE: SequenceSplit = _WholeSequence()
_sequence: contextvars.ContextVar[SequenceSplit] = contextvars.ContextVar("anytalker_sequence_split",
                                                                          default=WHOLE_SEQUENCE)


@contextlib.contextmanager
def use_sequence_parallel(split: SequenceSplit) -> Iterator[None]:
    """Run the calls inside the block with the video tokens split as ``split`` says.

    The model re-enters it around each block with the split its forward began with, so that a block
    recomputed in the backward pass (gradient checkpointing; on GPUs on autograd's own threads, which do
    not see this context) splits its tokens the same way.
    """
    token = _sequence.set(split)
    try:
        yield
    finally:
        _sequence.reset(token)


def sequence_split(grid: tuple[int, int, int] | None = None) -> SequenceSplit:
    """The active split of the video tokens (bound to ``grid`` when given); the identity without sequence
    parallelism."""
    split = _sequence.get()
    return split.for_grid(grid) if grid is not None else split


def sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Self-attention of the video tokens: :func:`attention`, over all tokens even when each process holds
    only its own (q/k/v ``[B, S_local, H, D]``; heads are exchanged for tokens around the call)."""
    split = _sequence.get()
    return split.heads_to_sequence(attention(*(split.sequence_to_heads(t) for t in (q, k, v))))


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


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention and the log-sum-exp of its scaled scores.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> out ``[B, Sq, H, D]`` (q's dtype) and lse
    ``[B, Sq, H]`` float32. PyTorch's fused kernels (CPU flash, CUDA flash/efficient) return the lse
    without materialising the scores; other cases compute it explicitly.
    """
    qt, kt, vt = q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt)
    elif q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt)[:2]
    elif q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qt, kt, vt, None, True)[:2]
        lse = lse[..., : q.shape[1]]  # the kernel pads the query length
    else:
        scores = (qt.float() @ kt.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        lse = torch.logsumexp(scores, dim=-1)
        out = (torch.softmax(scores, dim=-1) @ vt.float()).to(q.dtype)
    return out.transpose(1, 2), lse.transpose(1, 2).float()


def merge_attention(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Attention over the union of disjoint key sets from each set's ``(out, lse)``.

    ``softmax`` over the concatenated keys equals the lse-weighted mean of the per-set outputs:
    ``out = sum_i exp(lse_i - lse) * out_i`` with ``lse = logsumexp_i lse_i``. Shapes as
    :func:`attention_with_lse`; the parts broadcast against each other.
    """
    lse = torch.logsumexp(torch.stack(torch.broadcast_tensors(*(l for _, l in parts))), dim=0)
    total = None
    for out, part_lse in parts:
        weight = torch.exp(part_lse - lse).unsqueeze(-1)
        total = out.float() * weight if total is None else total.addcmul_(out.float(), weight)
    return total.to(parts[0][0].dtype)
