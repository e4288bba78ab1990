"""The training loop for both stages (every input comes from the cache; the one encoder loaded is the
frozen CLIP vision model, in stage 1 only, for the side-by-side first frames of two-person batches).

:meth:`Trainer.run` reads as the table of contents: set up accelerate, the model, optimiser and data;
resume from the newest complete checkpoint if there is one; loop over optimiser steps; save and export.
Stage 1 and stage 2 differ only in their config (learning rate, data, ``two_person_prob``).

Determinism: every random draw of a training step (noise, timesteps, condition dropout) comes from a
generator seeded by ``(seed, rank, micro-step)``, the data order and the two-person coin flips from
``(seed, epoch)``; model, optimiser, LR scheduler and the RNG states of every process are saved by
accelerate. A resumed run therefore reproduces the losses of an uninterrupted one.

The set-up steps live in :mod:`train.trainer_setup` (the base class :class:`TrainerSetup`), the DiT's
construction in :mod:`train.model`; this module holds the loop, resume, saving and logging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from anytalker_core.errors import CheckpointError, InputError, Interrupted
from anytalker_core.model.attention import use_sequence_parallel
from anytalker_core.io.atomic import write_text_atomic

from . import flow
from .checkpointing import export_checkpoint, find_latest, load_trainer_state, save_checkpoint
from .config import TrainConfig
from .data import TrainBatch
from .trainer_setup import TrainerSetup

log = logging.getLogger(__name__)

__all__ = ["Trainer", "apply_condition_dropout", "step_generator"]


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    """CPU generator for one micro-step's random draws (independent of how the run was resumed)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7919 + micro_step) % (2**63 - 1))


def apply_condition_dropout(batch: TrainBatch, generator: torch.Generator, text_p: float, audio_p: float,
                            empty_text: torch.Tensor | None) -> TrainBatch:
    """Drop conditions per sample for classifier-free guidance (returns a new batch).

    Text → the empty-prompt embedding (zeros if none was cached); audio → zeros for every identity,
    which is exactly the unconditional branch used at inference.
    """
    b = batch.latents.shape[0]
    drop_text = torch.rand(b, generator=generator) < text_p
    drop_audio = torch.rand(b, generator=generator) < audio_p
    context, audio = batch.context, batch.audio
    if drop_text.any():
        length = max(context.shape[1], 0 if empty_text is None else empty_text.shape[0])
        context = torch.nn.functional.pad(context, (0, 0, 0, length - context.shape[1])).clone()
        for i in torch.nonzero(drop_text).flatten().tolist():
            context[i] = 0
            if empty_text is not None:
                context[i, : empty_text.shape[0]] = empty_text.to(context.dtype)
    if drop_audio.any():
        audio = audio.clone()
        audio[:, drop_audio] = 0
    return replace(batch, context=context, audio=audio)


class Trainer(TrainerSetup):
    """One training stage. ``Trainer(cfg).run()``; ``should_stop`` is polled between steps."""

    def __init__(self, cfg: TrainConfig, should_stop: Callable[[], bool] | None = None, resume: bool = True):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.should_stop = should_stop
        self.resume = resume
        self.step = 0  # optimiser steps done
        self.micro_step = 0  # micro-batches consumed
        self.losses: list[float] = []
        self._validation = None
        self._data_position = (0, 0)

    # ------------------------------------------------------------------ table of contents
    def run(self) -> list[float]:
        """Train until ``max_steps``; returns this process's logged losses (one per optimiser step)."""
        self._setup_accelerator()
        self._setup_data()
        self._setup_clip()
        self._setup_model()
        if self.resume:
            self._resume()
        else:
            self._refuse_existing_run()
        self._loop()
        self._finish()
        return self.losses

    def _refuse_existing_run(self) -> None:
        if find_latest(self.run_dir) is not None:
            raise InputError(f"run_dir '{self.run_dir}' already holds checkpoints; to start over pick a new "
                             "run_dir (--run-dir) or delete its checkpoints/ folder")

    def _resume(self) -> None:
        latest = find_latest(self.run_dir)
        if latest is None:
            return
        state = load_trainer_state(latest)
        if state.get("model_config") not in (None, self.model_config.to_dict()):
            raise CheckpointError(f"checkpoint '{latest}' was made with a different model config; use a new run_dir")
        from .parallel import DCP_FOLDER, load_sharded

        sharded_ckpt = (latest / DCP_FOLDER).is_dir()
        if sharded_ckpt != self.sharded:
            raise CheckpointError(f"checkpoint '{latest}' was saved with parallel = "
                                  f"'{'fsdp2' if sharded_ckpt else 'ddp'}' and this run uses '{self.cfg.parallel}': "
                                  "resume with the same parallel setting (or export it and start a new run from "
                                  "the exported file with [model] init_checkpoint)")
        if self.sharded:  # DCP reshards: any process count
            load_sharded(self.model, self.optimizer, latest)
            self.scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
        else:
            self.accelerator.load_state(str(latest))
        self.step = int(state["step"])
        self.micro_step = int(state["micro_step"])
        self.sampler.load_state_dict(state["sampler"])
        if self.accelerator.is_main_process:  # steps logged after this checkpoint are trained again
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.is_file():
                rows = [r for r in metrics.read_text().splitlines() if r.strip()]
                kept = [r for r in rows if json.loads(r)["step"] <= self.step]
                write_text_atomic(metrics, "".join(r + "\n" for r in kept))
        log.info("resumed from %s (step %d, epoch %d, batch %d)", latest, self.step, self.sampler.epoch,
                 self.sampler.position)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        if self.step >= cfg.max_steps:
            log.info("run already at step %d >= max_steps %d; nothing to train", self.step, cfg.max_steps)
            return
        progress = self._progress_bar()
        # the data position of the last *consumed* batch (the loader's workers prefetch ahead of it)
        self._data_position = (self.sampler.epoch, self.sampler.position)
        batches = iter(self._make_loader())
        window: list[float] = []
        t0 = time.perf_counter()
        self.model.train()
        while self.step < cfg.max_steps:
            if self.should_stop is not None and self.should_stop():
                self._save()
                raise Interrupted(f"training stopped at step {self.step}; run 'fit' again to resume")
            batch: TrainBatch = next(batches)
            with acc.accumulate(self.model):
                if self.sharded:  # reduce-scatter gradients only on the last micro-batch of a step
                    self.model.set_requires_gradient_sync(acc.sync_gradients)
                with use_sequence_parallel(self.split) if self.split else contextlib.nullcontext():
                    loss = self._micro_step(batch)
                acc.backward(loss)
                if acc.sync_gradients:
                    if cfg.max_grad_norm > 0 and self.sharded:  # the norm of DTensor gradients is global
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    elif cfg.max_grad_norm > 0 and cfg.parallel != "deepspeed":  # DeepSpeed clips in its step
                        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            self.micro_step += 1
            self._data_position = batch.data_position
            window.append(float(loss.detach()))
            if not acc.sync_gradients:
                continue
            lr = self.scheduler.get_last_lr()[0]  # the LR this optimiser step used
            self.scheduler.step()
            self.step += 1
            step_loss = float(acc.reduce(torch.tensor(sum(window) / len(window), device=acc.device), "mean"))
            window.clear()
            self.losses.append(step_loss)
            self._log(step_loss, lr, batch, time.perf_counter() - t0, progress)
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                self._save()
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self._sample_hook()
        if progress is not None:
            progress.close()

    def _micro_step(self, batch: TrainBatch) -> torch.Tensor:
        """Noise one batch, predict the velocity, return the flow-matching loss."""
        cfg = self.cfg
        g = step_generator(cfg.seed, self.data_rank, self.micro_step)
        batch = apply_condition_dropout(batch, g, cfg.text_dropout, cfg.audio_dropout, self.shared.empty)
        if self.clip is not None:
            batch = batch.with_image_tokens(self.clip.encode)
        x0 = batch.latents
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        sigma = flow.sample_sigmas(x0.shape[0], g, cfg.timestep_sampler, cfg.shift, cfg.logit_mean, cfg.logit_std)
        x_t = flow.add_noise(x0, noise, sigma)
        target = flow.flow_target(x0, noise)
        t = flow.sigmas_to_timesteps(sigma)
        dev = self.accelerator.device
        batch = batch.to(dev)
        # a prepared (DDP) model autocasts inside accelerate's wrapper; the FSDP2 model is not wrapped
        with self.accelerator.autocast() if self.sharded else contextlib.nullcontext():
            pred = self.model(x_t.to(dev), t.to(dev), batch.context, batch.clip_fea, batch.y, batch.speakers())
        return flow.flow_matching_loss(pred, target.to(dev))

    # ------------------------------------------------------------------ bookkeeping
    def _trainer_state(self) -> dict:
        epoch, position = self._data_position
        sampler_state = self.sampler.state_dict()
        sampler_state.update(epoch=epoch, position=position)
        return {"step": self.step, "micro_step": self.micro_step, "sampler": sampler_state,
                "stage": self.cfg.stage, "model_config": self.model_config.to_dict(),
                "world_size": self.world}

    def _save(self) -> None:
        save_state = None
        if self.sharded:
            from .parallel import save_sharded

            def save_state(folder: Path) -> None:
                save_sharded(self.model, self.optimizer, folder)
                if self.accelerator.is_main_process:
                    torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

        save_checkpoint(self.accelerator, self.run_dir, self.step, self._trainer_state(),
                        self.model_config.to_dict(), keep=self.cfg.keep_checkpoints, save_state=save_state)

    def _progress_bar(self):
        if not self.accelerator.is_main_process:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=self.cfg.max_steps, initial=self.step, desc=f"stage {self.cfg.stage}", dynamic_ncols=True)

    def _log(self, loss: float, lr: float, batch: TrainBatch, elapsed: float, progress) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": self.step, "loss": loss, "lr": lr, "two_person": batch.two_person,
                  "shape": list(batch.latents.shape), "elapsed_s": round(elapsed, 3)}
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, self.step)
            self._tb.add_scalar("train/lr", lr, self.step)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        elif self.step % self.cfg.log_every == 0 or self.step == 1:
            log.info("step %d/%d loss %.5f lr %.3e", self.step, self.cfg.max_steps, loss, lr)

    def _sample_hook(self) -> None:
        """Validation samples every ``sample_every`` steps (main process; see train/validation.py)."""
        acc = self.accelerator
        if self.sharded or acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
            if self.step == self.cfg.sample_every:
                log.warning("validation sampling needs the whole model on one process; it is skipped under "
                            "%s (export a checkpoint and run 'anytalker generate' instead)",
                            "FSDP2" if self.sharded else acc.distributed_type.name)
            return
        if acc.is_main_process:
            if self._validation is None:
                from .validation import ValidationSampler

                wanted = self.cfg.sample_ids or [self.index.metas[0].get("id", self.index.paths[0].stem)]
                by_id = {m.get("id", p.stem): i for i, (m, p) in enumerate(zip(self.index.metas, self.index.paths))}
                missing = [s for s in wanted if s not in by_id]
                if missing:
                    raise InputError(f"config sample_ids: no cached sample named {missing}")
                self._validation = ValidationSampler(
                    [self.index.load(by_id[s]) for s in wanted], self.shared, self.run_dir / "samples",
                    steps=self.cfg.sample_steps, guidance=self.cfg.sample_guidance, seed=self.cfg.seed,
                    vae_path=self.cfg.sample_vae, audio_window=self.model_config.audio_window)
            with acc.autocast():
                self._validation(acc.unwrap_model(self.model), self.step, acc.device)
        acc.wait_for_everyone()

    def _finish(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if self._tb is not None:
            self._tb.close()
        if self.cfg.export_at_end and acc.is_main_process and self.step >= self.cfg.max_steps:
            latest = find_latest(self.run_dir)
            if latest is not None:
                export_checkpoint(latest, self.run_dir / "anytalker_dit.safetensors")
        acc.wait_for_everyone()
        acc.end_training()
        if self.sharded:
            import torch.distributed as dist

            if dist.is_initialized() and dist.get_world_size() == 1 and acc.num_processes == 1:
                dist.destroy_process_group()  # the one-process group ensure_process_group made
