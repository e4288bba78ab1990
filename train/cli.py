"""The ``anytalker-train`` command.

    anytalker-train prepare CONFIG.toml            # or: prepare --input clips/ --output cache/ --vae ... --shard 0/4
    anytalker-train fit train/configs/stage1.toml  # stage 1 or 2, from the config; resumes automatically
    anytalker-train export RUN_DIR OUT.safetensors # newest checkpoint -> inference format
    anytalker-train pack CACHE                     # a cache's samples/ folder -> tar shards + index

Multi-process: ``torchrun --nproc_per_node N -m train.cli fit CONFIG`` or
``accelerate launch --config_file train/accelerate/ddp.yaml -m train.cli fit CONFIG``
(``prepare`` shards by ``RANK``/``WORLD_SIZE`` the same way).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from anytalker_core.errors import AnyTalkerError, InputError

log = logging.getLogger("anytalker.train")

_PREPARE_OPTIONS = ("input", "output", "vae", "clip_vision", "text_encoder", "wav2vec", "face_detector", "device",
                    "storage_dtype", "cache_format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytalker-train", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="talking clips -> cached training samples",
                       description="Filter and encode clips into cached samples (see train/configs/prepare.toml).")
    p.add_argument("config", nargs="?", help="prepare TOML config (options below override it)")
    for name in _PREPARE_OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    p.add_argument("--num-faces", type=int, default=None, help="expected faces per frame (default 1)")
    p.add_argument("--max-area", type=int, default=None, help="training size area (default 832*480)")
    p.add_argument("--shard", default=None, help="I/N: process shard I of N (default: RANK/WORLD_SIZE or 0/1)")

    f = sub.add_parser("fit", help="train one stage from a TOML config (resumes from the newest checkpoint)")
    f.add_argument("config", help="stage TOML config (train/configs/stage1.toml, stage2.toml)")
    f.add_argument("--run-dir", default=None, help="override the config's run_dir")
    f.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps")
    f.add_argument("--no-resume", action="store_true", help="refuse to continue a run that already has checkpoints (default: resume from the newest)")

    m = sub.add_parser("memory", help="print the per-GPU memory model of training (weights, optimiser, activations)")
    m.add_argument("--model", action="append", default=None,
                   help="1.3B, 14B or a config JSON (repeatable; default: 1.3B and 14B)")
    m.add_argument("--gpus", type=int, default=32, help="number of GPUs (default 32)")
    m.add_argument("--frames", type=int, default=81)
    m.add_argument("--height", type=int, default=480)
    m.add_argument("--width", type=int, default=832)
    m.add_argument("--batch-size", type=int, default=1, help="per GPU")
    m.add_argument("--no-gradient-checkpointing", action="store_true")

    m.add_argument("--sequence-parallel", type=int, default=1, help="processes splitting each sample (default 1)")

    k = sub.add_parser("pack", help="move a cache's samples/ folder into tar shards with an index (train/shards.py)")
    k.add_argument("cache", help="prepare output folder")
    k.add_argument("--shard-gib", type=float, default=1.0, help="close a tar after this many GiB (default 1)")

    e = sub.add_parser("export", help="write a run's newest (or a given) checkpoint in the inference format")
    e.add_argument("source", help="run folder or checkpoint folder (RUN/checkpoints/step-…)")
    e.add_argument("out", help="output .safetensors (loads with anytalker_core.model.checkpoint.load_dit)")
    e.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="cast weights")
    return parser


def _run_prepare(args) -> int:
    from .config import PrepareConfig, load_toml
    from .prepare import prepare

    cfg = load_toml(args.config, "prepare") if args.config else PrepareConfig()
    for name in _PREPARE_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, str(Path(value).resolve()) if name in ("input", "output") else value)
    if args.num_faces is not None:
        cfg.num_faces = args.num_faces
    if args.max_area is not None:
        cfg.max_area = args.max_area
    if args.shard:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
        except ValueError:
            raise InputError(f"--shard must look like I/N (e.g. 0/4), got {args.shard!r}") from None
        cfg.shard_index, cfg.num_shards = index, count
    if cfg.output:
        from .clips import resolve_shard

        shard, shards = resolve_shard(cfg)
        log_path = Path(cfg.output) / "reports" / f"prepare-shard-{shard}-of-{shards}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    report = prepare(cfg)
    print(f"prepare: {report['summary']} -> {cfg.output}")
    return 0


def _run_fit(args) -> int:
    from .config import load_toml
    from .trainer import Trainer

    overrides = {}
    if args.run_dir:
        overrides["run_dir"] = str(Path(args.run_dir).resolve())
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    cfg = load_toml(args.config, "fit", overrides)
    losses = Trainer(cfg, resume=not args.no_resume).run()
    if losses and int(os.environ.get("RANK", 0)) == 0:
        print(f"fit: stage {cfg.stage} finished; last loss {losses[-1]:.5f}; run folder {cfg.run_dir}")
    return 0


def _run_memory(args) -> int:
    from .memory import PARALLEL_MODES, estimate, format_table, parameter_counts, preset_config, tokens

    if args.gpus < 1 or args.batch_size < 1 or args.sequence_parallel < 1:
        raise InputError("--gpus, --batch-size and --sequence-parallel must be >= 1")
    rows = []
    for name in args.model or ["1.3B", "14B"]:
        config = preset_config(name)
        counts = parameter_counts(config)
        for mode in PARALLEL_MODES:
            rows.append((f"{name} ({counts[0] / 1e9:.2f}B)", estimate(
                config, args.gpus, mode, args.batch_size, args.frames, args.height, args.width,
                not args.no_gradient_checkpointing, sp=args.sequence_parallel, counts=counts)))
    seq = tokens(args.frames, args.height, args.width)
    print(f"per-GPU training memory, {args.frames} frames at {args.height}x{args.width} ({seq} tokens), "
          f"batch {args.batch_size} per GPU, {args.gpus} GPUs, sequence_parallel {args.sequence_parallel}, "
          "stage 1 (frozen CLIP):")
    print(format_table(rows))
    return 0


def _run_pack(args) -> int:
    from .shards import pack_folder

    if args.shard_gib <= 0:
        raise InputError("--shard-gib must be > 0")
    count = pack_folder(args.cache, int(args.shard_gib * (1 << 30)))
    print(f"pack: {count} samples -> {Path(args.cache) / 'shards'}")
    return 0


def _run_export(args) -> int:
    import torch

    from .checkpointing import export_checkpoint

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype)
    out = export_checkpoint(args.source, args.out, dtype=dtype)
    print(f"export: wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"prepare": _run_prepare, "fit": _run_fit, "memory": _run_memory,
                "export": _run_export, "pack": _run_pack}[args.command](args)
    except AnyTalkerError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
