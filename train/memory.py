"""A per-GPU memory model of training (weights, gradients, AdamW state, activations), printed before a run.

The model counts bytes of what the trainer keeps alive; it is an estimate, not a measurement:

* **states** — fp32 master weights (4 B/param), fp32 gradients (4), AdamW's two fp32 moments (8):
  ``ddp`` keeps all 16 B/param on every GPU; ``fsdp2`` shards all of them over the ``W`` GPUs and
  all-gathers one block at a time (fp32: the trainer autocasts, it keeps no bf16 copy) — the
  current and the prefetched block plus the unsharded gradient of one block; DeepSpeed with bf16
  keeps a bf16 model copy (2 B/param) and bf16 gradients (2): ``zero2`` shards gradients, master
  weights and moments (2 + (2 + 12)/W), ``zero3`` also the bf16 weights ((2 + 2 + 12)/W) plus one
  gathered layer set.
* **activations** — with gradient checkpointing per block: each block's fp32 input
  ``[B, S, dim]`` is kept (``layers · B · S · dim · 4``) and one block is recomputed at a time; its
  peak (q, k, v, attention output, norms, the FFN's hidden layer, and their gradients) is modelled as
  ``2 · B · S · (20 · dim + 4 · ffn_dim)`` bytes. Attention is memory-efficient (SDPA/flash: no
  ``S × S`` matrix). Without checkpointing every block's activations stay: ``layers ×`` that peak.
  ``sp`` (``sequence_parallel``: each process holds ``S/sp`` of the tokens) divides ``S``.
* **frozen encoders** — stage 1's CLIP ViT-H/14 in bf16 (0.63 B parameters), when two-person mode is on.

Not counted: the CUDA context and allocator fragmentation (add ~2–4 GiB), the data loader's pinned
buffers, and DeepSpeed's communication buckets (set by its config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MemoryEstimate", "estimate", "tokens", "format_table", "PARALLEL_MODES", "parameter_counts", "PRESETS",
           "preset_config"]

PARALLEL_MODES = ("ddp", "fsdp2", "zero2", "zero3")
GIB = 1024 ** 3
CLIP_VISION_H_PARAMS = 632_000_000
# the released models' sizes (REFERENCE.md): 1.3B = the AnyTalkerConfig defaults (fused AFCA)
PRESETS = {"1.3B": {}, "14B": {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "afca": "legacy"}}


def preset_config(name: str):
    """``"1.3B"``/``"14B"`` → :class:`AnyTalkerConfig`; anything else is read as a config JSON path."""
    from anytalker_core.model.config import AnyTalkerConfig, read_config_json

    if name in PRESETS:
        return AnyTalkerConfig(**PRESETS[name])
    return AnyTalkerConfig.from_dict(read_config_json(name))


@dataclass
class MemoryEstimate:
    parallel: str
    world: int
    states_gib: float
    gathered_gib: float
    activations_gib: float
    encoders_gib: float

    @property
    def total_gib(self) -> float:
        return self.states_gib + self.gathered_gib + self.activations_gib + self.encoders_gib


def tokens(frames: int, height: int, width: int, patch: tuple[int, int, int] = (1, 2, 2), vae_time: int = 4,
           vae_space: int = 8) -> int:
    """DiT sequence length of a ``frames × height × width`` clip (81 × 480 × 832 → 32 760)."""
    latent_frames = (frames - 1) // vae_time + 1
    return (latent_frames // patch[0]) * (height // vae_space // patch[1]) * (width // vae_space // patch[2])


def parameter_counts(config) -> tuple[int, int]:
    """``(all parameters, parameters of one transformer block)`` of an AnyTalker DiT config (no memory used)."""
    import torch

    from anytalker_core.model.dit import AnyTalkerDiT

    with torch.device("meta"):
        model = AnyTalkerDiT(config)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.blocks[0].parameters())


def estimate(config, world: int, parallel: str, batch_size: int = 1, frames: int = 81, height: int = 480,
             width: int = 832, gradient_checkpointing: bool = True, sp: int = 1, two_person: bool = True,
             counts: tuple[int, int] | None = None) -> MemoryEstimate:
    """Per-GPU memory of one training step (see the module docstring for every term)."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    params, block = counts or parameter_counts(config)
    if parallel == "ddp":
        states, gathered = 16 * params, 0
    elif parallel == "fsdp2":
        states, gathered = 16 * params / world, 3 * 4 * block
    elif parallel == "zero2":
        states, gathered = 2 * params + 14 * params / world, 0
    else:
        states, gathered = 16 * params / world, 2 * 2 * block
    seq = math.ceil(tokens(frames, height, width, config.patch_size, config.vae_scale) / sp)
    peak = 2 * batch_size * seq * (20 * config.dim + 4 * config.ffn_dim)
    if gradient_checkpointing:
        activations = config.num_layers * batch_size * seq * config.dim * 4 + peak
    else:
        activations = config.num_layers * peak
    encoders = 2 * CLIP_VISION_H_PARAMS if two_person else 0
    return MemoryEstimate(parallel, world, states / GIB, gathered / GIB, activations / GIB, encoders / GIB)


def format_table(rows: list[tuple[str, MemoryEstimate]]) -> str:
    """A Markdown table of estimates (one row per ``(label, estimate)``)."""
    lines = ["| model | strategy | GPUs | states | gathered | activations | CLIP | total / GPU |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, e in rows:
        lines.append(f"| {label} | {e.parallel} | {e.world} | {e.states_gib:.1f} | {e.gathered_gib:.1f} | "
                     f"{e.activations_gib:.1f} | {e.encoders_gib:.1f} | **{e.total_gib:.1f} GiB** |")
    return "\n".join(lines)
