"""Speaker separation quality and speed on conversations with known turns (docs/audio.md, BENCHMARKS.md).

    python benchmarks/diarization.py                 # quality table over speaker sets and seeds
    python benchmarks/diarization.py --minutes 5     # + time one 5-minute recording (wall and CPU)

Conversations are mixed by :mod:`anytalker_core.testing.conversation` from two real CMU ARCTIC
speakers and espeak-ng voices, so the true turns are known. Per conversation: DER with the number of
speakers given and not given (NIST definition, no collar, overlap scored), the estimated count, and
for each speaker the share of their voiced energy their own track keeps and the largest share of
another speaker's energy a track lets through.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytalker_core.audio.voices import gate, split_voices  # noqa: E402
from anytalker_core.metrics.diarization import diarization_error_rate  # noqa: E402
from anytalker_core.testing.conversation import make_conversation  # noqa: E402

SETS = [
    ["arctic_a"], ["arctic_b"], ["low"], ["high"],
    ["arctic_a", "arctic_b"], ["arctic_a", "low"], ["arctic_b", "high"], ["low", "high"],
    ["arctic_a", "arctic_b", "low"], ["arctic_a", "low", "high"], ["arctic_b", "high", "low"],
]


def energy_shares(conv, turns) -> tuple[float, float]:
    """(min over speakers of own energy kept, max over track/other speaker of energy let through)."""
    score = diarization_error_rate(conv.turns, turns)
    keep, leak = [], []
    for h, spans in enumerate(turns):
        g = gate(conv.mix.size, conv.sample_rate, spans)
        for r, src in enumerate(conv.sources):
            share = float(np.sum((g * src) ** 2) / np.sum(src ** 2))
            (keep if score.mapping.get(h) == r else leak).append(share)
    unmatched = set(range(len(conv.sources))) - set(score.mapping.values())
    keep += [0.0] * len(unmatched)
    return min(keep), max(leak, default=0.0)


def quality(seeds: list[int], turns: int) -> None:
    print("| speakers | seed | length s | DER (N given) | N found | DER (N estimated) | own energy kept (min) | "
          "other energy let through (max) |")
    print("|---|---|---|---|---|---|---|---|")
    worst = {"der": 0.0, "keep": 1.0, "leak": 0.0, "count_errors": 0, "runs": 0}
    for speakers in SETS:
        for seed in seeds:
            conv = make_conversation(speakers, turns, seed=seed)
            given = split_voices(conv.mix, conv.sample_rate, num_speakers=len(speakers)).diarization
            guess = split_voices(conv.mix, conv.sample_rate).diarization
            der_given = diarization_error_rate(conv.turns, given.turns).der
            der_guess = diarization_error_rate(conv.turns, guess.turns).der
            keep, leak = energy_shares(conv, given.turns)
            print(f"| {'+'.join(speakers)} | {seed} | {conv.duration:.0f} | {der_given:.3f} | {guess.num_speakers} | "
                  f"{der_guess:.3f} | {keep:.3f} | {leak:.3f} |", flush=True)
            worst["der"] = max(worst["der"], der_given)
            worst["keep"] = min(worst["keep"], keep)
            worst["leak"] = max(worst["leak"], leak)
            worst["count_errors"] += int(guess.num_speakers != len(speakers))
            worst["runs"] += 1
    print(f"\nworst DER (N given) {worst['der']:.3f}; count wrong in {worst['count_errors']}/{worst['runs']}; "
          f"own energy kept >= {worst['keep']:.3f}; other energy let through <= {worst['leak']:.3f}")


def speed(minutes: float) -> None:
    turns = int(minutes * 60 / 3.0)
    conv = make_conversation(["arctic_a", "low", "high"], turns, seed=0)
    while conv.duration < minutes * 60:
        turns += 5
        conv = make_conversation(["arctic_a", "low", "high"], turns, seed=0)
    for n in (3, None):
        wall, cpu = time.perf_counter(), time.process_time()
        result = split_voices(conv.mix, conv.sample_rate, num_speakers=n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        der = diarization_error_rate(conv.turns, result.diarization.turns).der
        print(f"{conv.duration / 60:.2f} min recording, speakers {'given' if n else 'estimated'} "
              f"(found {result.diarization.num_speakers}): wall {wall:.1f} s, CPU {cpu:.1f} s, DER {der:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--minutes", type=float, help="also time one recording of this length")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    if not args.skip_quality:
        quality(args.seeds, args.turns)
    if args.minutes:
        speed(args.minutes)


if __name__ == "__main__":
    main()
