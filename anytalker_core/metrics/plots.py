"""Plots of per-listener eye/brow motion over time, speaking intervals shaded (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .interactivity import InteractivityResult


def plot_motion(result: InteractivityResult, title: str = "", dpi: int = 100) -> np.ndarray:
    """Render one subplot per face: motion per frame (counted frames solid, speaking frames faded),
    the face's speaking intervals shaded, and its score in the subplot title.

    Returns:
        ``uint8 [H, W, 3]`` RGB image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sides = result.sides or ("face",)
    num_frames = result.motion.shape[0]
    fps = result.fps or 1.0
    times = np.arange(num_frames) / fps
    fig = Figure(figsize=(8, 1.8 + 1.6 * len(sides)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sides), 1, sharex=True, squeeze=False)[:, 0]
    top = np.nanmax(result.motion) if num_frames and np.isfinite(result.motion).any() else 1.0
    top = max(float(top) * 1.15, 0.5)
    for n, (ax, side) in enumerate(zip(axes, sides)):
        if num_frames:
            speaking = result.speaking[:, n]
            # shade the speaking frames as runs [t0, t1] in seconds
            start = None
            for t in range(num_frames + 1):
                on = t < num_frames and speaking[t]
                if on and start is None:
                    start = t
                if not on and start is not None:
                    ax.axvspan(times[start] - 0.5 / fps, times[t - 1] + 0.5 / fps, color="tab:orange", alpha=0.25,
                               lw=0, label="speaking" if start == np.argmax(speaking) else None)
                    start = None
            motion = result.motion[:, n]
            counted = np.where(result.counted[:, n], motion, np.nan)
            ax.plot(times, motion, color="tab:blue", alpha=0.3, lw=1)
            ax.plot(times, counted, color="tab:blue", lw=1.5, marker=".", ms=3, label="listening (counted)")
        score = result.per_face.get(side)
        label = f"{side}: {score:.3f}" if score is not None else f"{side}: n/a"
        ax.set_title(label, fontsize=9, loc="left")
        ax.set_ylim(0, top)
        ax.set_ylabel("px / frame", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, fontsize=7, loc="upper right")
    headline = (f"Interactivity {result.score:.3f}" if result.valid and result.score is not None
                else f"invalid: {result.reason}")
    fig.suptitle(f"{title}  —  {headline}" if title else headline, fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return image


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB ``uint8 [H, W, 3]`` image as PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path
