"""Diarisation error rate (NIST RT definition, no collar, overlapping speech scored).

On a grid of ``step`` seconds, with hypothesis speakers mapped one-to-one onto reference speakers so
that their common time is largest (Hungarian assignment)::

    DER = Σ_t (max(N_ref(t), N_hyp(t)) − N_correct(t)) / Σ_t N_ref(t)

which is (missed speech + false alarm + speaker confusion) / reference speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Spans = Sequence[Sequence[tuple[float, float]]]

__all__ = ["DiarizationScore", "diarization_error_rate", "speaker_mapping"]


@dataclass(frozen=True)
class DiarizationScore:
    """Components in seconds; ``der`` = (missed + false_alarm + confusion) / reference."""

    der: float
    missed: float
    false_alarm: float
    confusion: float
    reference: float
    mapping: dict[int, int]  # hypothesis speaker -> reference speaker


def _grid(speakers: Spans, n: int, step: float) -> np.ndarray:
    g = np.zeros((len(speakers), n), dtype=bool)
    for i, spans in enumerate(speakers):
        for s, e in spans:
            g[i, max(0, int(round(s / step))):max(0, int(round(e / step)))] = True
    return g


def speaker_mapping(reference: Spans, hypothesis: Spans, step: float = 0.01) -> dict[int, int]:
    """Hypothesis speaker → reference speaker maximising common speaking time."""
    from scipy.optimize import linear_sum_assignment

    end = max([e for spk in list(reference) + list(hypothesis) for _, e in spk] + [0.0])
    n = int(np.ceil(end / step)) + 1
    ref, hyp = _grid(reference, n, step), _grid(hypothesis, n, step)
    common = hyp.astype(np.float64) @ ref.T.astype(np.float64)
    rows, cols = linear_sum_assignment(-common) if common.size else ([], [])
    return {int(h): int(r) for h, r in zip(rows, cols)}


def diarization_error_rate(reference: Spans, hypothesis: Spans, step: float = 0.01) -> DiarizationScore:
    """Score ``hypothesis`` turns against ``reference`` turns (per speaker lists of ``(start, end)`` seconds)."""
    end = max([e for spk in list(reference) + list(hypothesis) for _, e in spk] + [0.0])
    n = int(np.ceil(end / step)) + 1
    ref, hyp = _grid(reference, n, step), _grid(hypothesis, n, step)
    mapping = speaker_mapping(reference, hypothesis, step)
    correct = np.zeros(n)
    for h, r in mapping.items():
        correct += hyp[h] & ref[r]
    n_ref, n_hyp = ref.sum(0), hyp.sum(0)
    missed = np.maximum(n_ref - n_hyp, 0).sum() * step
    false_alarm = np.maximum(n_hyp - n_ref, 0).sum() * step
    confusion = (np.minimum(n_ref, n_hyp) - correct).sum() * step
    total = n_ref.sum() * step
    der = (missed + false_alarm + confusion) / total if total else float(false_alarm > 0)
    return DiarizationScore(der=float(der), missed=float(missed), false_alarm=float(false_alarm),
                            confusion=float(confusion), reference=float(total), mapping=mapping)
