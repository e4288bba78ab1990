"""The reference's DiT and ours, side by side in one process, with the same weights and inputs.

Usage (the authors' repository is fetched by the user and never vendored)::

    git clone https://github.com/HKUST-C4G/AnyTalker /tmp/anytalker_ref
    python benchmarks/reference_side_by_side.py --reference /tmp/anytalker_ref \\
        --case 21x16x16:2 --case 21x30x52:1 --identities 0 2 --steps 10

For every case (latent grid ``FxHxW`` : number of blocks) and number of identities N, with the 1.3B
widths (dim 1536, 12 heads, ffn 8960) and random weights shared by both models:

* **forward**: one conditional forward of each model (ours: the plain ``model(...)`` call, which
  prepares its conditioning inside the call);
* **sampling**: a full run of ``--steps`` UniPC steps with classifier-free guidance (scale 4.5; the
  unconditional branch = negative prompt + zeroed audio). The reference runs as its own sampling loop
  does: two forwards per step. Ours runs through :class:`GuidedDenoiser` with every saving on, and —
  as the tolerance baseline — once more with the kv cache and branch batching off.

Measurements:

* time: CPU time of the process (``time.process_time``, all torch threads, OpenMP told not to
  spin-wait) minus the memory sampler's own thread CPU time, so the time does not depend on what else
  the shared machine runs; the models alternate (ref, ours, ref, ours, ...) for ``--repeats`` rounds
  and the median is reported; wall time is printed too;
* peak memory: resident memory sampled every 0.5 ms during the run, above its value before the run
  (the process is started with a fixed glibc mmap threshold so freed tensors leave RSS at once);
* output difference: relative L2 (``||a-b|| / ||b||``) and max abs.

The reference's attention helpers need CUDA (FlashAttention); they are replaced by float32 SDPA
equivalents, as the golden fixtures were made (``/work/shared/fixtures/README.md``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
import types
from pathlib import Path

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
ROOT = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the value at entry, sampled by a thread."""

    def __enter__(self):
        self.base = _rss()
        self.peak = self.base
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._done.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)
        self.cpu = time.thread_time()  # this thread's own CPU time, subtracted from the process's

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def load_reference(path: Path):
    """Import the reference's ``wan/modules/model.py`` without running its package ``__init__`` files
    (they pull in T5, the VAE, ...) and with float32 SDPA attention helpers."""
    import torch

    modules = path / "wan" / "modules"
    if not (modules / "model.py").is_file():
        raise SystemExit(f"--reference {path}: no wan/modules/model.py there (a checkout of HKUST-C4G/AnyTalker)")
    for name, where in (("_anytalker_ref", path / "wan"), ("_anytalker_ref.modules", modules)):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(where)]
        sys.modules[name] = pkg
    spec = importlib.util.spec_from_file_location("_anytalker_ref.modules.model", modules / "model.py")
    model = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = model
    spec.loader.exec_module(model)

    def sdpa(q, k, v, attn_mask=None, **_):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2), attn_mask=attn_mask)
        return out.transpose(1, 2).contiguous()

    model.flash_attention = lambda q, k, v, **kw: sdpa(q, k, v)
    model.attention = lambda q, k, v, attn_mask=None, **kw: sdpa(q, k, v, attn_mask)
    return model


def randomize(model) -> None:
    """Random weights everywhere (Wan's init zeroes the head, which would make every output zero)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        else:  # norm weights
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def print_row(r: dict, ref_cpu: float) -> None:
    extra = f"  vs uncached {r['rel_l2_vs_uncached']:.1e}" if "rel_l2_vs_uncached" in r else ""
    print(f"{r['case']} blocks={r['blocks']} tokens={r['tokens']} N={r['n']} {r['kind']:8s} {r['impl']:22s} "
          f"cpu {r['cpu_s']:8.2f} s  wall {r['wall_s']:8.2f} s  peak {r['peak_mib']:8.1f} MiB  "
          f"ref/this x{ref_cpu / r['cpu_s']:.2f}  rel-L2 vs ref {r['rel_l2_vs_ref']:.1e}{extra}", flush=True)


def run_jobs(args) -> None:
    """Each (case, N) in its own process, ``--jobs`` at a time. Every finished job's rows are added to
    ``--json`` at once; at the end all rows are printed in (case, N) order, also when a job failed
    (its failure is named and the exit code is 1)."""
    import subprocess
    import tempfile

    pairs = [(c, n) for c in args.case for n in args.identities]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        pending, running, results = list(enumerate(pairs)), [], {}
        while pending or running:
            while pending and len(running) < args.jobs:
                i, (case, n) = pending.pop(0)
                out = Path(tmp) / f"{i}.json"
                argv = [sys.executable, __file__, "--reference", str(args.reference), "--case", case,
                        "--identities", str(n), "--steps", str(args.steps), "--guidance", str(args.guidance),
                        "--repeats", str(args.repeats), "--sampling-repeats", str(args.sampling_repeats),
                        "--threads", str(args.threads), "--warmup", str(args.warmup), "--kinds", *args.kinds,
                        "--check-identities", *map(str, args.check_identities), "--json", str(out)]
                running.append((i, out, subprocess.Popen(argv)))
            time.sleep(2)
            for job in list(running):
                i, out, proc = job
                if proc.poll() is None:
                    continue
                running.remove(job)
                if proc.returncode:
                    failed.append(f"job {pairs[i]} failed with exit code {proc.returncode}")
                if out.is_file():
                    results[i] = json.loads(out.read_text())
                rows = [r for k in sorted(results) for r in results[k]]
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    rows = [r for k in sorted(results) for r in results[k]]
    print(f"\n== all rows ({len(rows)}) ==", flush=True)
    for r in rows:
        ref = next((x for x in rows if x["case"] == r["case"] and x["n"] == r["n"] and x["kind"] == r["kind"]
                    and x["impl"] == "reference"), r)
        print_row(r, ref["cpu_s"])
    for message in failed:
        print(message, file=sys.stderr)
    if failed:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of HKUST-C4G/AnyTalker")
    parser.add_argument("--case", action="append", default=None,
                        help="latent FxHxW:blocks (default 21x16x16:2 and 21x30x52:1)")
    parser.add_argument("--identities", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds per measurement")
    parser.add_argument("--sampling-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards of each model first")
    parser.add_argument("--kinds", nargs="+", choices=("forward", "sampling"), default=["forward", "sampling"])
    parser.add_argument("--check-identities", type=int, nargs="*", default=[2],
                        help="N for which our sampling also runs without kv cache and batching (the tolerance "
                             "baseline)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the (case, N) pairs in this many processes at once (each still runs both "
                             "models side by side; CPU time does not depend on it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    args.case = args.case or ["21x16x16:2", "21x30x52:1"]
    if args.jobs > 1:
        return run_jobs(args)
    if os.environ.get(MMAP_ENV) is None:  # re-exec so that glibc returns freed tensors to the OS at once
        env = {MMAP_ENV: "131072", "OMP_WAIT_POLICY": "PASSIVE"}  # idle OpenMP threads sleep, not spin
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **env))

    import torch

    sys.path.insert(0, str(ROOT))
    from anytalker_core.generation.guided import GuidedDenoiser, SpeedOptions
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT
    from anytalker_core.model.speaker import Speaker
    from anytalker_core.sampling import Guidance, make_scheduler, sample

    torch.set_num_threads(args.threads)
    ref_mod = load_reference(args.reference.resolve())
    rows = []
    for case in args.case:
        grid, blocks = case.split(":")
        f, h, w = (int(v) for v in grid.split("x"))
        blocks = int(blocks)
        torch.manual_seed(0)
        ref = ref_mod.WanModel(model_type="a2v_af", patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=1536,
                               ffn_dim=8960, freq_dim=256, text_dim=4096, out_dim=16, num_heads=12,
                               num_layers=blocks, qk_norm=True, cross_attn_norm=True, eps=1e-6).eval()
        ref.requires_grad_(False)
        randomize(ref)
        cfg = AnyTalkerConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=blocks, afca="fused")
        ours = AnyTalkerDiT(cfg).eval().requires_grad_(False)
        ours.load_state_dict(ref.state_dict(), strict=True)
        tokens = f * (h // 2) * (w // 2)
        video_frames = 4 * (f - 1) + 1
        g = torch.Generator().manual_seed(1)

        def rnd(*shape):
            return torch.randn(*shape, generator=g)

        x0, y = rnd(1, 16, f, h, w), rnd(1, 20, f, h, w)
        ctx, ctx_null, clip = rnd(1, 60, 4096), rnd(1, 120, 4096), rnd(1, 257, 1280)
        for n in args.identities:
            speakers = []
            for i in range(n):
                mask = torch.zeros(1, f, h // 2, w // 2)
                mask[..., i * (w // 2) // n:(i + 1) * (w // 2) // n] = 1.0
                speakers.append(Speaker(rnd(1, video_frames, 5, 12, 768), rnd(1, 257, 1280), mask))

            def ref_forward(x, t, context, zero_audio):
                audio = [torch.zeros_like(s.audio[0]) if zero_audio else s.audio[0] for s in speakers]
                return ref([x[0]], t=t, context=[context[0]], seq_len=tokens, clip_fea=clip, y=[y[0]],
                           audio_ref_features={"ref_face_list": [s.face_clip for s in speakers],
                                               "audio_list": audio},
                           face_mask_list=[s.token_mask[:, None].clone() for s in speakers])[0][None]

            def branch_inputs(branch):
                if branch == "cond":
                    return ctx, speakers
                return ctx_null, [s.without_audio() for s in speakers]

            t999 = torch.tensor([999])
            guidance = Guidance(args.guidance)

            def run_ref_sampling():
                def denoise(latent, t, branches):
                    return [ref_forward(latent, t, ctx if b == "cond" else ctx_null, b != "cond") for b in branches]
                return sample(denoise, x0, make_scheduler("unipc", args.steps, 3.0), guidance)

            def run_ours_sampling(options):
                denoiser = GuidedDenoiser(ours, branch_inputs, clip, y, options)
                return sample(denoiser, x0, make_scheduler("unipc", args.steps, 3.0), guidance)

            measures = {
                "forward": {
                    "reference": lambda: ref_forward(x0, t999, ctx, False),
                    "ours": lambda: ours(x0, t999, ctx, clip, y, speakers),
                },
                "sampling": {
                    "reference": run_ref_sampling,
                    "ours": lambda: run_ours_sampling(SpeedOptions(kv_cache=True, cfg_batch=True)),
                },
            }
            if n in args.check_identities:
                measures["sampling"]["ours, no cache/batch"] = lambda: run_ours_sampling(
                    SpeedOptions(kv_cache=False, cfg_batch=False))
            for kind, fns in measures.items():
                if kind not in args.kinds:
                    continue
                repeats = args.repeats if kind == "forward" else args.sampling_repeats
                times = {k: [] for k in fns}
                walls = {k: [] for k in fns}
                peaks = {k: 0.0 for k in fns}
                outs = {}
                with torch.no_grad():
                    if kind == "forward":
                        for _ in range(args.warmup):
                            for fn in fns.values():
                                fn()
                    for _ in range(repeats):
                        for name, fn in fns.items():
                            with PeakRSS() as mem:
                                c0, w0 = time.process_time(), time.perf_counter()
                                outs[name] = fn()
                                cpu = time.process_time() - c0
                                walls[name].append(time.perf_counter() - w0)
                            times[name].append(cpu - mem.cpu)
                            peaks[name] = max(peaks[name], mem.mib)
                base = outs["reference"]
                for name in fns:
                    row = dict(case=f"{f}x{h}x{w}", blocks=blocks, tokens=tokens, n=n, kind=kind, impl=name,
                               cpu_s=statistics.median(times[name]), wall_s=statistics.median(walls[name]),
                               peak_mib=peaks[name], rel_l2_vs_ref=rel(outs[name], base),
                               max_abs_vs_ref=float((outs[name] - base).abs().max()))
                    if kind == "sampling" and name == "ours" and "ours, no cache/batch" in outs:
                        row["rel_l2_vs_uncached"] = rel(outs[name], outs["ours, no cache/batch"])
                    rows.append(row)
                ref_t = statistics.median(times["reference"])
                for name in fns:
                    print_row(next(r for r in rows[::-1] if r["impl"] == name and r["kind"] == kind), ref_t)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
        del ref, ours


if __name__ == "__main__":
    main()
