"""Video size and frame-count rules.

Size (the reference's ``WanAF2V.generate``): the largest size of about ``max_area`` pixels with the
image's aspect ratio, first on the latent/patch grid (multiples of 16 px: VAE stride 8 x patch 2,
rounded down), then snapped to multiples of 32. Two snaps are tried — floor the width and derive the
height from the aspect, or floor the height and derive the width — and the one closer to the 16-px size
(smallest ``|dw| + |dh|``, ties to the width-first one) wins. Every step rounds down, so the area never
exceeds ``max_area`` (unless the aspect is so extreme that a side falls below one ``multiple``, which
is then the minimum). Examples at 832x480 area (h x w): 512x512 -> 608x608; 480x832 -> 480x832;
1080x1920 -> 448x832; 1024x768 -> 704x544.

The arithmetic here is exact (integers). The reference does the same steps in floating point, which
loses a grid step when ``area * aspect`` is a perfect square: it turns a 480x832 (or 960x1664) image
into 448x832. Otherwise the two agree (checked on 20,000 random sizes and three areas).

Frames: the Wan VAE compresses time by 4 with the first frame alone, so a clip has ``4n+1`` video
frames and ``n+1`` latent frames.
"""

from __future__ import annotations

import math

from ..constants import FPS, MAX_AREA, PATCH_SIZE, SIZE_MULTIPLE, VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE
from ..errors import InputError

MAX_AREA_480P = MAX_AREA
VAE_STRIDE = VAE_SPATIAL_STRIDE  # pixels per latent cell (spatial)
PATCH = PATCH_SIZE[1]  # latent cells per DiT token (spatial)
TEMPORAL_STRIDE = VAE_TEMPORAL_STRIDE  # video frames per latent frame after the first


def _positive_int(label: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{label} must be a positive integer, got {value!r}")
    return value


def target_size(image_h: int, image_w: int, max_area: int = MAX_AREA_480P, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """``(height, width)`` of the video for an ``image_h x image_w`` image (see the module docstring).

    ``multiple`` must be a multiple of 16 (the latent/patch grid); the reference uses 32.
    """
    image_h = _positive_int("image height", image_h)
    image_w = _positive_int("image width", image_w)
    max_area = _positive_int("max_area", max_area)
    multiple = _positive_int("size multiple", multiple)
    grid = VAE_STRIDE * PATCH
    if multiple % grid:
        raise InputError(f"size multiple must be a multiple of {grid} (VAE stride x patch), got {multiple}")
    if max_area < multiple * multiple:
        raise InputError(f"max_area {max_area} is smaller than one {multiple}x{multiple} block")

    # On the latent/patch grid: floor(sqrt(area * aspect) / 16) * 16, in exact integer arithmetic
    # (floor(sqrt(x)) == isqrt(floor(x)) for x >= 0).
    h = math.isqrt(max_area * image_h // image_w) // grid * grid
    w = math.isqrt(max_area * image_w // image_h) // grid * grid
    h, w = max(h, grid), max(w, grid)

    # Snap to `multiple`: width first (height from the grid size's aspect h/w), or height first.
    w1 = max(w // multiple * multiple, multiple)
    h1 = max(w1 * h // w // multiple * multiple, multiple)
    h2 = max(h // multiple * multiple, multiple)
    w2 = max(h2 * w // h // multiple * multiple, multiple)
    if abs(w1 - w) + abs(h1 - h) <= abs(w2 - w) + abs(h2 - h):
        return h1, w1
    return h2, w2


def latent_size(height: int, width: int) -> tuple[int, int]:
    """Latent grid ``(lat_h, lat_w)`` for a video size (both must be multiples of 16)."""
    grid = VAE_STRIDE * PATCH
    if height % grid or width % grid or height <= 0 or width <= 0:
        raise InputError(f"video size {height}x{width} must be positive multiples of {grid}")
    return height // VAE_STRIDE, width // VAE_STRIDE


def is_valid_frame_count(video_frames: int) -> bool:
    return isinstance(video_frames, int) and video_frames >= 1 and (video_frames - 1) % TEMPORAL_STRIDE == 0


def latent_frames(video_frames: int) -> int:
    """Latent frames for a ``4n+1`` video frame count: ``n + 1``."""
    if not is_valid_frame_count(video_frames):
        raise InputError(f"frame count must be 4n+1 (1, 5, 9, ..., 81, ...), got {video_frames!r}")
    return (video_frames - 1) // TEMPORAL_STRIDE + 1


def video_frames(latent_frame_count: int) -> int:
    """Video frames decoded from ``latent_frame_count`` latent frames: ``4(F-1)+1``."""
    latent_frame_count = _positive_int("latent frame count", latent_frame_count)
    return TEMPORAL_STRIDE * (latent_frame_count - 1) + 1


def snap_frame_count(frames: int) -> int:
    """The largest ``4n+1`` frame count ``<= frames`` (``frames >= 1``)."""
    frames = _positive_int("frame count", frames)
    return ((frames - 1) // TEMPORAL_STRIDE) * TEMPORAL_STRIDE + 1


def frames_for_duration(seconds: float, fps: float = FPS) -> int:
    """The reference's frame count for audio of ``seconds``: ``ceil(seconds*fps)`` rounded down to 4n+1."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise InputError(f"audio duration must be > 0 seconds, got {seconds!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be > 0, got {fps!r}")
    return snap_frame_count(max(int(math.ceil(seconds * fps)), 1))
