"""Run under ``torchrun --nproc_per_node 2``: the tiny DiT's output, loss and gradients with its video tokens
split over the two processes (train.sequence_parallel) against the same model run whole on each process.

Prints one JSON line per case from rank 0: the largest differences found, the token split, and how far
rank 0's own gradient (before the data-parallel mean) is from the whole one (it holds only its frames' part).
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch
import torch.distributed as dist

from anytalker_core.model.attention import use_sequence_parallel
from anytalker_core.model.config import AnyTalkerConfig
from anytalker_core.model.dit import AnyTalkerDiT
from anytalker_core.model.speaker import Speaker
from train.sequence_parallel import SequenceParallel, new_groups


def inputs(cfg: AnyTalkerConfig, frames: int, identities: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    t_video = cfg.vae_scale * (frames - 1) + 1
    lat_h, lat_w = 4, 6
    x = torch.randn(1, 16, frames, lat_h, lat_w, generator=g)
    y = torch.randn(1, 20, frames, lat_h, lat_w, generator=g)
    context = torch.randn(1, 5, cfg.text_dim, generator=g)
    clip = torch.randn(1, 257, cfg.clip_dim, generator=g)
    speakers = [Speaker(audio=torch.randn(1, t_video, cfg.audio_window, cfg.audio_layers, cfg.audio_channels,
                                          generator=g),
                        face_clip=torch.randn(1, 257, cfg.clip_dim, generator=g),
                        token_mask=torch.rand(1, frames, lat_h // 2, lat_w // 2, generator=g))
                for _ in range(identities)]
    target = torch.randn(1, 16, frames, lat_h, lat_w, generator=g)
    return (x, torch.tensor([700.0]), context, clip, y, speakers), target


def run(model, args, target, split=None):
    model.zero_grad(set_to_none=True)
    with use_sequence_parallel(split) if split is not None else contextlib.nullcontext():
        out = model(*args)
        loss = torch.nn.functional.mse_loss(out, target)
    # outside the context: a block recomputed here (gradient checkpointing) must still split its tokens,
    # as on GPUs, where autograd runs the backward on threads that do not see the context
    loss.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return out.detach(), loss.detach(), grads


def main() -> None:
    dist.init_process_group("gloo")
    group, index = new_groups(2)
    split = SequenceParallel(group, 2, index)
    for afca, frames, identities, checkpointing in (("fused", 3, 2, False), ("fused", 2, 1, True),
                                                    ("legacy", 3, 2, False)):
        torch.manual_seed(0)
        model = AnyTalkerDiT(AnyTalkerConfig.tiny(afca=afca)).float()
        model.enable_gradient_checkpointing(checkpointing)
        args, target = inputs(model.config, frames, identities, seed=1)
        out0, loss0, grads0 = run(model, args, target)
        out1, loss1, grads1 = run(model, args, target, split)
        largest = max(g.abs().max().item() for g in grads0.values())
        partial = max((grads1[n] - grads0[n]).abs().max().item() for n in grads0) / largest
        for g in grads1.values():  # the data-parallel reduction: the mean over the 2 processes
            dist.all_reduce(g)
            g /= 2
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        result = {"afca": afca, "frames": frames, "identities": identities, "checkpointing": checkpointing,
                  "output": (out1 - out0).abs().max().item(), "loss": abs(loss1.item() - loss0.item()),
                  "loss_value": loss0.item(), "grad_max": largest,
                  "grad": max((grads1[n] - grads0[n]).abs().max().item() for n in grads0) / largest,
                  "without_grad": missing,
                  "before_reduction": partial}
        result["sizes"] = split.sizes
        if dist.get_rank() == 0:
            print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
