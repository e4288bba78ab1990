"""Speaker separation quality and speed on conversations with known turns (docs/audio.md, BENCHMARKS.md).

    python benchmarks/diarization.py                 # quality table over speaker sets and seeds
    python benchmarks/diarization.py --overlap-s 0.8 --overlap-chance 0.5   # conversations with long overlaps
    python benchmarks/diarization.py --minutes 5     # + time one 5-minute recording (wall and CPU)

Conversations are mixed by :mod:`anytalker_core.testing.conversation` from two real CMU ARCTIC
speakers and espeak-ng voices, so the true turns are known. Per conversation: DER with the number of
speakers given and not given (NIST definition, no collar, overlap scored), the estimated count, and
for each speaker the share of their voiced energy their own track keeps and the largest share of
another speaker's energy a track lets through ("leak"; the same with the true turns is printed
beside it: gating cannot remove the other voice from overlapping speech), and the share of the true
overlapping speech that is in the tracks of both speakers in it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytalker_core.audio.diarize import DiarizeParams  # noqa: E402
from anytalker_core.audio.voices import gate, split_voices  # noqa: E402
from anytalker_core.metrics.diarization import diarization_error_rate  # noqa: E402
from anytalker_core.testing.conversation import make_conversation  # noqa: E402

SETS = [
    ["arctic_a"], ["arctic_b"], ["low"], ["high"],
    ["arctic_a", "arctic_b"], ["arctic_a", "low"], ["arctic_b", "high"], ["low", "high"],
    ["arctic_a", "arctic_b", "low"], ["arctic_a", "low", "high"], ["arctic_b", "high", "low"],
]


def energy_shares(conv, turns, mapping) -> tuple[float, float]:
    """(min over speakers of own energy kept, max over track/other speaker of energy let through)."""
    keep, leak = [], []
    for h, spans in enumerate(turns):
        g = gate(conv.mix.size, conv.sample_rate, spans)
        for r, src in enumerate(conv.sources):
            share = float(np.sum((g * src) ** 2) / np.sum(src ** 2))
            (keep if mapping.get(h) == r else leak).append(share)
    unmatched = set(range(len(conv.sources))) - set(mapping.values())
    keep += [0.0] * len(unmatched)
    return min(keep), max(leak, default=0.0)


def overlap_kept(conv, turns, mapping, step: float = 0.01) -> float | None:
    """Share of the true overlapping speech (two or more speakers) that is in the tracks of each of them."""
    n = int(np.ceil(conv.duration / step)) + 1

    def grid(spans):
        g = np.zeros(n, dtype=bool)
        for s, e in spans:
            g[int(round(s / step)):int(round(e / step))] = True
        return g

    ref = np.stack([grid(t) for t in conv.turns])
    hyp = np.zeros_like(ref)
    for h, r in mapping.items():
        hyp[r] = grid(turns[h])
    both = ref.sum(0) >= 2
    return float((hyp & ref)[:, both].sum() / ref[:, both].sum()) if both.any() else None


def quality(seeds: list[int], turns: int, overlap_s: float, overlap_chance: float) -> None:
    print("| speakers | seed | length s | DER (N given) | N found | DER (N estimated) | own energy kept (min) | "
          "other energy let through (max) | same with the true turns | overlap in both tracks |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for speakers in SETS:
        for seed in seeds:
            conv = make_conversation(speakers, turns, seed=seed, overlap_s=overlap_s, overlap_chance=overlap_chance)
            given = split_voices(conv.mix, conv.sample_rate, num_speakers=len(speakers)).diarization
            guess = split_voices(conv.mix, conv.sample_rate).diarization
            score = diarization_error_rate(conv.turns, given.turns)
            der_guess = diarization_error_rate(conv.turns, guess.turns).der
            keep, leak = energy_shares(conv, given.turns, score.mapping)
            _, true_leak = energy_shares(conv, conv.turns, {i: i for i in range(len(speakers))})
            both = overlap_kept(conv, given.turns, score.mapping)
            rows.append(dict(n=len(speakers), der=score.der, found=guess.num_speakers, der_guess=der_guess,
                             keep=keep, leak=leak, both=both))
            print(f"| {'+'.join(speakers)} | {seed} | {conv.duration:.0f} | {score.der:.3f} | {guess.num_speakers} | "
                  f"{der_guess:.3f} | {keep:.3f} | {leak:.3f} | {true_leak:.3f} | "
                  f"{'–' if both is None else f'{both:.2f}'} |", flush=True)
    print("\n| N | conversations | DER (N given) max / median | count right | own energy kept min / median | "
          "let through max / median | overlap in both tracks (mean) |")
    print("|---|---:|---|---:|---|---|---|")
    for n in sorted({r["n"] for r in rows}) + [0]:
        sel = [r for r in rows if n in (0, r["n"])]
        der, keep, leak = (np.array([r[key] for r in sel]) for key in ("der", "keep", "leak"))
        both = [r["both"] for r in sel if r["both"] is not None]
        print(f"| {n or 'all'} | {len(sel)} | {der.max():.3f} / {np.median(der):.3f} | "
              f"{sum(r['found'] == r['n'] for r in sel)}/{len(sel)} | {keep.min():.3f} / {np.median(keep):.3f} | "
              f"{leak.max():.3f} / {np.median(leak):.3f} | {f'{np.mean(both):.2f}' if both else '–'} |")


def speed(minutes: float) -> None:
    turns = int(minutes * 60 / 3.0)
    conv = make_conversation(["arctic_a", "low", "high"], turns, seed=0)
    while conv.duration < minutes * 60:
        turns += 5
        conv = make_conversation(["arctic_a", "low", "high"], turns, seed=0)
    runs = [("given", 3, DiarizeParams()), ("given, no overlap classes", 3, DiarizeParams(overlap=False)),
            ("estimated", None, DiarizeParams())]
    for name, n, params in runs:
        wall, cpu = time.perf_counter(), time.process_time()
        result = split_voices(conv.mix, conv.sample_rate, num_speakers=n, params=params)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        der = diarization_error_rate(conv.turns, result.diarization.turns).der
        print(f"{conv.duration / 60:.2f} min recording, speakers {name} (found {result.diarization.num_speakers}): "
              f"wall {wall:.1f} s, CPU {cpu:.1f} s, DER {der:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--overlap-s", type=float, default=0.15, help="how far a turn overlaps the previous one")
    parser.add_argument("--overlap-chance", type=float, default=0.25, help="share of turns that overlap")
    parser.add_argument("--minutes", type=float, help="also time one recording of this length")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    if not args.skip_quality:
        quality(args.seeds, args.turns, args.overlap_s, args.overlap_chance)
    if args.minutes:
        speed(args.minutes)


if __name__ == "__main__":
    main()
