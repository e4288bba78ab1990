"""Long videos: the clip is denoised in chained windows of at most ``W`` frames.

The models were trained on clips of at most 81 frames (3.4 s at 24 fps); one pass over a longer clip is
out of distribution and its memory grows with the length. So a clip of ``T = 4n+1`` frames longer than
``W = 4m+1`` is generated window by window:

* **Plan** (:func:`plan_windows`): window ``k`` starts at video frame ``k·(W−1)``, so consecutive windows
  share one frame. Every window has ``W`` frames except the last, which has ``T − start`` frames; that is
  ``4j+1`` too, because ``T − 1`` and ``start`` are multiples of 4. Windows are added until frame ``T−1``
  is covered, so there are ``ceil((T−1)/(W−1))`` of them and a last window never has a single frame (when
  ``(T−1)`` is a multiple of ``W−1`` the last window is a full one ending exactly at ``T−1``).
* **Audio**: computed once for the whole timeline; window ``k`` reads ``features[:, start:start+len]``, so
  the audio windows at its edges hold the real neighbouring audio, as inside a single pass.
* **Conditioning** (:meth:`.types.Conditioning.window`, :func:`.stages.condition_from_frame`):
  window 0 is conditioned on the user's image; window ``k ≥ 1`` on the **last decoded frame of window
  k−1** (its first-frame latent and its ``clip_fea`` are re-encoded from that frame). Face masks, token
  masks and the faces' CLIP tokens stay those of the original image: this assumes the people stay
  roughly where they are in the image, which is what the model generates for talking scenes.
* **Seeds**: window ``k`` draws its noise with ``seed + k`` (so each window's noise differs and one seed
  still decides the whole video).
* **Output** (:func:`stitch`): window 0's frames, then each later window's frames without its first one
  (the shared frame, already the last frame of the window before) → exactly ``T`` frames.

Progress is reported over all windows × steps; ``should_stop`` is honoured at every step and between
windows (:class:`~.errors.Interrupted`, nothing is returned, so nothing is written).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from ..constants import WINDOW_FRAMES
from ..errors import InputError, Interrupted

if TYPE_CHECKING:
    from .types import Conditioning

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WINDOW_FRAMES", "Window", "WindowStages", "check_window_frames", "needs_windows", "plan_windows",
           "stitch", "generate_windows"]

DEFAULT_WINDOW_FRAMES = WINDOW_FRAMES  # the training length


@dataclass(frozen=True)
class Window:
    """Video frames ``start .. start+length-1`` of the clip, generated as window number ``index``."""

    index: int
    start: int
    length: int

    @property
    def end(self) -> int:
        """One past the window's last frame."""
        return self.start + self.length


class WindowStages(Protocol):
    """The stages a chained-window run needs (``AnyTalkerPipeline`` has them; so can any holder of a DiT, a
    CLIP vision model and a VAE, e.g. a ComfyUI node)."""

    def denoise(self, condition: Any, *, steps: int, seed: int, progress: Any = None, should_stop: Any = None,
                **sampling: Any) -> Any:
        """Sample the window's latent ``[1, 16, F, h, w]``."""

    def decode(self, latent: Any) -> np.ndarray:
        """Latent -> uint8 frames ``[4(F-1)+1, H, W, 3]``."""

    def condition_from_frame(self, condition: Any, frame: np.ndarray) -> Any:
        """``condition`` re-conditioned on ``frame`` (uint8 ``[H, W, 3]``) as its first frame."""


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


def needs_windows(total_frames: int, window_frames: int) -> bool:
    """True when a ``total_frames`` clip is longer than one window (``window_frames = 0``: never)."""
    return check_window_frames(window_frames) > 0 and total_frames > window_frames


def plan_windows(total_frames: int, window_frames: int) -> list[Window]:
    """The chained windows of a ``total_frames = 4n+1`` clip (see the module docstring).

    ``window_frames = 0`` or a clip no longer than one window gives a single window over the whole clip.
    """
    if total_frames < 1 or (total_frames - 1) % 4:
        raise InputError(f"clip length must be 4n+1 frames, got {total_frames}")
    window_frames = check_window_frames(window_frames)
    if not needs_windows(total_frames, window_frames):
        return [Window(0, 0, total_frames)]
    windows: list[Window] = []
    start = 0
    while not windows or windows[-1].end < total_frames:
        windows.append(Window(len(windows), start, min(window_frames, total_frames - start)))
        start += window_frames - 1
    return windows


def stitch(window_frames: Sequence[np.ndarray]) -> np.ndarray:
    """Frames ``[len_k, H, W, 3]`` of consecutive windows → ``[T, H, W, 3]``, each shared frame kept once
    (the later window's copy of it, its conditioning frame, is dropped)."""
    if not window_frames:
        raise ValueError("stitch: no windows")
    return np.concatenate([window_frames[0], *(f[1:] for f in window_frames[1:])], axis=0)


def generate_windows(pipe: WindowStages, condition: "Conditioning", window_frames: int, *, steps: int,
                     seed: int, progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, **sampling: Any) -> np.ndarray:
    """Denoise and decode a whole-timeline ``condition`` window by window → uint8 frames ``[T, H, W, 3]``.

    Args:
        pipe: the three stages (:class:`WindowStages`; ``AnyTalkerPipeline`` is one).
        condition: the conditioning of the whole clip (:func:`.stages.condition`
            with the user's image and the audio of the whole timeline).
        window_frames: ``4m+1`` frames per window (``0``: one pass).
        steps: denoising steps per window.
        seed: window ``k`` uses ``seed + k``.
        progress: ``progress(done, total)`` over all windows × steps.
        should_stop: True → :class:`~.errors.Interrupted` (checked every step and between windows).
        **sampling: the other keyword arguments of ``pipe.denoise`` (``shift``, ``sampler``, ``guidance``,
            ``text_guidance``, ``audio_guidance``).
    """
    windows = plan_windows(condition.plan.frame_num, window_frames)
    total = len(windows) * steps
    log.info("long video: %d frames in %d window(s) of up to %d frames (%s)", condition.plan.frame_num,
             len(windows), windows[0].length, ", ".join(f"{w.start}-{w.end - 1}" for w in windows))
    decoded: list[np.ndarray] = []
    for window in windows:
        if should_stop is not None and should_stop():
            raise Interrupted(f"generation stopped by request before window {window.index + 1}/{len(windows)}")
        part = condition.window(window.start, window.length)
        if window.index > 0:
            part = pipe.condition_from_frame(part, decoded[-1][-1])  # the previous window's last frame
        done = window.index * steps

        def window_progress(step: int, _steps: int, done: int = done) -> None:
            if progress is not None:
                progress(done + step, total)

        log.info("window %d/%d: frames %d-%d, seed %d", window.index + 1, len(windows), window.start,
                 window.end - 1, seed + window.index)
        latent = pipe.denoise(part, steps=steps, seed=seed + window.index, progress=window_progress,
                              should_stop=should_stop, **sampling)
        decoded.append(pipe.decode(latent))
    return stitch(decoded)
