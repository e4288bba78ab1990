"""Who speaks when in one recording of a conversation (speaker diarisation).

1. Silero VAD (:mod:`.vad`) finds the speech; everything else is silence for every speaker.
2. The speech frames are joined into one stream (pauses cut out) and cut into overlapping windows
   (``window_s`` long, every ``hop_s``); each window gets a GE2E voice embedding (:mod:`.speakers`).
3. Without a given number of speakers it is estimated (:func:`estimate_num_speakers`): pieces of the
   speech regions (≤ ``piece_s``) get the mean embedding of their windows, and voices further apart
   than ``new_voice_distance`` (cosine) count as different people.
4. The windows are clustered into that many speakers (average-linkage dendrogram under cosine
   distance, scipy); a few rounds of nearest-centre assignment refine the clusters.
5. A first pass labels every 10 ms speech frame with the speaker whose centre the covering windows
   are most similar to (runs shorter than ``min_turn_s`` absorbed). Its turn boundaries are only as
   sharp as the 1.6 s windows: GE2E's embedding is the LSTM's *last* state, so a window that holds
   the end of one voice and the start of another mostly looks like the later one.
6. Frame-level re-assignment (:func:`_refine`), on the recording's own timeline:

   * short windows (``fine_window_s``) every ``fine_hop_s`` in both directions: a forward window
     ending at ``t`` describes the voice just before ``t``, the same window time-reversed the voice
     just after ``t``; both are compared at ``t`` shifted by the encoder's response lag (``lag_s``);
   * one class per speaker, its centre from the first pass's *clean* windows (no other voice within
     ``clean_margin_s``), and one class per pair of speakers (overlapping speech), its centre from
     mixtures made of the recording's own clean windows of the two (mel power spectra add, so two
     windows' mels summed are the mel of the mixed speech, at the levels the two actually speak);
   * each frame takes the best class (a pair less ``overlap_penalty``, the prior that overlap is
     rarer than one voice; a pair only where the first pass has both speakers within
     ``fine_window_s``, i.e. at a turn change between them); runs under ``min_overlap_s`` are absorbed. A pair frame is in the turns
     of both speakers, so overlapping speech goes to everyone who speaks in it.
7. Pauses shorter than ``bridge_s`` inside one speaker's speech are bridged.

Speakers are numbered by :func:`order_speakers` (default: first to speak = speaker 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from ..constants import MAX_SPEAKERS
from ..errors import InputError, Interrupted
from .speakers import MEL_HOP, VoiceEncoder, load_voice_encoder, mel_frames
from .vad import SAMPLE_RATE, SileroVAD, VADParams, intervals_from_probabilities, load_vad

log = logging.getLogger(__name__)

FRAME_S = MEL_HOP / SAMPLE_RATE  # 10 ms
MIN_SPAN_S = 0.1

__all__ = ["Diarization", "DiarizeParams", "diarize", "estimate_num_speakers", "order_speakers", "intervals_json", "interval_keys"]


@dataclass(frozen=True)
class DiarizeParams:
    """Tunable rules of :func:`diarize` (the defaults are what docs/audio.md measures)."""

    window_s: float = 1.6
    hop_s: float = 0.1
    piece_s: float = 3.0
    new_voice_distance: float = 0.30
    min_speaker_s: float = 2.0
    min_turn_s: float = 0.3
    bridge_s: float = 0.25
    refine_rounds: int = 3
    fine_window_s: float = 0.6
    fine_hop_s: float = 0.05
    lag_s: float = 0.15
    clean_margin_s: float = 0.3
    overlap: bool = True
    overlap_mixtures: int = 48
    overlap_penalty: float = 0.03
    min_overlap_s: float = 0.1
    vad: VADParams = field(default_factory=VADParams)


@dataclass
class Diarization:
    """Speaking turns of each speaker in one recording.

    Attributes:
        turns: per speaker, sorted ``(start, end)`` seconds; speakers may overlap.
        duration: length of the recording in seconds.
        speech: the voice-activity regions ``(start, end)`` seconds (all speakers together).
        centroids: ``[N, 256]`` unit GE2E centre of each speaker (same order as ``turns``).
    """

    turns: list[list[tuple[float, float]]]
    duration: float
    speech: list[tuple[float, float]]
    centroids: np.ndarray

    @property
    def num_speakers(self) -> int:
        return len(self.turns)

    def speaking_time(self, i: int) -> float:
        return float(sum(e - s for s, e in self.turns[i]))

    def overlaps(self) -> list[tuple[float, float, tuple[int, ...]]]:
        """Spans where two or more speakers talk: ``(start, end, speakers)`` (0-based, this order)."""
        edges = sorted({t for spans in self.turns for s, e in spans for t in (s, e)})
        out: list[tuple[float, float, tuple[int, ...]]] = []
        for a, b in zip(edges, edges[1:]):
            mid = 0.5 * (a + b)
            who = tuple(i for i, spans in enumerate(self.turns) if any(s <= mid < e for s, e in spans))
            if len(who) < 2:
                continue
            if out and out[-1][2] == who and abs(out[-1][1] - a) < 1e-9:
                out[-1] = (out[-1][0], b, who)
            else:
                out.append((a, b, who))
        return out


def interval_keys(n: int) -> list[str]:
    """The keys of the benchmark's ``speaker_duration.json``: ``left``/``right`` for two people, else ``speaker1…N``."""
    return ["left", "right"] if n == 2 else [f"speaker{i + 1}" for i in range(n)]


def intervals_json(turns: Sequence[Sequence[tuple[float, float]]]) -> dict[str, list[list[float]]]:
    """``{"left": [[s, e], ...], "right": [...]}`` (two speakers) or ``{"speaker1": ..., ...}``, seconds, 3 decimals."""
    return {key: [[round(float(s), 3), round(float(e), 3)] for s, e in spans]
            for key, spans in zip(interval_keys(len(turns)), turns)}


def order_speakers(diarization: Diarization, rule: str = "first", order: Sequence[int] | None = None) -> Diarization:
    """Renumber speakers.

    Args:
        rule: ``"first"`` — the first to speak is speaker 1, the next new voice speaker 2, ...;
            ``"most"`` — the one who speaks longest is speaker 1.
        order: a manual override applied after ``rule``: ``order[k]`` is the (1-based) speaker
            under ``rule`` that becomes speaker ``k + 1`` (e.g. ``[2, 1]`` swaps two people, so that
            the second voice drives the leftmost face).
    """
    n = diarization.num_speakers
    if rule == "first":
        keys = [spans[0][0] if spans else float("inf") for spans in diarization.turns]
        ranked = sorted(range(n), key=lambda i: keys[i])
    elif rule == "most":
        ranked = sorted(range(n), key=lambda i: -diarization.speaking_time(i))
    else:
        raise InputError(f"speaker order rule must be 'first' (first to speak = person 1) or 'most' "
                         f"(longest speaker = person 1), got {rule!r}")
    if order is not None:
        order = [int(k) for k in order]
        if sorted(order) != list(range(1, n + 1)):
            raise InputError(f"speaker order {order} must list each of the {n} speakers 1..{n} exactly once "
                             f"(e.g. {list(range(n, 0, -1))})")
        ranked = [ranked[k - 1] for k in order]
    return replace(diarization, turns=[diarization.turns[i] for i in ranked],
                   centroids=diarization.centroids[ranked])


# ----------------------------------------------------------------------------- clustering


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _centroids(emb: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return _normalize_rows(np.stack([emb[labels == c].mean(0) if np.any(labels == c) else np.zeros(emb.shape[1])
                                     for c in range(k)]))


def _tree(emb: np.ndarray) -> np.ndarray:
    """Average-linkage dendrogram of the windows under cosine distance (scipy linkage matrix)."""
    from scipy.cluster.hierarchy import linkage

    return linkage(emb.astype(np.float64), method="average", metric="cosine")


def _cut(tree: np.ndarray, k: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    return np.unique(fcluster(tree, t=k, criterion="maxclust"), return_inverse=True)[1]


def estimate_num_speakers(emb: np.ndarray, centers_s: np.ndarray, speech: Sequence[tuple[float, float]],
                          max_speakers: int = MAX_SPEAKERS, params: DiarizeParams = DiarizeParams()) -> int:
    """How many voices a recording holds, from its window embeddings ``[W, 256]`` (window centres in seconds).

    Each speech region is cut into equal pieces of at most ``piece_s``; a piece's voice is the mean
    embedding of the windows centred in it (averaging over what is said). Pieces are clustered
    (average linkage, cosine) and the tree is cut at ``new_voice_distance``; a cluster holding less
    than ``min_speaker_s`` of speech is folded into the nearest other cluster.
    """
    from scipy.cluster.hierarchy import fcluster

    pieces: list[tuple[float, float]] = []
    for s, e in speech:
        n = max(1, int(np.ceil((e - s) / params.piece_s)))
        pieces += [(s + (e - s) * i / n, s + (e - s) * (i + 1) / n) for i in range(n)]
    vectors, lengths = [], []
    for s, e in pieces:
        inside = (centers_s >= s) & (centers_s < e)
        if inside.any():
            vectors.append(emb[inside].mean(0))
            lengths.append(e - s)
    if len(vectors) < 2:
        return 1
    vectors = _normalize_rows(np.stack(vectors))
    lengths = np.asarray(lengths)
    labels = fcluster(_tree(vectors), t=params.new_voice_distance, criterion="distance") - 1
    while True:
        ids = np.unique(labels)
        time = np.array([lengths[labels == i].sum() for i in ids])
        if ids.size == 1 or time.min() >= params.min_speaker_s:
            break
        victim = ids[np.argmin(time)]
        keep = ids[ids != victim]
        cents = _normalize_rows(np.stack([vectors[labels == i].mean(0) for i in keep]))
        target = keep[np.argmax(cents @ vectors[labels == victim].mean(0))]
        labels[labels == victim] = target
    return int(min(np.unique(labels).size, max_speakers))


def _cluster(emb: np.ndarray, num_speakers: int, params: DiarizeParams) -> np.ndarray:
    """Window labels ``[W]`` in ``0..num_speakers-1``."""
    if emb.shape[0] < 2 or num_speakers == 1:
        return np.zeros(emb.shape[0], dtype=np.int64)
    k = min(num_speakers, emb.shape[0])
    labels = _cut(_tree(emb), k)
    for _ in range(params.refine_rounds):
        new = np.argmax(emb @ _centroids(emb, labels, k).T, axis=1)
        if np.array_equal(new, labels) or np.unique(new).size < k:
            break
        labels = new
    return labels


# ----------------------------------------------------------------------------- frames → turns


def _smooth_runs(labels: np.ndarray, min_len: int) -> np.ndarray:
    """Absorb runs shorter than ``min_len`` frames into the longer neighbour (``-1`` = none)."""
    labels = labels.copy()
    for _ in range(4):
        bounds = np.flatnonzero(np.diff(labels)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [labels.size]])
        changed = False
        for s, e in zip(starts, ends):
            if e - s >= min_len:
                continue
            left = labels[s - 1] if s > 0 else None
            right = labels[e] if e < labels.size else None
            if left is None and right is None:
                continue
            left_len = s - starts[np.searchsorted(starts, s) - 1] if left is not None else -1
            right_len = ends[np.searchsorted(starts, e)] - e if right is not None else -1
            labels[s:e] = left if left_len >= right_len else right
            changed = True
        if not changed:
            break
    return labels


def _runs_to_spans(active: np.ndarray, times: np.ndarray, frame_s: float) -> list[tuple[float, float]]:
    """Time spans of consecutive active frames (``times`` = start of each frame, seconds)."""
    spans: list[list[float]] = []
    for t, a in zip(times, active):
        if not a:
            continue
        if spans and t - spans[-1][1] < frame_s * 0.5:
            spans[-1][1] = t + frame_s
        else:
            spans.append([t, t + frame_s])
    return [(s, e) for s, e in spans]


def _bridge(spans: list[tuple[float, float]], others: list[list[tuple[float, float]]],
            gap_s: float) -> list[tuple[float, float]]:
    """Join a speaker's spans across pauses shorter than ``gap_s`` in which nobody else speaks."""
    out: list[list[float]] = []
    for s, e in spans:
        if out and s - out[-1][1] < gap_s and not any(os < s and oe > out[-1][1] for o in others for os, oe in o):
            out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


# ----------------------------------------------------------------------------- frame-level re-assignment


def _clean_starts(labels: np.ndarray, speaker: int, length: int, margin: int) -> np.ndarray:
    """Starts ``s`` of windows ``[s, s + length)`` over ``labels`` (``[M]``, ``-1`` = no speech) that are mostly
    ``speaker``'s speech (≥ 60 % of frames) with no other speaker's frame within ``margin`` frames."""
    from scipy.ndimage import maximum_filter1d

    other = ((labels != speaker) & (labels >= 0)).astype(np.int8)
    near_other = maximum_filter1d(other, size=2 * margin + 1) > 0 if margin > 0 else other > 0
    own = np.concatenate([[0], np.cumsum(labels == speaker)])
    bad = np.concatenate([[0], np.cumsum(near_other)])
    n = labels.size - length + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    ok = (own[length:length + n] - own[:n] >= 0.6 * length) & (bad[length:length + n] - bad[:n] == 0)
    return np.flatnonzero(ok)


def _refine(mels: np.ndarray, labels: np.ndarray, k: int, encoder: VoiceEncoder,
            params: DiarizeParams) -> tuple[np.ndarray, list[tuple[int, ...]]] | None:
    """Frame classes ``[M]`` (``-1`` = no speech) and the speakers of each class (step 6 of the module doc).

    Args:
        mels: ``[M, 40]`` mel frames of the whole recording; labels: first-pass speaker per frame
            (``-1`` outside speech).
    Returns:
        ``(classes, members)``; ``members[j]`` is ``(speaker,)`` or ``(a, b)`` for overlap of two. ``None``
        when the recording is too short or a speaker has no window to learn from (the first pass stands).
    """
    from itertools import combinations

    m = mels.shape[0]
    w = max(8, int(round(params.fine_window_s / FRAME_S)))
    hop = max(1, int(round(params.fine_hop_s / FRAME_S)))
    lag = int(round(params.lag_s / FRAME_S))
    margin = int(round(params.clean_margin_s / FRAME_S))
    if m < 2 * w:
        return None
    clean = []
    for c in range(k):
        starts = _clean_starts(labels, c, w, margin)
        if starts.size == 0:  # a speaker with only short turns: learn from whatever windows are mostly theirs
            starts = _clean_starts(labels, c, w, 0)
        if starts.size == 0:
            log.info("diarisation: speaker %d has no %.1f s of speech alone; keeping first-pass turns", c + 1,
                     params.fine_window_s)
            return None
        clean.append(starts)
    grid = np.arange(0, m, hop)
    fwd_starts = np.clip(grid - w, 0, m - w)  # forward window ends at the grid point
    bwd_starts = np.clip(grid, 0, m - w)  # backward window starts there (time-reversed)
    reverse = np.ascontiguousarray(mels[::-1])
    fwd = encoder.embed_windows(mels, fwd_starts, w)
    bwd = encoder.embed_windows(reverse, m - bwd_starts - w, w)
    fwd_index = {int(s): i for i, s in enumerate(fwd_starts)}
    bwd_index = {int(s): i for i, s in enumerate(bwd_starts)}
    members: list[tuple[int, ...]] = []
    cent_f, cent_b = [], []
    for c in range(k):
        f = [fwd_index[s] for s in clean[c] if s in fwd_index]
        b = [bwd_index[s] for s in clean[c] if s in bwd_index]
        if not f or not b:
            return None
        cent_f.append(fwd[f].mean(0))
        cent_b.append(bwd[b].mean(0))
        members.append((c,))
    if params.overlap and k > 1:
        rng = np.random.default_rng(0)
        span = np.arange(w)
        n = params.overlap_mixtures
        for a, b in combinations(range(k), 2):
            mix = mels[rng.choice(clean[a], n)[:, None] + span] + mels[rng.choice(clean[b], n)[:, None] + span]
            at = np.arange(n) * w
            cent_f.append(encoder.embed_windows(mix.reshape(n * w, -1), at, w).mean(0))
            cent_b.append(encoder.embed_windows(np.ascontiguousarray(mix[:, ::-1]).reshape(n * w, -1), at, w).mean(0))
            members.append((a, b))
    sim_f = fwd @ _normalize_rows(np.stack(cent_f)).T  # [G, classes]
    sim_b = bwd @ _normalize_rows(np.stack(cent_b)).T
    t = np.arange(m)
    score = np.stack([0.5 * (np.interp(t + lag, grid, sim_f[:, j]) + np.interp(t - lag, grid, sim_b[:, j]))
                      for j in range(len(members))], axis=1)
    score[:, k:] -= params.overlap_penalty
    if len(members) > k:  # two people overlap where both speak nearby (a turn change), not anywhere
        from scipy.ndimage import maximum_filter1d

        near = [maximum_filter1d((labels == c).astype(np.int8), size=2 * w + 1) > 0 for c in range(k)]
        for j, (a, b) in enumerate(members[k:], start=k):
            score[~(near[a] & near[b]), j] = -np.inf
    speech = labels >= 0
    classes = np.full(m, -1, dtype=np.int64)
    classes[speech] = _smooth_runs(np.argmax(score[speech], axis=1),
                                   max(1, int(round(params.min_overlap_s / FRAME_S))))
    return classes, members


# ----------------------------------------------------------------------------- entry point


def _to_mono16k(wave: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    from ..io.media import check_sample_rate, resample

    sample_rate = check_sample_rate(sample_rate)
    x = wave.detach().cpu().float().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float32)
    if x.ndim == 2:
        x = x.mean(0)  # [C, S] -> [S]
    if x.ndim != 1:
        raise InputError(f"conversation audio: expected [samples] or [channels, samples], got shape {x.shape}")
    if x.size == 0:
        raise InputError("conversation audio is empty (0 samples)")
    if not np.isfinite(x).all():
        raise InputError("conversation audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        x = resample(x, sample_rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def diarize(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    num_speakers: int | None = None,
    max_speakers: int = MAX_SPEAKERS,
    params: DiarizeParams = DiarizeParams(),
    vad: SileroVAD | None = None,
    encoder: VoiceEncoder | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Diarization:
    """Who speaks when in ``wave`` (``[S]`` or ``[C, S]`` at ``sample_rate``).

    Args:
        num_speakers: how many people talk (1…``max_speakers``); ``None`` estimates it.
        progress: called ``(done, total)`` after each stage (4 stages); should_stop: return True to cancel.
    Returns:
        :class:`Diarization`, speakers ordered first-to-speak first (see :func:`order_speakers`).
    Raises:
        InputError: bad audio, a bad speaker count, or no speech at all.
    """
    if num_speakers is not None:
        if isinstance(num_speakers, bool) or not isinstance(num_speakers, (int, np.integer)) \
                or not 1 <= num_speakers <= max_speakers:
            raise InputError(f"number of speakers must be a whole number from 1 to {max_speakers} "
                             f"(or left out to estimate it), got {num_speakers!r}")
        num_speakers = int(num_speakers)

    def step(done: int) -> None:
        if should_stop is not None and should_stop():
            raise Interrupted("speaker separation cancelled")
        if progress is not None:
            progress(done, 4)

    x = _to_mono16k(wave, sample_rate)
    duration = x.size / SAMPLE_RATE
    vad = vad if vad is not None else load_vad()
    encoder = encoder if encoder is not None else load_voice_encoder()
    step(0)
    speech = intervals_from_probabilities(vad.probabilities(x), duration, params.vad)
    if not speech:
        raise InputError(f"no speech found in the conversation audio ({duration:.1f} s): nothing to separate")
    step(1)

    mels = mel_frames(x)  # [M, 40], frame m covers samples around m * 160
    times = np.arange(mels.shape[0]) * FRAME_S
    in_speech = np.zeros(mels.shape[0], dtype=bool)
    for s, e in speech:
        in_speech[int(round(s / FRAME_S)):int(round(e / FRAME_S))] = True
    frames = np.flatnonzero(in_speech)  # speech frames, the joined stream
    stream = mels[frames]
    length = max(1, int(round(params.window_s / FRAME_S)))
    hop = max(1, int(round(params.hop_s / FRAME_S)))
    if stream.shape[0] < length:  # shorter than one window: repeat the speech to fill it
        stream = np.resize(stream, (length, stream.shape[1]))
    starts = np.arange(0, stream.shape[0] - length + 1, hop)
    if starts[-1] + length < stream.shape[0]:
        starts = np.append(starts, stream.shape[0] - length)
    emb = encoder.embed_windows(stream, starts, length)  # [W, 256]
    step(2)

    if num_speakers is None:
        centers = times[frames[np.minimum(starts + length // 2, frames.size - 1)]]
        num_speakers = estimate_num_speakers(emb, centers, speech, max_speakers, params)
    labels = _cluster(emb, num_speakers, params)
    k = int(labels.max()) + 1
    cents = _centroids(emb, labels, k)
    step(3)

    # per-frame speaker scores: mean similarity of the covering windows to each centre
    sims = emb @ cents.T  # [W, K]
    total = np.zeros((stream.shape[0] + 1, k))
    count = np.zeros(stream.shape[0] + 1)
    np.add.at(total, starts, sims)
    np.add.at(total, starts + length, -sims)
    np.add.at(count, starts, 1)
    np.add.at(count, starts + length, -1)
    score = np.cumsum(total, 0)[:frames.size] / np.maximum(np.cumsum(count)[:frames.size, None], 1)
    best = np.argmax(score, axis=1)
    best = _smooth_runs(best, max(1, int(round(params.min_turn_s / FRAME_S))))
    active = np.zeros((k, frames.size), dtype=bool)
    active[best, np.arange(frames.size)] = True
    if k > 1:
        labels = np.full(mels.shape[0], -1, dtype=np.int64)
        labels[frames] = best
        refined = _refine(mels, labels, k, encoder, params)
        if refined is not None:
            classes, members = refined
            active[:] = False
            for j, who in enumerate(members):
                for c in who:
                    active[c] |= classes[frames] == j
    turns = [_runs_to_spans(active[c], times[frames], FRAME_S) for c in range(k)]
    turns = [_bridge(turns[c], [turns[o] for o in range(k) if o != c], params.bridge_s) for c in range(k)]
    # a few frames cut off by a pause from the rest of their run (< 0.1 s) are not a turn
    turns = [[(max(0.0, s), min(duration, e)) for s, e in spans if e - s >= MIN_SPAN_S] for spans in turns]
    step(4)
    log.info("diarisation: %d speaker(s) in %.1f s (%d speech regions, %d windows)", k, duration, len(speech),
             len(starts))
    return order_speakers(Diarization(turns=turns, duration=duration, speech=speech, centroids=cents))
