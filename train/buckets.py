"""Resolution buckets and a distributed-aware batch sampler that never mixes shapes in a batch.

* A clip's training size is :func:`anytalker_core.sampling.target_size`, the very function inference
  uses, so training and inference see the same sizes (``train.prepare`` calls it).
* :class:`BucketBatchSampler` groups cached samples by a shape key (identities, latent frames,
  latent height, latent width) and yields lists of sample indices. Each epoch's batch list is a pure
  function of ``(seed, epoch)``: indices are shuffled inside buckets, every batch flips the
  two-person coin (stage 1: with probability ``two_person_prob`` a batch takes ``2·B`` single-person
  samples that are later paired side by side), batches are shuffled across buckets and dealt
  round-robin to ranks (each rank gets the same number, as DDP/FSDP need). The sampler's state is
  just ``(epoch, position)``, so resuming is exact and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Hashable, Iterator, Sequence

import numpy as np

from anytalker_core.errors import InputError

__all__ = ["Batch", "BucketBatchSampler"]

@dataclass(frozen=True)
class Batch:
    """One batch of sample indices. ``two_person``: indices pair up as (0,1), (2,3), ... side by side."""

    indices: tuple[int, ...]
    two_person: bool
    key: Hashable
    epoch: int = 0
    position: int = 0  # index of this batch in its epoch (this rank's list)


class BucketBatchSampler:
    """Yields :class:`Batch` objects of one shape each, sharded across ranks, resumable.

    Args:
        keys: the bucket key of every sample (equal keys = equal tensor shapes).
        batch_size: samples per batch (per rank; a two-person batch also holds ``batch_size`` pairs).
        two_person_prob: probability that a batch of a ``pairable`` bucket becomes two-person.
        pairable: predicate on a key: may samples of this bucket be concatenated (single-person ones)?
        seed, rank, world_size: reproducibility and sharding.
        drop_last: drop incomplete batches (default True: equal shapes *and* equal batch sizes).
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
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= two_person_prob <= 1.0:
            raise InputError(f"two_person_prob must be in [0, 1], got {two_person_prob}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside world size {world_size}")
        self.keys = list(keys)
        self.batch_size = batch_size
        self.two_person_prob = two_person_prob
        self.pairable = pairable
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of this rank already yielded in ``epoch``
        self._buckets: dict[Hashable, list[int]] = {}
        for i, key in enumerate(self.keys):
            self._buckets.setdefault(key, []).append(i)
        if not self.batches_for_epoch(0):
            sizes = {str(k): len(v) for k, v in self._buckets.items()}
            raise InputError(
                f"no full batch of {batch_size} can be formed for {world_size} process(es) from the cached "
                f"samples (bucket sizes: {sizes}); add samples, lower batch_size or set drop_last=false")

    def batches_for_epoch(self, epoch: int) -> list[Batch]:
        """This rank's batches of ``epoch`` (deterministic in ``seed`` and ``epoch``)."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[Batch] = []
        for key in sorted(self._buckets, key=repr):
            order = [self._buckets[key][i] for i in rng.permutation(len(self._buckets[key]))]
            pos = 0
            while pos < len(order):
                two = bool(self.pairable(key) and rng.random() < self.two_person_prob)
                take = 2 * self.batch_size if two else self.batch_size
                chunk = order[pos:pos + take]
                if len(chunk) < take:
                    if two and len(chunk) >= self.batch_size:  # too few for pairs: a single-person batch
                        chunk, two = chunk[: self.batch_size], False
                    elif self.drop_last:
                        break
                    elif two and len(chunk) >= 2:
                        chunk = chunk[: len(chunk) // 2 * 2]
                    else:
                        two = False
                batches.append(Batch(tuple(int(i) for i in chunk), two, key))
                pos += len(chunk)
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
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
        if state.get("num_samples") != len(self.keys) or state.get("world_size") != self.world_size:
            # Different data or process count: positions no longer mean the same batches.
            raise InputError(
                f"cannot resume the data position exactly: the checkpoint was made with "
                f"{state.get('num_samples')} samples on {state.get('world_size')} process(es), this run has "
                f"{len(self.keys)} samples on {self.world_size}; resume with the same data and process count")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))
