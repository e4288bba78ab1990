"""Long clips in overlapping windows: the frame arithmetic, as pure functions (no model, no torch).

The models were trained on clips of at most 81 frames (3.4 s at 24 fps). A clip of ``T = 4n+1`` frames
longer than ``W = 4m+1`` is generated in windows of ``W`` frames that overlap by ``M = 4k+1`` *motion
frames*: the last ``M`` frames of window ``k−1`` are the first ``M`` frames of window ``k`` and condition
it (see :mod:`.windows` for how), so head motion carries across the seam.

Plan (:func:`plan_windows`)
    Window ``k`` starts at video frame ``k·S`` with the stride ``S = W − M`` (a multiple of 4, so every
    window starts on a latent-frame boundary of the causal VAE). Every window has ``W`` frames except the
    last, which has ``T − start`` frames: ``4j+1`` too, and always at least ``M + 4`` (one new latent frame
    beyond the overlap), because windows are added only while the previous one ends before ``T``; the
    overlap is at most half a window (``2M ≤ W``). So a
    clip has ``1 + ceil((T − W) / S)`` windows (one when ``T ≤ W``). ``M = 1`` is the plain chain (one
    shared frame, no motion frames).

Known latent frames
    With the causal Wan VAE (latent frame 0 = video frame 0, latent frame ``j ≥ 1`` = video frames
    ``4j−3 … 4j``), the ``M = 4k+1`` motion frames are exactly the first ``k+1`` latent frames of the
    window (:attr:`Window.known_latent_frames`).

Audio (:attr:`Window.audio_span`)
    Window ``k`` reads the timeline's audio features ``[start, start + length)``: its own span, so the
    5-frame audio context at its edges is the real neighbouring audio, as inside one pass.

Output (:attr:`Window.emit_span`, :func:`merge_overlap`, :func:`split_window`)
    Every video frame of the clip is written exactly once, so the output has exactly ``T`` frames. Window
    ``k`` emits ``[start, next_start)`` (the last window: ``[start, T)``) and holds back its last ``M``
    frames (its *tail*) for the next window. The next window's first ``M`` frames and that tail are
    merged: ``"blend"`` cross-fades them linearly (:func:`blend_weights`: the new window's weight rises
    from ``1/(M+1)`` to ``M/(M+1)``), ``"drop"`` keeps the earlier window's frames and drops the new
    window's copies.

These functions are the whole long-clip arithmetic; every route (the pipeline, the pack's nodes, the
native ComfyUI route) calls them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..constants import WINDOW_FRAMES
from ..errors import InputError

__all__ = ["DEFAULT_WINDOW_FRAMES", "DEFAULT_OVERLAP_FRAMES", "OVERLAP_MERGES", "OVERLAP_MODES", "CLIP_REFERENCES",
           "LongClipOptions", "Window", "check_window_frames",
           "check_overlap_frames", "default_overlap", "needs_windows", "plan_windows", "blend_weights", "merge_overlap",
           "split_window", "assemble"]

DEFAULT_WINDOW_FRAMES = WINDOW_FRAMES  # the training length (81)
DEFAULT_OVERLAP_FRAMES = 9  # 2 latent frames of motion after the first (InfiniteTalk also carries 9 frames)
OVERLAP_MERGES = ("blend", "drop")
OVERLAP_MODES = ("latent", "y")
CLIP_REFERENCES = ("start", "window")


@dataclass(frozen=True)
class Window:
    """Video frames ``start .. start+length-1`` of the clip, generated as window number ``index``.

    Attributes:
        index: 0, 1, ...
        start: first video frame (a multiple of 4).
        length: frames (``4j+1``).
        overlap: frames shared with the previous window (its tail); 0 for window 0.
        next_start: where the next window starts (``total_frames`` for the last window).
    """

    index: int
    start: int
    length: int
    overlap: int
    next_start: int

    @property
    def end(self) -> int:
        """One past the window's last frame."""
        return self.start + self.length

    @property
    def is_last(self) -> bool:
        return self.next_start >= self.end

    @property
    def latent_frames(self) -> int:
        """Latent frames of the window: ``1 + (length − 1) / 4``."""
        return 1 + (self.length - 1) // 4

    @property
    def known_latent_frames(self) -> int:
        """Leading latent frames that hold the motion frames (``1 + (overlap − 1) / 4``; 0 for window 0)."""
        return 0 if self.overlap == 0 else 1 + (self.overlap - 1) // 4

    @property
    def audio_span(self) -> tuple[int, int]:
        """``(first, one past last)`` timeline frame of the audio features this window reads."""
        return self.start, self.end

    @property
    def emit_span(self) -> tuple[int, int]:
        """``(first, one past last)`` clip frame this window writes (its first ``overlap`` merged with the
        previous window's tail); the spans of all windows tile ``0 .. T−1`` exactly once."""
        return self.start, min(self.next_start, self.end)

    @property
    def tail(self) -> int:
        """Frames held back for the next window (0 for the last window)."""
        return 0 if self.is_last else self.end - self.next_start


@dataclass(frozen=True)
class LongClipOptions:
    """How a clip longer than one window is generated (see :mod:`.windows`).

    Attributes:
        overlap_frames: motion frames shared by consecutive windows, ``4k+1``; ``None`` = 9 (or the most a
            short window allows, :func:`~.window_plan.default_overlap`); 1 = one shared frame.
        overlap_mode: ``"latent"`` (pinned motion latents) or ``"y"`` (known frames in the I2V conditioning).
        merge: ``"blend"`` (cross-fade the shared frames) or ``"drop"`` (keep the earlier window's).
        colour_match: match each window's CIELAB statistics to the start image.
        clip_reference: ``"start"`` (the start image's CLIP tokens for every window) or ``"window"``.
        reanchor_every: re-anchor every ``P``-th window on the start image (0 = never).
    """

    overlap_frames: int | None = None
    overlap_mode: str = "latent"
    merge: str = "blend"
    colour_match: bool = True
    clip_reference: str = "start"
    reanchor_every: int = 0

    def checked(self, window_frames: int) -> "LongClipOptions":
        """Validated copy with ``overlap_frames`` resolved for ``window_frames``; errors name the option."""
        window_frames = check_window_frames(window_frames)
        overlap = default_overlap(window_frames) if self.overlap_frames is None else self.overlap_frames
        overlap = check_overlap_frames(overlap, window_frames)
        for name, value, allowed in (("overlap_mode", self.overlap_mode, OVERLAP_MODES),
                                     ("overlap merge", self.merge, OVERLAP_MERGES),
                                     ("clip_reference", self.clip_reference, CLIP_REFERENCES)):
            if value not in allowed:
                raise InputError(f"{name} '{value}': expected one of {', '.join(allowed)}")
        if isinstance(self.reanchor_every, bool) or not isinstance(self.reanchor_every, int) or self.reanchor_every < 0:
            raise InputError(f"reanchor_every must be a whole number of windows >= 0 (0 = never), "
                             f"got {self.reanchor_every!r}")
        return dataclasses.replace(self, overlap_frames=overlap)


def check_window_frames(window_frames: int, what: str = "window_frames") -> int:
    """Validate a window length: ``0`` (one pass) or ``4m+1`` with ``m ≥ 1`` (5, 9, ..., 81).

    ``what`` names the input in the error (e.g. ``--window-frames``).
    """
    if isinstance(window_frames, bool) or not isinstance(window_frames, (int, np.integer)):
        raise InputError(f"{what}: expected an integer 4m+1 (e.g. 81) or 0, got {window_frames!r}")
    window_frames = int(window_frames)
    if window_frames != 0 and (window_frames < 5 or (window_frames - 1) % 4):
        raise InputError(f"{what} must be 4m+1 and at least 5 (5, 9, ..., 81), or 0 for one pass; "
                         f"got {window_frames}")
    return window_frames


def check_overlap_frames(overlap_frames: int, window_frames: int, what: str = "overlap_frames") -> int:
    """Validate the motion-frame overlap: ``4k+1`` (1, 5, 9, ...) and at most half a window
    (``2·overlap ≤ window_frames``, so a window's merged head and its tail never share a frame)."""
    if isinstance(overlap_frames, bool) or not isinstance(overlap_frames, (int, np.integer)):
        raise InputError(f"{what}: expected an integer 4k+1 (1, 5, 9, ...), got {overlap_frames!r}")
    overlap_frames = int(overlap_frames)
    if overlap_frames < 1 or (overlap_frames - 1) % 4:
        raise InputError(f"{what} must be 4k+1 (1 = one shared frame, 5, 9, ...), got {overlap_frames}")
    if window_frames and 2 * overlap_frames > window_frames:
        largest = max(1, (window_frames // 2 - 1) // 4 * 4 + 1)
        raise InputError(f"{what} {overlap_frames} is more than half of a {window_frames}-frame window: "
                         f"use at most {largest}")
    return overlap_frames


def default_overlap(window_frames: int) -> int:
    """The overlap used when none is given: :data:`DEFAULT_OVERLAP_FRAMES`, or the largest allowed for a
    short window (1 for ``W = 9``, 5 for ``W = 13 … 17``)."""
    window_frames = check_window_frames(window_frames)
    if not window_frames:
        return DEFAULT_OVERLAP_FRAMES
    return min(DEFAULT_OVERLAP_FRAMES, max(1, (window_frames // 2 - 1) // 4 * 4 + 1))


def needs_windows(total_frames: int, window_frames: int) -> bool:
    """True when a ``total_frames`` clip is longer than one window (``window_frames = 0``: never)."""
    return check_window_frames(window_frames) > 0 and total_frames > window_frames


def plan_windows(total_frames: int, window_frames: int, overlap_frames: int | None = None) -> list[Window]:
    """The overlapping windows of a ``total_frames = 4n+1`` clip (see the module docstring).

    ``window_frames = 0`` or a clip no longer than one window gives a single window over the whole clip;
    ``overlap_frames = None`` is :func:`default_overlap`.
    """
    if isinstance(total_frames, bool) or not isinstance(total_frames, (int, np.integer)) or total_frames < 1 \
            or (total_frames - 1) % 4:
        raise InputError(f"clip length must be 4n+1 frames, got {total_frames}")
    total_frames = int(total_frames)
    window_frames = check_window_frames(window_frames)
    if not needs_windows(total_frames, window_frames):
        return [Window(0, 0, total_frames, 0, total_frames)]
    overlap = check_overlap_frames(default_overlap(window_frames) if overlap_frames is None else overlap_frames,
                                   window_frames)
    stride = window_frames - overlap
    starts = [0]
    while starts[-1] + window_frames < total_frames:
        starts.append(starts[-1] + stride)
    windows = []
    for k, start in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else total_frames
        windows.append(Window(k, start, min(window_frames, total_frames - start), overlap if k else 0, nxt))
    return windows


def blend_weights(overlap: int) -> np.ndarray:
    """float32 ``[overlap]``: the new window's weight at each shared frame, ``(i+1)/(overlap+1)``."""
    return (np.arange(1, overlap + 1, dtype=np.float32) / np.float32(overlap + 1))


def merge_overlap(tail: np.ndarray, head: np.ndarray, merge: str = "blend") -> np.ndarray:
    """The shared frames: the previous window's ``tail`` and the new window's ``head`` (uint8
    ``[M, H, W, 3]`` each) → uint8 ``[M, H, W, 3]`` (``"blend"``: linear cross-fade; ``"drop"``: ``tail``)."""
    if merge not in OVERLAP_MERGES:
        raise InputError(f"overlap merge '{merge}': expected one of {', '.join(OVERLAP_MERGES)}")
    if tail.shape != head.shape:
        raise ValueError(f"merge_overlap: tail {tail.shape} and head {head.shape} differ")
    if merge == "drop":
        return tail
    w = blend_weights(len(head)).reshape(-1, 1, 1, 1)
    mixed = tail.astype(np.float32) * (1.0 - w) + head.astype(np.float32) * w
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def split_window(window: Window, frames: np.ndarray, prev_tail: np.ndarray | None, merge: str = "blend"
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """One window's decoded frames → ``(emitted, tail)``.

    Args:
        window: from :func:`plan_windows`.
        frames: uint8 ``[window.length, H, W, 3]``.
        prev_tail: the previous window's tail ``[window.overlap, H, W, 3]`` (``None`` for window 0).
        merge: ``"blend"`` or ``"drop"`` (see :func:`merge_overlap`).
    Returns:
        ``emitted`` — the clip frames ``window.emit_span`` (uint8); ``tail`` — the last ``window.tail``
        frames, unmerged, for the next window (``None`` for the last window).
    """
    if len(frames) != window.length:
        raise ValueError(f"window {window.index}: {len(frames)} frames, expected {window.length}")
    if window.overlap:
        if prev_tail is None or len(prev_tail) != window.overlap:
            raise ValueError(f"window {window.index}: needs the previous window's {window.overlap}-frame tail")
        head = merge_overlap(prev_tail, frames[:window.overlap], merge)
        frames = np.concatenate([head, frames[window.overlap:]], axis=0)
    cut = window.emit_span[1] - window.start
    return frames[:cut], (frames[cut:] if window.tail else None)


def assemble(windows: Sequence[Window], window_frames: Sequence[np.ndarray], merge: str = "blend") -> np.ndarray:
    """Every window's decoded frames → the clip ``[T, H, W, 3]`` (holds everything: for short clips and tests;
    long clips stream :func:`split_window`'s output instead)."""
    if len(windows) != len(window_frames) or not windows:
        raise ValueError(f"assemble: {len(window_frames)} frame arrays for {len(windows)} windows")
    out, tail = [], None
    for window, frames in zip(windows, window_frames):
        emitted, tail = split_window(window, np.asarray(frames), tail, merge)
        out.append(emitted)
    return np.concatenate(out, axis=0)
