"""The training loop for both stages (every input comes from the cache; the one encoder loaded is the
frozen CLIP vision model, in stage 1 only, for the side-by-side first frames of two-person batches).

:meth:`Trainer.run` reads as the table of contents: set up accelerate, the model, optimiser and data;
resume from the newest complete checkpoint if there is one; loop over optimiser steps; save and export.
Stage 1 and stage 2 differ only in their config (learning rate, data, ``two_person_prob``).

Determinism: every random draw of a training step (noise, timesteps, condition dropout) comes from a
generator seeded by ``(seed, rank, micro-step)``, the data order and the two-person coin flips from
``(seed, epoch)``; model, optimiser, LR scheduler and the RNG states of every process are saved by
accelerate. A resumed run therefore reproduces the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from anytalker_core.errors import CheckpointError, InputError, Interrupted
from anytalker_core.model.attention import use_sequence_parallel
from anytalker_core.io.atomic import write_text_atomic

from . import flow
from .buckets import BucketBatchSampler
from .checkpointing import (MODEL_CONFIG_FILE, export_checkpoint, find_latest, load_trainer_state,
                            save_checkpoint, write_json_atomic)
from .config import ModelSection, TrainConfig
from .cache import read_index_once
from .data import FIRST_FRAME_KEY, BatchBuilder, SharedEmbeddings, TrainBatch, pairing_problem, passthrough
from .sequence_parallel import frame_shares
from .sequence_parallel import setup as setup_sequence_parallel

log = logging.getLogger(__name__)

__all__ = ["Trainer", "build_model", "model_config", "lr_lambda", "apply_condition_dropout", "step_generator"]


def model_config(section: ModelSection):
    """The :class:`AnyTalkerConfig` of the DiT a ``[model]`` section describes (nothing is allocated)."""
    from anytalker_core.model.checkpoint import resolve_config
    from anytalker_core.model.config import AnyTalkerConfig, read_config_json

    if section.tiny:
        return AnyTalkerConfig.tiny(**section.tiny_overrides)
    if section.config_json:
        return AnyTalkerConfig.from_dict(read_config_json(section.config_json))
    if section.init_checkpoint:
        from .parallel import checkpoint_tensors

        shapes, _ = checkpoint_tensors(section.init_checkpoint)
        hints = {}
        if section.init_checkpoint.endswith(".safetensors"):
            from safetensors import safe_open

            from anytalker_core.model.checkpoint import CONFIG_METADATA_KEY
            from anytalker_core.model.config import config_from_json

            with safe_open(section.init_checkpoint, framework="pt") as fh:
                meta = fh.metadata() or {}
            if CONFIG_METADATA_KEY in meta:
                hints = config_from_json(json.loads(meta[CONFIG_METADATA_KEY]))
        meta_sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        return resolve_config(section.init_checkpoint, meta_sd, hints)
    raise InputError("config [model]: set init_checkpoint (a released/exported DiT), config_json, or tiny = true")


def build_model(section: ModelSection, seed: int):
    """The whole DiT in float32 and train mode (all parameters trainable), identical on every process."""
    from anytalker_core.model.checkpoint import load_dit, read_state_dict
    from anytalker_core.model.dit import AnyTalkerDiT

    from .parallel import raise_on_shape_problems, shape_problems

    torch.manual_seed(seed)  # identical random init on every process
    if section.tiny or section.config_json:
        model = AnyTalkerDiT(model_config(section))
    elif section.init_checkpoint:
        model = load_dit(section.init_checkpoint, device="cpu", dtype=torch.float32)
    else:
        raise InputError("config [model]: set init_checkpoint (a released/exported DiT), config_json, or tiny = true")
    if section.init_checkpoint and (section.tiny or section.config_json):
        # start from (part of) a checkpoint, e.g. Wan2.1 I2V weights with fresh AFCA layers
        sd, _ = read_state_dict(section.init_checkpoint)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        raise_on_shape_problems(shape_problems(expected, {k: v.shape for k, v in sd.items()}),
                                section.init_checkpoint)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        log.info("initialised from %s: %d tensors loaded, %d new (random), %d ignored", section.init_checkpoint,
                 len(sd) - len(unexpected), len(missing), len(unexpected))
    model.float().train().requires_grad_(True)
    model.enable_gradient_checkpointing(section.gradient_checkpointing)
    return model


def _pairable(key: tuple[int, int, int, int]) -> bool:
    """Buckets whose samples stage 1 may pair: single-person, latent width divisible by 4."""
    return key[0] == 1 and key[3] % 4 == 0


def _has_accelerator_device() -> bool:
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                or torch.backends.mps.is_available())


def lr_lambda(step: int, warmup: int, max_steps: int, schedule: str) -> float:
    """LR multiplier after ``step`` optimiser steps: linear warm-up, then constant / cosine / linear decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


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


class Trainer:
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

    # ------------------------------------------------------------------ set-up
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        import os

        cfg = self.cfg
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and cfg.parallel != "deepspeed":
            raise InputError(f"launched with an accelerate DeepSpeed config but the fit config has parallel = "
                             f"'{cfg.parallel}': set parallel = 'deepspeed' and zero_stage in the TOML (the trainer "
                             "builds the DeepSpeed config from it) and launch with train/accelerate/deepspeed_zero*.yaml "
                             "or torchrun")
        deepspeed_plugin = self._deepspeed_plugin() if cfg.parallel == "deepspeed" else None
        self.accelerator = Accelerator(
            # without a GPU, accelerate only forms a multi-process (gloo) group when told cpu=True
            # (DeepSpeed's CPU route is set up in _deepspeed_plugin instead)
            cpu=not _has_accelerator_device() and deepspeed_plugin is None,
            deepspeed_plugin=deepspeed_plugin,
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=False),
            project_dir=str(self.run_dir),
        )
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        # the processes of one sequence-parallel group share a batch: they are one data-parallel rank
        self.split, self.data_rank, self.data_world = setup_sequence_parallel(cfg.sequence_parallel, self.rank,
                                                                              self.world)
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "train_config.json", asdict(cfg))
        self._tb = None
        if self.accelerator.is_main_process:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.run_dir / "metrics.jsonl")
        log.info("stage %d on %d process(es), %s, mixed precision %s", cfg.stage, self.world,
                 self.accelerator.device, cfg.mixed_precision)

    def _deepspeed_plugin(self):
        """accelerate's DeepSpeed plugin for ZeRO ``zero_stage``, with batch size, accumulation and clipping
        taken from this config (they cannot disagree). Without a GPU, DeepSpeed's CPU accelerator and a
        gloo group are selected (accelerate alone would fall back to one process)."""
        import os

        cfg = self.cfg
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise InputError("config: parallel = 'deepspeed' needs DeepSpeed: pip install deepspeed") from None
        from accelerate import PartialState
        from accelerate.utils import DeepSpeedPlugin

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        if not _has_accelerator_device():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            if "LOCAL_RANK" in os.environ:
                PartialState(backend="gloo")
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,  # torch's AdamW (DeepSpeed's fused Adam needs CUDA)
            "bf16": {"enabled": cfg.mixed_precision == "bf16"},
            "fp16": {"enabled": cfg.mixed_precision == "fp16"},
        }
        return DeepSpeedPlugin(hf_ds_config=ds_config)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.index = read_index_once(cfg.data)
        self.shared = SharedEmbeddings.load(cfg.data[0])
        keys = self.index.keys()
        if self.split is not None:  # every bucket must give each process of the group at least one frame
            frame_shares(min(k[1] for k in keys), cfg.sequence_parallel)
        sources = [self.index.source(i) for i in range(len(self.index))]
        can_pair = self._pairing_report(keys) if cfg.effective_two_person_prob > 0 else None
        self.sampler = BucketBatchSampler(
            keys, cfg.batch_size, two_person_prob=cfg.effective_two_person_prob,
            pairable=_pairable, seed=cfg.seed, rank=self.data_rank, world_size=self.data_world, sources=sources,
            can_pair=can_pair)
        identity_counts = {k[0] for k in keys} | ({2} if cfg.effective_two_person_prob > 0 else set())
        if cfg.parallel == "deepspeed" and cfg.zero_stage == 3 and len(identity_counts) > 1:
            raise InputError(
                f"config: parallel = 'deepspeed' with zero_stage = 3 needs the same number of identities in every "
                f"process's batch (ZeRO-3 gathers each layer's weights on every call, and the audio/face layers "
                f"run once per identity), but this data gives {sorted(identity_counts)} identities (two-person "
                "batches of stage 1 or mixed multi-person buckets): use parallel = 'fsdp2' (gathers per block), "
                "zero_stage = 2, or two_person_prob = 0 and one identity count")
        log.info("%d cached samples in %d bucket(s); %d batches per epoch per process", len(self.index),
                 len(set(self.index.keys())), len(self.sampler))

    def _pairing_report(self, keys) -> list[bool]:
        """Which samples may be half of a two-person frame; the others are named in the log and in
        ``RUN/pairing_report.json`` with the reason (they still train as single-person batches)."""
        can_pair, skipped = [], []
        for i, key in enumerate(keys):
            problem = pairing_problem(self.index, i) if _pairable(key) else None
            can_pair.append(problem is None)
            if problem is not None:
                skipped.append({"id": self.index.metas[i].get("id", self.index.paths[i].stem),
                                "path": str(self.index.paths[i]), "reason": "face_wider_than_half",
                                "detail": problem})
        for s in skipped:
            log.warning("stage 1 never pairs sample '%s' (%s): %s", s["id"], s["reason"], s["detail"])
        if self.accelerator.is_main_process:
            write_json_atomic(self.run_dir / "pairing_report.json",
                              {"pairable": sum(can_pair), "skipped": skipped})
        return can_pair

    def _setup_clip(self) -> None:
        """Stage 1's frozen CLIP vision model (two-person batches encode their side-by-side first frame)."""
        self.clip = None
        if self.cfg.effective_two_person_prob <= 0:
            return
        self._check_first_frames_cached()
        from anytalker_core.encoders.clip_vision import load_clip_vision

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.mixed_precision, torch.float32)
        self.clip = load_clip_vision(self.cfg.clip_vision, device=self.accelerator.device, dtype=dtype)
        self.clip.model.eval().requires_grad_(False)

    def _check_first_frames_cached(self) -> None:
        """Fail at start-up, not mid-run, on a cache folder written before prepare stored first frames
        (checks the first pairable sample of each folder; every pair checks its own samples again)."""
        checked = set()
        for i, (path, key) in enumerate(zip(self.index.paths, self.index.keys())):
            folder = path.parent
            if folder in checked or not _pairable(key):
                continue
            checked.add(folder)
            if not self.index.has_tensor(i, FIRST_FRAME_KEY):
                raise InputError(f"data folder '{folder.parent}' was prepared without '{FIRST_FRAME_KEY}' (sample "
                                 f"'{path.name}'), which two-person mode (two_person_prob > 0) needs: re-run "
                                 "'anytalker-train prepare' on it (older samples are re-encoded)")

    def _make_loader(self):
        from torch.utils.data import DataLoader

        builder = BatchBuilder(self.index, self.shared, seed=self.cfg.seed, audio_window=self.model_config.audio_window)
        return DataLoader(builder, sampler=self.sampler, batch_size=None, collate_fn=passthrough,
                          num_workers=self.cfg.num_workers, persistent_workers=False,
                          prefetch_factor=2 if self.cfg.num_workers > 0 else None)

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.sharded = cfg.parallel == "fsdp2"
        if self.sharded:
            from .parallel import build_sharded_model, ensure_process_group, shard_sizes

            ensure_process_group(self.run_dir)
            model = build_sharded_model(model_config(cfg.model), cfg.model.init_checkpoint, cfg.seed,
                                        self.accelerator.device, cfg.model.gradient_checkpointing)
            local, total = shard_sizes(model)
            log.info("FSDP2: rank %d of %d holds %d of %d parameters (%.1f%%)", self.rank, self.world, local, total,
                     100.0 * local / total)
        else:
            model = build_model(cfg.model, cfg.seed)
        self.model_config = model.config
        if self.split is not None:
            self.split.check_heads(model.config.num_heads)
        if self.accelerator.is_main_process:
            write_json_atomic(self.run_dir / MODEL_CONFIG_FILE, model.config.to_dict())
        n_params = sum(p.numel() for p in model.parameters())
        log.info("DiT: %.1fM trainable parameters (%s AFCA)", n_params / 1e6, model.config.afca)
        self._log_memory_model(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        # The scheduler is stepped by us once per optimiser step (not handed to accelerate, which
        # would step it once per process), and saved with the checkpoint.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule))
        if self.sharded:  # fully_shard did the distribution; accelerate only runs the loop's bookkeeping
            self.model, self.optimizer = model, optimizer
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
            self.accelerator.register_for_checkpointing(self.scheduler)

    def _log_memory_model(self, model) -> None:
        """The per-GPU memory model (train/memory.py) for the largest bucket of this run's data."""
        from .memory import estimate

        cfg = self.cfg
        _, f_lat, h_lat, w_lat = max(self.index.keys(), key=lambda k: k[1] * k[2] * k[3])
        mode = f"zero{cfg.zero_stage}" if cfg.parallel == "deepspeed" else cfg.parallel
        block = sum(p.numel() for p in model.blocks[0].parameters())
        counts = (sum(p.numel() for p in model.parameters()), block)
        video = (4 * (f_lat - 1) + 1, 8 * h_lat, 8 * w_lat)
        e = estimate(model.config, self.world, mode, cfg.batch_size, *video, cfg.model.gradient_checkpointing,
                     sp=cfg.sequence_parallel, two_person=cfg.effective_two_person_prob > 0, counts=counts)
        log.info("memory model per GPU (estimate, %s, %d process(es), sequence_parallel %d, largest bucket %dx%dx%d): "
                 "states %.2f GiB, gathered %.2f GiB, activations %.2f GiB, frozen CLIP %.2f GiB, total %.2f GiB",
                 mode, self.world, cfg.sequence_parallel, *video, e.states_gib, e.gathered_gib, e.activations_gib,
                 e.encoders_gib, e.total_gib)

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
