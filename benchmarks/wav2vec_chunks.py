"""wav2vec2 on long tracks: the chunked CNN feature encoder against one pass (difference, memory, time).

For each track length and model width, one fresh process encodes one person's track of a two-person espeak-ng
conversation (``anytalker_core.testing.conversation``: real synthetic speech, sentences in turns with
silences) at 24 video frames per second (``Wav2VecEncoder.encode``: CNN, interpolation, transformer, every
layer's output), once in one pass (``chunk_frames`` above the track's length: the path before chunking) and
once chunked
(:data:`~anytalker_core.audio.wav2vec.CNN_CHUNK_FRAMES`), interleaved (one-pass, chunked, one-pass, chunked);
reported: the largest difference of the features relative to their largest magnitude, the peak resident memory
above the memory before the call (RSS sampled every 2 ms, glibc's ``malloc_trim`` before each run; the lower of
the two runs, as the first run of a process also pays one-time allocations), and the CPU seconds of the process
(``time.process_time``, the lower of the two runs; one thread).

Widths: ``tiny`` = the demo's wav2vec2 (``DemoWidths``: 2 layers, 64 wide, 32 conv channels), ``base`` = the
shapes of ``facebook/wav2vec2-base-960h`` (12 layers, 768 wide, 512 conv channels) with random weights
(memory and time depend on the shapes only; the differences are float32 rounding either way).

    python benchmarks/wav2vec_chunks.py --seconds 10 60 180 --widths tiny base
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from pathlib import Path

from fresh_process import emit, measure_in_fresh_process
WIDTHS = {"tiny": dict(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=64, conv_dim=32),
          "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, conv_dim=512,
                       pos_conv_kernel=128)}


def measure(seconds: float, width: str, norm: str) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(1)
    from anytalker_core.audio import wav2vec as w2v
    from anytalker_core.testing.conversation import synthesize_conversation
    from anytalker_core.testing.tiny_wav2vec import make_tiny_wav2vec

    libc = ctypes.CDLL("libc.so.6")
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    with tempfile.TemporaryDirectory() as tmp:
        encoder = w2v.load_wav2vec(make_tiny_wav2vec(Path(tmp) / "w2v", feat_extract_norm=norm, **WIDTHS[width]))
    track = synthesize_conversation(seconds)[0]
    one_pass = 10 ** 9

    values = encoder.normalize(track)
    frames = w2v.video_frames_for_samples(values.numel(), 24)

    def run(chunk: int):
        libc.malloc_trim(0)
        base = rss()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        cpu = time.process_time()
        features = encoder.encode(values, frames, chunk_frames=chunk).cpu()
        cpu = time.process_time() - cpu
        stop.set()
        thread.join()
        return features, (peak[0] - base) / 2 ** 20, cpu

    runs = [run(c) for c in (one_pass, w2v.CNN_CHUNK_FRAMES, one_pass, w2v.CNN_CHUNK_FRAMES)]
    a, b = runs[0][0], runs[1][0]
    scale = float(a.abs().max())
    return {"seconds": seconds, "width": width, "norm": norm, "frames": int(a.shape[0]),
            "max_abs_diff": float((a - b).abs().max()), "rel_diff": float((a - b).abs().max()) / scale,
            "repeat_equal": bool(a.equal(runs[2][0]) and b.equal(runs[3][0])),
            "one_pass_mib": min(runs[0][1], runs[2][1]), "chunked_mib": min(runs[1][1], runs[3][1]),
            "one_pass_cpu": min(runs[0][2], runs[2][2]), "chunked_cpu": min(runs[1][2], runs[3][2])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 180])
    parser.add_argument("--widths", nargs="+", default=["tiny", "base"], choices=sorted(WIDTHS))
    parser.add_argument("--norms", nargs="+", default=["group", "layer"], choices=["group", "layer"])
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: seconds width norm
    args = parser.parse_args()
    if args.one:
        emit(measure(float(args.one[0]), args.one[1], args.one[2]))
        return 0
    rows = []
    for width in args.widths:
        for norm in args.norms:
            for seconds in args.seconds:
                row = measure_in_fresh_process([sys.executable, __file__, "--one", str(seconds), width, norm])
                if row is None:
                    return 1
                rows.append(row)
    print("| widths | feature-extractor norm | track | frames | max difference / max value | "
          "peak RSS one pass | peak RSS chunked | CPU s one pass | CPU s chunked |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['width']} | {r['norm']} | {r['seconds']:.0f} s | {r['frames']} | {r['rel_diff']:.1e} | "
              f"+{r['one_pass_mib']:.0f} MiB | +{r['chunked_mib']:.0f} MiB | {r['one_pass_cpu']:.1f} | "
              f"{r['chunked_cpu']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
