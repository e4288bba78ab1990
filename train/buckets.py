"""Resolution buckets and a distributed-aware batch sampler that never mixes shapes in a batch.

* A clip's training size is :func:`anytalker_core.sampling.target_size`, the very function inference
  uses, so training and inference see the same sizes (``train.clip_windows.clip_size`` calls it).
* :class:`BucketBatchSampler` groups cached samples by a shape key (identities, latent frames,
  latent height, latent width) and yields lists of sample indices. Each epoch's batch list is a pure
  function of ``(seed, epoch)``: indices are shuffled inside buckets, every batch flips the
  two-person coin (stage 1: with probability ``two_person_prob`` each sample k of the batch is
  later joined side by side with sample k+1 of the same batch, never with a window of its own
  clip), batches are shuffled across buckets and dealt round-robin to ranks (each rank gets the
  same number, as DDP/FSDP need). The sampler's state is just ``(epoch, position)``, so resuming
  is exact and cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Hashable, Iterator, Sequence

import numpy as np

from anytalker_core.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Batch", "BucketBatchSampler"]


@dataclass(frozen=True)
class Batch:
    """One batch of sample indices.

    ``two_person``: sample ``indices[k]`` is joined side by side with sample ``partners[k]`` (its audio
    is the second identity); ``partners[k] == indices[(k+1) % B]`` whenever that sample comes from a
    different source clip (always for ``B >= 2`` clips of distinct sources), otherwise the next sample of
    the same bucket from a different clip.
    """

    indices: tuple[int, ...]
    two_person: bool
    key: Hashable
    epoch: int = 0
    position: int = 0  # index of this batch in its epoch (this rank's list)
    partners: tuple[int, ...] = ()


class BucketBatchSampler:
    """Yields :class:`Batch` objects of one shape each, sharded across ranks, resumable.

    Args:
        keys: the bucket key of every sample (equal keys = equal tensor shapes).
        batch_size: samples per batch (per rank; a two-person batch holds ``batch_size`` pairs).
        two_person_prob: probability that a batch of a ``pairable`` bucket becomes two-person (the
            paper's stage 1: 0.5, one coin per batch, whatever the batch size).
        pairable: predicate on a key: may samples of this bucket be concatenated (single-person ones)?
        seed, rank, world_size: reproducibility and sharding.
        drop_last: drop incomplete batches (default True: equal shapes *and* equal batch sizes).
        sources: the source clip of every sample (windows of one clip share it); a sample is never
            paired with a sample of the same source. Default: every sample its own source.
        can_pair: per sample, whether it may take part in a two-person batch (stage 1 marks samples
            whose face does not fit in half the frame); those samples only form single-person batches.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_size: int,
        two_person_prob: float = 0.0,
        pairable=lambda key: False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        sources: Sequence[Hashable] | None = None,
        can_pair: Sequence[bool] | None = None,
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= two_person_prob <= 1.0:
            raise InputError(f"two_person_prob must be in [0, 1], got {two_person_prob}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside world size {world_size}")
        self.keys = list(keys)
        self.sources = list(range(len(self.keys))) if sources is None else list(sources)
        can_pair = [True] * len(self.keys) if can_pair is None else list(can_pair)
        if len(self.sources) != len(self.keys) or len(can_pair) != len(self.keys):
            raise InputError("BucketBatchSampler: keys, sources and can_pair must have one entry per sample")
        self.batch_size = batch_size
        self.two_person_prob = two_person_prob
        self.pairable = pairable
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of this rank already yielded in ``epoch``
        # groups: (shape key, may pair) -> sample indices; a shape bucket splits when some samples cannot pair
        self._groups: dict[tuple[Hashable, bool], list[int]] = {}
        for i, key in enumerate(self.keys):
            self._groups.setdefault((key, bool(pairable(key) and can_pair[i])), []).append(i)
        if not self.batches_for_epoch(0):
            sizes = {f"{k}{'' if ok else ' (unpairable)'}": len(v) for (k, ok), v in self._groups.items()}
            raise InputError(
                f"no full batch of {batch_size} can be formed for {world_size} process(es) from the cached "
                f"samples (bucket sizes: {sizes}); add samples, lower batch_size or set drop_last=false")

    def _partners(self, chunk: list[int], order: list[int], after: int) -> tuple[int, ...] | None:
        """Partner of each ``chunk[k]``: the first of ``chunk[k+1], chunk[k+2], …`` (cyclic) from another
        source, else the first sample of the group's ``order`` from ``after`` on (cyclic) from another
        source; None if some sample has no partner at all (every sample of the group is one clip)."""
        partners = []
        for k, i in enumerate(chunk):
            found = next((chunk[(k + j) % len(chunk)] for j in range(1, len(chunk))
                          if self.sources[chunk[(k + j) % len(chunk)]] != self.sources[i]), None)
            if found is None:
                found = next((order[(after + j) % len(order)] for j in range(len(order))
                              if self.sources[order[(after + j) % len(order)]] != self.sources[i]), None)
            if found is None:
                return None
            partners.append(int(found))
        return tuple(partners)

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """Every rank's batches of ``epoch`` in global order (depends on ``seed`` and ``epoch`` only)."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[Batch] = []
        for group in sorted(self._groups, key=repr):
            key, may_pair = group
            members = self._groups[group]
            order = [members[i] for i in rng.permutation(len(members))]
            pos = 0
            while pos < len(order):
                two = bool(may_pair and rng.random() < self.two_person_prob)
                chunk = order[pos:pos + self.batch_size]
                if len(chunk) < self.batch_size and self.drop_last:
                    break
                partners = self._partners(chunk, order, pos + len(chunk)) if two else None
                two = partners is not None
                batches.append(Batch(tuple(int(i) for i in chunk), two, key, partners=partners or ()))
                pos += len(chunk)
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def batches_for_epoch(self, epoch: int) -> list[Batch]:
        """This rank's batches of ``epoch`` (every ``world_size``-th of :meth:`epoch_batches`)."""
        batches = self.epoch_batches(epoch)
        per_rank = len(batches) // self.world_size
        return batches[self.rank: per_rank * self.world_size: self.world_size]

    def __len__(self) -> int:
        return len(self.batches_for_epoch(self.epoch))

    def __iter__(self) -> Iterator[Batch]:
        """Yield the remaining batches of the current epoch, then move on to the next epoch, forever."""
        while True:
            batches = self.batches_for_epoch(self.epoch)
            while self.position < len(batches):
                batch = replace(batches[self.position], epoch=self.epoch, position=self.position)
                self.position += 1
                yield batch
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "world_size": self.world_size, "num_samples": len(self.keys)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off.

        Same data and process count: exactly the next batch. A different process count: the epoch's
        global batch order does not depend on it, so the run continues after the last batch any rank
        consumed (at most ``world_size − 1`` batches of the epoch are skipped). Different data (samples
        added or removed): this epoch's order no longer exists; the run continues with the next epoch.
        """
        self.seed = int(state.get("seed", self.seed))
        epoch, position = int(state["epoch"]), int(state["position"])
        old_world = int(state.get("world_size") or self.world_size)
        if state.get("num_samples") not in (None, len(self.keys)):
            log.warning("the data changed since the checkpoint (%s -> %d samples): continuing with epoch %d",
                        state.get("num_samples"), len(self.keys), epoch + 1)
            self.epoch, self.position = epoch + 1, 0
            return
        if old_world != self.world_size:
            consumed = position * old_world  # global batches of this epoch already trained on
            position = -(-consumed // self.world_size)
            log.info("process count changed %d -> %d: epoch %d continues at global batch %d", old_world,
                     self.world_size, epoch, position * self.world_size)
        self.epoch, self.position = epoch, position
