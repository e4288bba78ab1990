"""DiT forward: frame-local AFCA (ours) vs the reference's dense boolean mask, side by side.

For each number of identities N and each clip length, one forward pass of the same model with the
same inputs is timed with both AFCA formulations, and peak memory is measured:
- CUDA: ``torch.cuda.max_memory_allocated`` above the memory held before the forward;
- CPU: the process's resident memory, sampled every 0.2 ms by a thread during the forward, above
  its value before the forward (large tensors are mmap-backed, so RSS follows them); each
  measurement runs in a fresh subprocess.

Examples::

    python benchmarks/dit_forward.py --preset cpu-small              # tiny widths, real token counts
    python benchmarks/dit_forward.py --preset 1.3b --device cuda --dtype bf16 --frames 81 --size 480x832
    python benchmarks/dit_forward.py --preset 14b  --device cuda --dtype bf16 --layers 4   # a slice of 40

Weights are random: the numbers measure speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import threading
import statistics
import subprocess
import sys
import time
from unittest import mock

PRESETS = {
    # name: (dim, ffn_dim, heads, layers)
    "cpu-small": (128, 256, 2, 2),
    "1.3b": (1536, 8960, 12, 30),
    "14b": (5120, 13824, 40, 40),
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace, n: int, frames: int, impl: str) -> dict:
    """One measurement (runs inside a worker process on CPU)."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from anytalker_core.model.speaker import Speaker
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    torch.manual_seed(0)
    dim, ffn, heads, layers = PRESETS[args.preset]
    cfg = AnyTalkerConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=args.layers or layers,
                          afca="fused", text_dim=args.text_dim, audio_intermediate_dim=args.audio_hidden)
    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    model = AnyTalkerDiT(cfg, device=device, dtype=dtype).eval()

    def afca_mode():
        """The reference's dense-mask AFCA in place of the frame-local one, for the "dense" runs."""
        if impl != "dense":
            return contextlib.nullcontext()
        import anytalker_core.model.dit as dit_module
        from anytalker_core.model import afca

        return mock.patch.object(dit_module, "fused_afca_sum",
                                 functools.partial(afca.fused_afca_sum, impl=afca.dense_fused_afca))
    h, w = (int(v) // 8 for v in args.size.split("x"))
    lat_f = (frames - 1) // 4 + 1
    g = torch.Generator(device="cpu").manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x, y = rnd(1, 16, lat_f, h, w), rnd(1, 20, lat_f, h, w)
    ctx, clip = rnd(1, 64, cfg.text_dim), rnd(1, 257, cfg.clip_dim)
    speakers = []
    for i in range(n):
        mask = torch.zeros(1, lat_f, h // 2, w // 2, device=device)
        mask[..., i * (w // 2) // max(n, 1):(i + 1) * (w // 2) // max(n, 1)] = 1
        speakers.append(Speaker(rnd(1, frames, 5, 12, 768).to(dtype), rnd(1, 257, cfg.clip_dim), mask))
    t = torch.tensor([500], device=device)

    def run():
        with torch.no_grad(), afca_mode():
            model(x, t, ctx, clip, y, speakers)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
        sampled = [base]
        done = threading.Event()

        def poll():
            while not done.is_set():
                sampled.append(_rss_bytes())
                time.sleep(0.0002)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        done.set()
        poller.join()
        peak = max(sampled) - base
    return {"n": n, "frames": frames, "impl": impl, "tokens": lat_f * (h // 2) * (w // 2),
            "seconds": statistics.median(times), "peak_mib": max(peak, 0) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--layers", type=int, default=0, help="override the number of blocks (0 = preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--size", default="240x416", help="video HxW in pixels (latent = /8)")
    parser.add_argument("--frames", type=int, nargs="+", default=[33, 81], help="video frames (4n+1)")
    parser.add_argument("--identities", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-dim", type=int, default=4096)
    parser.add_argument("--audio-hidden", type=int, default=512, help="audio MLP width (512 in the release)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        n, frames, impl = args.worker.split(",")
        print(json.dumps(measure(args, int(n), int(frames), impl)))
        return

    rows = []
    for frames in args.frames:
        for n in args.identities:
            pair = {}
            for impl in ("frame-local", "dense"):
                if args.device == "cpu":  # a fresh process per measurement: clean peak RSS
                    argv = [a for a in sys.argv[1:]]
                    # a fixed mmap threshold makes glibc return every large tensor to the OS when
                    # freed, so RSS follows the live tensors instead of the allocator's high-water mark
                    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
                    out = subprocess.run([sys.executable, __file__, *argv, "--worker", f"{n},{frames},{impl}"],
                                         capture_output=True, text=True, check=True, env=env).stdout
                    pair[impl] = json.loads(out.strip().splitlines()[-1])
                else:
                    pair[impl] = measure(args, n, frames, impl)
            rows.append(pair)
            local, dense = pair["frame-local"], pair["dense"]
            print(f"frames={frames:3d} tokens={local['tokens']:6d} N={n}  "
                  f"frame-local {local['seconds'] * 1e3:9.1f} ms {local['peak_mib']:8.1f} MiB   |   "
                  f"dense-mask {dense['seconds'] * 1e3:9.1f} ms {dense['peak_mib']:8.1f} MiB   |   "
                  f"speed-up x{dense['seconds'] / local['seconds']:.2f}", flush=True)


if __name__ == "__main__":
    main()
