"""``anytalker convert IN.pth OUT.safetensors [--dtype bf16|fp16]``: the released format to safetensors."""

from __future__ import annotations

import argparse

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="released checkpoint (.pth holding {'model': state_dict}) or .safetensors")
    parser.add_argument("dst", metavar="DST", help="output .safetensors (the config is stored in its metadata)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast floating-point weights (default: keep the stored dtypes)")
    parser.add_argument("--config", default=None,
                        help="the model's config JSON (e.g. config_af2v_1_3B.json); inferred from shapes if omitted")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..errors import InputError
    from ..model.checkpoint import convert_checkpoint
    from .validate import check_free_space, check_output_file

    src = Path(args.src)
    if not src.is_file():
        raise InputError(f"SRC '{src}': no such file" + (" (a folder; pass the .pth file)" if src.is_dir() else ""))
    if args.config is not None and not Path(args.config).is_file():
        raise InputError(f"--config '{args.config}': no such file")
    check_output_file(args.dst, "DST", ".safetensors")
    if Path(args.dst).resolve() == src.resolve():
        raise InputError(f"DST '{args.dst}' is the source file; choose another name")
    # the source's size, twice that when casting up to fp32 (from a bf16/fp16 file)
    check_free_space(args.dst, src.stat().st_size * (2 if args.dtype == "fp32" else 1), "DST")
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    config = convert_checkpoint(args.src, args.dst, dtype=dtype, config_path=args.config)
    print(f"wrote {args.dst}: {config.afca} AFCA, dim {config.dim}, {config.num_layers} layers, "
          f"{config.num_heads} heads")
    return 0
