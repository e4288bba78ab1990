"""Long clips: time per window and peak memory against the number of windows (1 … 18, and 3 minutes).

Each measurement runs in a fresh process: the tiny random model set (``anytalker_core.testing.demo``), a
two-person image (scikit-image's astronaut twice) and a two-person espeak-ng conversation (turns of
sentences, each track silent while the other speaks; written to 32-bit float WAV files that the run reads,
as the CLI's ``--audio`` files) of the length that makes ``N`` windows of
``--window-frames`` overlapping by ``--overlap-frames``. The clip goes through the CLI's path
(``generate_to_file``: frames streamed into the mp4 encoder, work folder for resuming) with one CPU thread.
Baseline in the same terms: ``--pytorch-convs`` (the VAE's convolutions on PyTorch's own kernel choice
instead of oneDNN).

Reported per ``N``: clip length, CPU seconds of the generating thread per window (median and the spread of the
windows after the first; CPU time because wall time on a shared machine measures the neighbours), wall
seconds per window, peak resident memory of the process (the kernel's exact high-water mark, VmHWM) above the memory held once the
models are loaded, during the whole generation and during the window loop alone (from the first
denoising step), and the frames written. Command and results: BENCHMARKS.md ("Long clips").

    python benchmarks/long_clip.py --windows 1 6 18 60 --size 64x128 --steps 2
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from fresh_process import emit, measure_in_fresh_process


class PeakRss:
    """Exact peak RSS (bytes) of this process: the kernel's high-water mark (``VmHWM`` in
    ``/proc/self/status``), reset by writing 5 to ``/proc/self/clear_refs``. A sampling thread misses the
    short spikes of single allocations (and catches more of them the longer the run), so it is not used.
    ``mark(name)`` closes the peak of the running phase and starts ``name``'s; ``phases[name]`` is then the
    highest RSS from its mark to the next mark (or to ``close()``)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.phases: dict[str, int] = {}
        self._current: str | None = None

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    @staticmethod
    def high_water() -> int:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024

    def mark(self, name: str) -> None:
        if self._current is not None:
            self.phases[self._current] = self.high_water()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        self._current = name

    def close(self) -> None:
        self.mark("")


def measure(windows: int, args: argparse.Namespace) -> dict:
    """One measurement (run in a fresh process by ``main``)."""
    import numpy as np
    import soundfile
    import torch

    torch.set_num_threads(1)
    from anytalker_core.cli.generate import generate_to_file
    from anytalker_core.encoders.onednn_conv import restore_pytorch_convolutions
    from anytalker_core.generation.pipeline import AnyTalkerPipeline, GenerationRequest
    from anytalker_core.generation.window_plan import default_overlap
    from anytalker_core.generation.window_plan import LongClipOptions
    from anytalker_core.testing.conversation import synthesize_conversation
    from anytalker_core.testing.demo import build_demo_models, demo_image

    height, width = (int(v) for v in args.size.split("x"))
    overlap = args.overlap_frames or default_overlap(args.window_frames)
    frames = args.window_frames + (windows - 1) * (args.window_frames - overlap)
    with tempfile.TemporaryDirectory(prefix="anytalker-bench-") as tmp:
        tmp = Path(tmp)
        paths = build_demo_models(tmp / "models")
        pipe = AnyTalkerPipeline.from_paths(paths, face_backend="mediapipe")
        if args.pytorch_convs:  # the baseline: PyTorch's own kernel choice (slow_conv3d for the demo VAE's widths)
            restore_pytorch_convolutions(pipe.vae.model)
        image = demo_image(2, size=height)
        face = height
        boxes = [[0.3 * face, 0.2 * face, 0.7 * face, 0.62 * face],
                 [face + 0.3 * face, 0.2 * face, face + 0.7 * face, 0.62 * face]]
        tracks = []  # files, as the CLI reads them (the waveforms are not held beside the run)
        for i, wave in enumerate(synthesize_conversation(frames / 24 + 0.5)):
            tracks.append(tmp / f"person{i + 1}.wav")
            soundfile.write(tracks[-1], wave.numpy(), 16000, subtype="FLOAT")
        del wave
        request = GenerationRequest(image=image, audio=tracks, prompt="two astronauts talk", steps=args.steps,
                                    seed=1, max_area=height * width, boxes=boxes, frame_num=frames,
                                    window_frames=args.window_frames,
                                    long_clip=LongClipOptions(overlap_frames=overlap))
        ends: list[float] = []
        cpu: list[float] = []
        live: list[float] = []
        denoise = pipe.denoise

        def timed_denoise(condition, **kw):
            live.append(sampler.rss() / 2**20)
            if not ends:
                sampler.mark("windows")  # the stages before the first denoising step end here
            ends.append(time.monotonic())
            cpu.append(time.thread_time())
            return denoise(condition, **kw)

        pipe.denoise = timed_denoise
        sampler = PeakRss()
        loaded = sampler.rss()  # models loaded, inputs built
        sampler.mark("before")
        started = time.monotonic()
        result = generate_to_file(pipe, request, tmp / "clip.mp4")
        total = time.monotonic() - started
        sampler.close()
        peaks = {"windows": sampler.phases["windows"],
                 "generate": max(sampler.phases["before"], sampler.phases["windows"])}
        ends.append(time.monotonic())
        cpu.append(time.thread_time())
        per_window = np.diff(np.array(ends))
        cpu_window = np.diff(np.array(cpu))  # the generating thread's CPU seconds: robust to a busy machine
        from anytalker_core.io.media import read_video

        written = read_video(tmp / "clip.mp4").num_frames
    return {"windows": windows, "frames": frames, "seconds": frames / 24, "written": written,
            "result_frames": result.num_frames, "total_s": total,
            "window_s_median": float(np.median(per_window)),
            "window_s_min": float(per_window[1:].min()) if windows > 1 else float(per_window[0]),
            "window_s_max": float(per_window[1:].max()) if windows > 1 else float(per_window[0]),
            "window_cpu_median": float(np.median(cpu_window)),
            "window_cpu_min": float(cpu_window[1:].min()) if windows > 1 else float(cpu_window[0]),
            "window_cpu_max": float(cpu_window[1:].max()) if windows > 1 else float(cpu_window[0]),
            "live_first_mib": live[0], "live_last_mib": live[-1], "live_max_mib": max(live),
            "loaded_mib": loaded / 2**20, "peak_generate_mib": peaks["generate"] / 2**20,
            "peak_windows_mib": peaks["windows"] / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 6, 12, 18])
    parser.add_argument("--window-frames", type=int, default=81)
    parser.add_argument("--overlap-frames", type=int, default=None)
    parser.add_argument("--size", default="96x192", help="video HxW (two faces side by side)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--pytorch-convs", action="store_true",
                        help="baseline: the VAE's convolutions on PyTorch's own kernel choice instead of oneDNN "
                             "(anytalker_core/encoders/onednn_conv.py)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = parser.parse_args()
    if args.one is not None:
        emit(measure(args.one, args))
        return 0
    rows = []
    for n in args.windows:
        cmd = [sys.executable, __file__, "--one", str(n), "--window-frames", str(args.window_frames),
               "--size", args.size, "--steps", str(args.steps)]
        if args.overlap_frames:
            cmd += ["--overlap-frames", str(args.overlap_frames)]
        if args.pytorch_convs:
            cmd.append("--pytorch-convs")
        row = measure_in_fresh_process(cmd)
        if row is None:
            return 1
        rows.append(row)
    print("| windows | frames | clip | frames written | CPU s / window (median) | min–max after the first | "
          "wall s / window | RSS, models loaded | RSS at window starts (first / last) | peak RSS, whole generation | "
          "peak RSS, window loop |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['windows']} | {r['frames']} | {r['seconds']:.1f} s | {r['written']} | {r['window_cpu_median']:.2f} | "
              f"{r['window_cpu_min']:.2f}–{r['window_cpu_max']:.2f} | {r['window_s_median']:.2f} | "
              f"{r['loaded_mib']:.0f} MiB | {r['live_first_mib']:.0f} / {r['live_last_mib']:.0f} MiB | "
              f"{r['peak_generate_mib']:.0f} MiB (+{r['peak_generate_mib'] - r['loaded_mib']:.0f}) | "
              f"{r['peak_windows_mib']:.0f} MiB (+{r['peak_windows_mib'] - r['loaded_mib']:.0f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
