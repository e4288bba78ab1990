"""Compute dtype and block storage of our DiT, side by side: time, resident memory, output difference.

Usage::

    python benchmarks/precision.py --case 21x16x16:2 --identities 2 --steps 10

For the 1.3B widths (dim 1536, 12 heads, ffn 8960) with random weights saved as a released-style
``.pth``, each variant is loaded by :func:`load_dit` in a fresh process (so resident memory after the
load is that variant's own): fp32, bf16, fp8 blocks computed in bf16, fp8 blocks computed in fp32.
Reported: resident memory after loading (the checkpoint's memory map closed), the CPU time of one
conditional forward and of a ``--steps`` sampling run with guidance (median of ``--repeats``, process
CPU time with passive OpenMP threads), and the relative L2 difference of both outputs from fp32.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "fp8 blocks, bf16 compute": ("bfloat16", "fp8"),
            "fp8 blocks, fp32 compute": ("float32", "fp8")}


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from anytalker_core.generation.guided import GuidedDenoiser
    from anytalker_core.model.checkpoint import load_dit
    from anytalker_core.model.speaker import Speaker
    from anytalker_core.sampling import Guidance, make_scheduler, sample

    torch.set_num_threads(args.threads)
    dtype_name, storage = VARIANTS[args.worker]
    gc.collect()
    before = _rss_mib()
    model = load_dit(args.pth, config_path=args.pth.with_suffix(".json"), dtype=getattr(torch, dtype_name),
                     weight_dtype=torch.float8_e4m3fn if storage else None)
    gc.collect()
    loaded = _rss_mib() - before
    f, h, w = args.grid
    g = torch.Generator().manual_seed(1)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x0, y = rnd(1, 16, f, h, w), rnd(1, 20, f, h, w)
    ctx, ctx_null, clip = rnd(1, 60, 4096), rnd(1, 120, 4096), rnd(1, 257, 1280)
    speakers = []
    for i in range(args.identities):
        mask = torch.zeros(1, f, h // 2, w // 2)
        mask[..., i * (w // 2) // args.identities:(i + 1) * (w // 2) // args.identities] = 1.0
        speakers.append(Speaker(rnd(1, 4 * (f - 1) + 1, 5, 12, 768), rnd(1, 257, 1280), mask))
    inputs = lambda b: (ctx, speakers) if b == "cond" else (ctx_null, [s.without_audio() for s in speakers])  # noqa
    t = torch.tensor([999])
    times, out = {"forward": [], "sampling": []}, {}
    with torch.no_grad():
        model(x0, t, ctx, clip, y, speakers)  # warm-up
        for _ in range(args.repeats):
            c0 = time.process_time()
            out["forward"] = model(x0, t, ctx, clip, y, speakers).float()
            times["forward"].append(time.process_time() - c0)
        c0 = time.process_time()
        out["sampling"] = sample(GuidedDenoiser(model, inputs, clip, y), x0, make_scheduler("unipc", args.steps, 3.0),
                                 Guidance(4.5))
        times["sampling"].append(time.process_time() - c0)
    torch.save(out, args.out)
    return {"variant": args.worker, "loaded_mib": loaded,
            "forward_s": statistics.median(times["forward"]), "sampling_s": times["sampling"][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="21x16x16:2", help="latent FxHxW:blocks")
    parser.add_argument("--identities", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pth", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    grid, blocks = args.case.split(":")
    args.grid = tuple(int(v) for v in grid.split("x"))
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    sys.path.insert(0, str(ROOT))
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "dit.pth"
        torch.manual_seed(0)
        cfg = AnyTalkerConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=int(blocks), afca="fused")
        model = AnyTalkerDiT(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0, p[0].numel() ** -0.5)
                elif name.endswith("bias"):
                    p.normal_(0, 0.02)
        torch.save({"model": model.state_dict()}, pth)
        pth.with_suffix(".json").write_text(json.dumps(cfg.to_dict()))
        size = pth.stat().st_size / 2**20
        del model
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MALLOC_MMAP_THRESHOLD_="131072")
        rows, outs = [], {}
        for name in VARIANTS:
            out = Path(tmp) / f"{len(rows)}.pt"
            argv = [sys.executable, __file__, "--case", args.case, "--identities", str(args.identities),
                    "--steps", str(args.steps), "--repeats", str(args.repeats), "--threads", str(args.threads),
                    "--worker", name, "--pth", str(pth), "--out", str(out)]
            proc = subprocess.run(argv, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(proc.stderr)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            outs[name] = torch.load(out)
        base = outs["fp32"]
        print(f"checkpoint {size:.0f} MiB (fp32), case {args.case}, N={args.identities}, {args.steps} steps")
        for row in rows:
            o = outs[row["variant"]]
            diff = {k: float((o[k] - base[k]).norm() / base[k].norm()) for k in ("forward", "sampling")}
            print(f"{row['variant']:26s} RSS after load {row['loaded_mib']:7.0f} MiB  forward {row['forward_s']:6.2f} s "
                  f"(x{rows[0]['forward_s'] / row['forward_s']:.2f})  sampling {row['sampling_s']:7.1f} s "
                  f"(x{rows[0]['sampling_s'] / row['sampling_s']:.2f})  rel-L2 vs fp32: forward {diff['forward']:.1e}, "
                  f"sampling {diff['sampling']:.1e}", flush=True)


if __name__ == "__main__":
    main()
