"""The set-up half of :class:`train.trainer.Trainer`: accelerate (DDP, DeepSpeed's ZeRO, the CPU/gloo
route), the cached data with its bucket sampler and stage 1's pairing report, stage 1's frozen CLIP, and the
DiT with its optimiser and LR schedule (:func:`lr_lambda`) — every step :meth:`Trainer.run` takes before
resuming and looping."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch

from anytalker_core.errors import InputError

from .buckets import BucketBatchSampler
from .cache import read_index_once
from .checkpointing import MODEL_CONFIG_FILE, write_json_atomic
from .config import TrainConfig
from .data import FIRST_FRAME_KEY, BatchBuilder, SharedEmbeddings, pairing_problem, passthrough
from .model import build_model, model_config
from .sequence_parallel import frame_shares
from .sequence_parallel import setup as setup_sequence_parallel

log = logging.getLogger(__name__)

__all__ = ["TrainerSetup", "lr_lambda"]


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


class TrainerSetup:
    """The set-up steps of a :class:`train.trainer.Trainer` (a base class, not used on its own): they read
    ``cfg`` and ``run_dir`` set by ``Trainer.__init__`` and set the accelerator, data, CLIP, model, optimiser
    and scheduler attributes the loop uses."""

    cfg: TrainConfig
    run_dir: Path

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
