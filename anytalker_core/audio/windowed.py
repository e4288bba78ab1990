"""Windowed wav2vec2 features: each video frame reads the frames ``clamp(t-2 … t+2)`` (the reference's
``[T, 5, L, C]`` stack), and :class:`WindowedFeatures`, which holds that stack without its five-fold copy
(one row per encoded frame and, per window slot, the row it reads; long clips take each window's span)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

WINDOW_RADIUS = 2  # ±2 neighbours → 5 rows per frame

__all__ = ["WINDOW_RADIUS", "WindowedFeatures", "window_features", "window_index"]


def window_features(hidden: torch.Tensor, radius: int = WINDOW_RADIUS) -> torch.Tensor:
    """``[..., T, L, C]`` → ``[..., T, 2r+1, L, C]``: frame t takes frames ``clamp(t-r … t+r, 0, T-1)``.

    The one audio-windowing function (inference, training's cached features, the parity runner).
    """
    if hidden.ndim < 3:
        raise InputError(f"window_features expects [..., T, L, C], got shape {tuple(hidden.shape)}")
    index = window_index(hidden.shape[-3], radius).to(hidden.device)  # [T, 2r+1]
    return hidden[..., index, :, :]  # [..., T, 2r+1, L, C]


def window_index(num_rows: int, radius: int = WINDOW_RADIUS, count: int | None = None) -> torch.Tensor:
    """The rows frame ``t`` of :func:`window_features` reads: ``clamp(t-r … t+r, 0, num_rows-1)`` for
    ``t < count`` (default ``num_rows``) → int64 ``[count, 2r+1]``."""
    count = num_rows if count is None else count
    offsets = torch.arange(-radius, radius + 1)
    return (torch.arange(count)[:, None] + offsets[None, :]).clamp(0, num_rows - 1)


@dataclass(frozen=True)
class WindowedFeatures:
    """Windowed audio features ``[N, F, 2r+1, L, C]`` stored once per frame: slot ``(i, t, k)`` of the
    windowed stack is ``rows[index[i, t, k]]`` (row 0 is zeros: a frame outside a person's audio).

    Equal value for value to the stack :func:`window_features` builds, at a fifth of its size; a long clip
    takes each window's :meth:`span` (this is what keeps a 3-minute timeline's features small).

    Attributes:
        rows: ``[R, L, C]`` float32 (CPU) per-frame hidden states of every layer, row 0 zeros.
        index: ``[N, F, 2r+1]`` int64, the row of each slot.
    """

    rows: torch.Tensor
    index: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        """The windowed stack's shape ``(N, F, 2r+1, L, C)``."""
        return (*self.index.shape, *self.rows.shape[1:])

    @property
    def num_tracks(self) -> int:
        return int(self.index.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.index.shape[1])

    def span(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The windowed stack of frames ``start .. end-1``: float32 ``[N, end-start, 2r+1, L, C]``."""
        return self.rows[self.index[:, start:end]]

    def dense(self) -> torch.Tensor:
        """The whole windowed stack ``[N, F, 2r+1, L, C]`` (what the one-pass path conditions on)."""
        return self.span()

    def cut(self, start: int, end: int) -> "WindowedFeatures":
        """Frames ``start .. end-1`` (sharing ``rows``)."""
        return WindowedFeatures(self.rows, self.index[:, start:end])

    @classmethod
    def from_dense(cls, features: torch.Tensor) -> "WindowedFeatures":
        """Wrap an already windowed stack ``[N, F, K, L, C]`` (no copy of its values beyond a reshape)."""
        if features.ndim != 5:
            raise InputError(f"windowed audio features must be [N, F, 5, L, C], got shape {tuple(features.shape)}")
        n, f, k = features.shape[:3]
        flat = features.detach().float().reshape(n * f * k, *features.shape[3:])
        rows = torch.cat([flat.new_zeros(1, *flat.shape[1:]), flat])
        return cls(rows, torch.arange(1, n * f * k + 1).reshape(n, f, k))

    @classmethod
    def on_timeline(cls, tracks: list[list[tuple[int, torch.Tensor, int]]], num_frames: int,
                    radius: int = WINDOW_RADIUS) -> "WindowedFeatures":
        """Lay per-frame hidden states out on a ``num_frames`` timeline.

        Args:
            tracks: per person, segments ``(start, hidden [T, L, C], count)``: timeline frames
                ``start .. start+count-1`` are the segment's frames ``0 .. count-1``, windowed within the
                segment (:func:`window_index` with ``T`` rows: ``hidden`` may carry frames after ``count``,
                which the last frames' windows read). Frames outside every segment are zeros.
        """
        parts = [None]
        index = torch.zeros(len(tracks), num_frames, 2 * radius + 1, dtype=torch.int64)
        base = 1
        width = None
        for i, segments in enumerate(tracks):
            for start, hidden, count in segments:
                count = max(0, min(count, num_frames - start))
                if count == 0:
                    continue
                hidden = hidden.detach().float().cpu()
                index[i, start:start + count] = window_index(int(hidden.shape[0]), radius, count) + base
                parts.append(hidden)
                base += int(hidden.shape[0])
                width = tuple(hidden.shape[1:])
        if width is None:
            raise InputError("no audio frame falls on the video timeline")
        parts[0] = torch.zeros(1, *width)
        return cls(torch.cat(parts), index)


# ----------------------------------------------------------------------------- checkpoints
