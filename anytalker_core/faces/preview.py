"""A preview image that shows which audio track drives which face."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from .detect import FaceBox, check_image

# one colour per identity (RGB), repeated for more than 8 people
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_preview(image: np.ndarray, boxes: Sequence[FaceBox | Sequence[float]] | np.ndarray,
                 masks: np.ndarray | None = None, labels: Sequence[str] | None = None) -> np.ndarray:
    """Draw numbered face boxes: label ``k`` (1-based) marks the face driven by audio track ``k``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        boxes: N boxes x1, y1, x2, y2 in pixels, identity order.
        masks: optional ``[N, H, W]`` masks (e.g. ``FaceMasks.expanded_masks``), tinted in each
            identity's colour.
        labels: optional text per box (default ``"1"``, ``"2"``, ...).
    Returns:
        uint8 ``[H, W, 3]`` RGB, a new array.
    """
    from PIL import Image, ImageDraw

    image = check_image(image, "preview image")
    height, width = image.shape[:2]
    rows = [b.xyxy if isinstance(b, FaceBox) else tuple(float(v) for v in np.asarray(b).reshape(-1)) for b in boxes]
    if any(len(r) != 4 for r in rows):
        raise InputError("preview boxes: expected N boxes of 4 numbers x1, y1, x2, y2")
    if labels is not None and len(labels) != len(rows):
        raise InputError(f"preview labels: expected {len(rows)} labels (one per box), got {len(labels)}")
    canvas = image.astype(np.float32)
    if masks is not None:
        masks = np.asarray(masks, dtype=np.float32)
        if masks.ndim != 3 or masks.shape[1:] != (height, width) or masks.shape[0] != len(rows):
            raise InputError(
                f"preview masks: expected [{len(rows)}, {height}, {width}] (one per box, image size), got {masks.shape}"
            )
        for i, m in enumerate(masks):
            alpha = 0.35 * np.clip(m, 0.0, 1.0)[..., None]
            canvas = canvas * (1 - alpha) + np.array(PALETTE[i % len(PALETTE)], np.float32) * alpha
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    line = max(2, round(min(height, width) / 160))
    font = _font(max(12, round(min(height, width) / 18)))
    for i, (x1, y1, x2, y2) in enumerate(rows):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = labels[i] if labels is not None else str(i + 1)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, line)
        tx = min(max(0.0, x1), width - tw - 2 * pad)
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1  # above the box, or inside at the top
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(out, dtype=np.uint8).copy()
