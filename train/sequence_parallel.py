"""Sequence parallelism: one sample's video tokens split over several processes (Ulysses all-to-all).

The authors train with xfuser's USP; this is the Ulysses half of it on plain ``torch.distributed``
(gloo on CPU, NCCL on GPUs), entering the model only through the attention dispatch point
(:mod:`anytalker_core.model.attention`):

* the ``P`` processes of a sequence-parallel group train the **same** batch; each holds the tokens of a
  run of consecutive latent frames (frames dealt as evenly as possible, so 21 latent frames over 2
  processes are 11 + 10) for the whole block stack;
* the video self-attention exchanges heads for tokens (``all_to_all_single``): each process attends
  over *all* tokens with ``H/P`` of the heads, then the result goes back to the token split;
* text and image cross-attention read only the process's own queries; AFCA, whose visibility depends on
  each token's frame, runs on the process's queries placed at their frames in a zero-filled sequence
  (no communication; the padding costs AFCA's compute ``P``-fold, the model's smallest attention);
* the output is gathered at the end, so every process computes the same loss as an unsharded run; the
  gather's gradient is summed back over the group, and the data-parallel gradient average then yields the
  unsharded gradient.

Needs ``num_heads`` divisible by ``P`` and at least ``P`` latent frames. All collectives of the split run
on their own process group, apart from the data-parallel gradient reduction.
"""

from __future__ import annotations

import logging
import math

import torch

from anytalker_core.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["SequenceParallel", "frame_shares", "new_groups"]


def frame_shares(frames: int, degree: int) -> list[int]:
    """Latent frames per process: ``frames`` dealt as evenly as possible, earlier processes first."""
    if frames < degree:
        raise InputError(f"sequence_parallel = {degree} needs at least {degree} latent frames per sample, got "
                         f"{frames} (a clip of {4 * (frames - 1) + 1} video frames); lower sequence_parallel or "
                         "train longer clips")
    return [frames // degree + (1 if i < frames % degree else 0) for i in range(degree)]


def new_groups(degree: int):
    """``(group, index in it)`` of this process: consecutive ranks ``[k*degree, (k+1)*degree)`` form one group.

    Every process must call this (``new_group`` is collective over the default group)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if world % degree:
        raise InputError(f"sequence_parallel = {degree} must divide the number of processes ({world})")
    mine = None
    for start in range(0, world, degree):
        group = dist.new_group(list(range(start, start + degree)))
        if start <= rank < start + degree:
            mine = group
    return mine, rank % degree


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of a flat tensor with split sizes; the backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], receive: list[int], group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.send, ctx.receive, ctx.group = send, receive, group
        out = x.new_empty(sum(receive))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=receive, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad.contiguous(), ctx.receive, ctx.send, ctx.group), None, None, None


class SequenceParallel:
    """The :class:`~anytalker_core.model.attention.SequenceSplit` of one process in a group of ``degree``.

    Bound to a token grid by :meth:`for_grid` (the model does this at the start of each forward).
    """

    def __init__(self, group, degree: int, index: int):
        self.group, self.degree, self.index = group, degree, index
        self.sizes: list[int] = []  # tokens of each process
        self.start = 0  # first token of this process

    def for_grid(self, grid: tuple[int, int, int]) -> "SequenceParallel":
        per_frame = grid[1] * grid[2]
        self.sizes = [n * per_frame for n in frame_shares(grid[0], self.degree)]
        self.start = sum(self.sizes[: self.index])
        return self

    @property
    def size(self) -> int:
        return self.sizes[self.index]

    def local(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.narrow(dim, self.start, self.size)

    def full(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        before = list(x.shape)
        before[dim] = self.start
        after = list(x.shape)
        after[dim] = sum(self.sizes) - self.start - self.size
        return torch.cat([x.new_zeros(before), x, x.new_zeros(after)], dim=dim)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        # every process sends its tokens to every process: all_to_all of P copies (the copies' gradients sum)
        rows = x.movedim(dim, 0)
        trailing = rows.shape[1:]
        width = math.prod(trailing)
        flat = rows.reshape(1, -1).expand(self.degree, -1).reshape(-1)
        out = _AllToAll.apply(flat, [self.size * width] * self.degree, [n * width for n in self.sizes], self.group)
        return out.reshape(sum(self.sizes), *trailing).movedim(0, dim)

    def check_heads(self, heads: int) -> None:
        """Ulysses gives each process ``heads / degree`` heads."""
        if heads % self.degree:
            raise InputError(f"config: sequence_parallel = {self.degree} must divide the model's attention heads "
                             f"({heads})")

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h, d = x.shape
        self.check_heads(h)
        hp = h // self.degree
        send = x.permute(2, 0, 1, 3).reshape(-1)  # [H, B, S_local, D]: head group j goes to process j
        out = _AllToAll.apply(send, [hp * b * s * d] * self.degree, [hp * b * n * d for n in self.sizes], self.group)
        parts = [p.reshape(hp, b, n, d) for p, n in zip(out.split([hp * b * n * d for n in self.sizes]), self.sizes)]
        return torch.cat(parts, dim=2).permute(1, 2, 0, 3)  # [B, S, H/P, D]

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        b, s, hp, d = x.shape
        parts = x.permute(2, 0, 1, 3).split(self.sizes, dim=2)  # [H/P, B, S_j, D] for process j
        send = torch.cat([p.reshape(-1) for p in parts])
        n = self.size
        out = _AllToAll.apply(send, [hp * b * m * d for m in self.sizes], [hp * b * n * d] * self.degree, self.group)
        return out.reshape(self.degree * hp, b, n, d).permute(1, 2, 0, 3)  # [B, S_local, H, D]


def setup(degree: int, rank: int, world: int) -> tuple[SequenceParallel | None, int, int]:
    """The trainer's split and its data-parallel position ``(split or None, data rank, data processes)``.

    Processes ``[k·degree, (k+1)·degree)`` share batch ``k`` (they are one data-parallel rank).
    """
    if degree == 1:
        return None, rank, world
    if world % degree:
        raise InputError(f"config: sequence_parallel = {degree} must divide the number of processes ({world}); "
                         f"launch with torchrun --nproc_per_node a multiple of {degree}")
    group, index = new_groups(degree)
    log.info("sequence parallelism: process %d is part %d of %d of data-parallel rank %d of %d", rank, index + 1,
             degree, rank // degree, world // degree)
    return SequenceParallel(group, degree, index), rank // degree, world // degree
