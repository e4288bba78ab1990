"""``anytalker convert IN.pth OUT.safetensors [--dtype bf16|fp16]``: the released format to safetensors."""

from __future__ import annotations

import argparse

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="released checkpoint (.pth holding {'model': state_dict}) or .safetensors")
    parser.add_argument("dst", help="output .safetensors (the config is stored in its metadata)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast floating-point weights (default: keep the stored dtypes)")
    parser.add_argument("--config", default=None,
                        help="the model's config JSON (e.g. config_af2v_1_3B.json); inferred from shapes if omitted")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.checkpoint import convert_checkpoint

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    config = convert_checkpoint(args.src, args.dst, dtype=dtype, config_path=args.config)
    print(f"wrote {args.dst}: {config.afca} AFCA, dim {config.dim}, {config.num_layers} layers, "
          f"{config.num_heads} heads")
    return 0
