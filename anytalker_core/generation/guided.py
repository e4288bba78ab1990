"""The DiT as the sampler's denoiser: guidance branches prepared once, evaluated in one batch.

:class:`GuidedDenoiser` implements the :data:`~anytalker_core.sampling.sampler.Denoiser` protocol for
an :class:`~anytalker_core.model.dit.AnyTalkerDiT`. Two exact savings, each with an off switch in
:class:`SpeedOptions`:

* ``kv_cache``: every branch's conditioning (text/image/face/audio embeddings and every block's keys
  and values, :mod:`anytalker_core.model.prepared`) is computed once per generation instead of once
  per layer per step. It costs memory (logged; :meth:`GuidedDenoiser.cache_bytes`). Off: the blocks
  project the (still once-computed) embeddings on every call, as the reference does.
* ``cfg_batch``: the branches (``cond``/``uncond``, ...) run as one batched forward. The noisy latent
  and timestep are the same in every branch, so the first block's self-attention, query, image and
  face attention run once for all of them. ``"auto"`` batches when the extra activations fit the free
  memory of the device; ``False`` runs one forward per branch.

Both leave the prediction unchanged up to float rounding (pinned by ``tests/test_speed.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..model.prepared import PreparedConditioning
from ..model.speaker import Speaker

log = logging.getLogger(__name__)

BranchInputs = Callable[[str], tuple[torch.Tensor, list[Speaker]]]


@dataclass(frozen=True)
class SpeedOptions:
    """Switches for the exact savings of the sampling loop (all on by default)."""

    kv_cache: bool = True
    cfg_batch: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.cfg_batch not in (True, False, "auto"):
            raise InputError(f"cfg_batch must be True, False or 'auto', got {self.cfg_batch!r}")


def activation_bytes_per_branch(dit: torch.nn.Module, tokens: int) -> int:
    """Extra peak memory of one more batched branch. The blocks run every sublayer one batch row at a
    time (:func:`~anytalker_core.model.layout.stack_rows`), so a branch adds only its rows of the float32
    residual stream: the block's input, the sublayer output being written and the one read (3 rows)."""
    return 3 * tokens * dit.config.dim * 4


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free bytes, the CPU's ``MemAvailable``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stack_branch_inputs(inputs: Sequence[tuple[torch.Tensor, list[Speaker]]]) -> tuple[torch.Tensor, list[Speaker]]:
    """Branch inputs -> one batch: contexts zero-padded to a common length (the DiT pads to
    ``text_len`` with zero rows anyway) and stacked ``[K, L, text_dim]``; per speaker the audio rows
    stacked ``[K, T, W, L, C]`` (face tokens and masks, equal in every branch, stay batch 1)."""
    length = max(c.shape[1] for c, _ in inputs)
    context = torch.cat([F.pad(c, (0, 0, 0, length - c.shape[1])) for c, _ in inputs])
    speakers = []
    for i, first in enumerate(inputs[0][1]):
        audio = torch.cat([spk[i].audio for _, spk in inputs])
        speakers.append(replace(first, audio=audio))
    return context, speakers


class GuidedDenoiser:
    """``denoise(latent, t, branches) -> predictions`` for the AnyTalker DiT (see the module docstring).

    Args:
        dit: the model (its device and dtype are used).
        branch_inputs: ``branch -> (context [1, L, text_dim], speakers)`` (e.g. ``Condition.branch_inputs``).
        clip_fea: ``[1, 257, clip_dim]``; y: ``[1, 20, F, h, w]`` (both shared by every branch).
        options: :class:`SpeedOptions`.
    """

    def __init__(self, dit: torch.nn.Module, branch_inputs: BranchInputs, clip_fea: torch.Tensor, y: torch.Tensor,
                 options: SpeedOptions = SpeedOptions()) -> None:
        self.dit, self.branch_inputs, self.options = dit, branch_inputs, options
        self.clip_fea, self.y = clip_fea, y.to(dit.dtype)
        self._prepared: dict[tuple[str, ...], list[tuple[tuple[str, ...], PreparedConditioning]]] = {}

    def _batched(self, branches: tuple[str, ...], latent: torch.Tensor) -> bool:
        if len(branches) == 1 or self.options.cfg_batch is False:
            return False
        if self.options.cfg_batch is True:
            return True
        _, _, f, h, w = latent.shape
        p = self.dit.config.patch_size
        tokens = (f // p[0]) * (h // p[1]) * (w // p[2])
        need = activation_bytes_per_branch(self.dit, tokens) * (len(branches) - 1)
        free = free_memory_bytes(latent.device)
        if need > free:
            log.info("guidance branches run one by one: batching needs ~%.0f MiB more, %.0f MiB free",
                     need / 2**20, free / 2**20)
            return False
        return True

    def _prepare(self, branches: tuple[str, ...], latent: torch.Tensor) -> list[tuple[tuple[str, ...], PreparedConditioning]]:
        if branches not in self._prepared:
            groups = [branches] if self._batched(branches, latent) else [(b,) for b in branches]
            prepared = []
            for group in groups:
                context, speakers = stack_branch_inputs([self.branch_inputs(b) for b in group])
                prepared.append((group, self.dit.condition(context.to(self.dit.dtype), self.clip_fea, speakers,
                                                           cache_kv=self.options.kv_cache)))
            self._prepared = {branches: prepared}
            log.info("guidance branches %s: %s, conditioning %.1f MiB (kv cache %s)", branches,
                     "one batched forward" if len(groups) == 1 and len(branches) > 1 else "one forward each",
                     self.cache_bytes() / 2**20, "on" if self.options.kv_cache else "off")
        return self._prepared[branches]

    def cache_bytes(self) -> int:
        """Bytes held by the prepared conditioning of every branch."""
        return sum(c.nbytes() for groups in self._prepared.values() for _, c in groups)

    def __call__(self, latent: torch.Tensor, t: torch.Tensor, branches: tuple[str, ...]) -> list[torch.Tensor]:
        x = latent.to(self.dit.dtype)
        out: dict[str, torch.Tensor] = {}
        for group, cond in self._prepare(tuple(branches), latent):
            pred = self.dit.forward_conditioned(x, t, self.y, cond)
            out.update(zip(group, pred.split(1)))
        return [out[b] for b in branches]
