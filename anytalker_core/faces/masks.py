"""Face boxes → identity masks, exactly as the AnyTalker reference builds them.

The chain (reference: ``utils/get_face_bbox.py::FaceInference.infer`` and
``wan/utils/infer_utils.py``), all in float32:

1. :func:`select_faces` keeps the ``n`` largest detections by area and orders them left to right by
   ``x1`` (identity ``i`` = the i-th face from the left = audio track ``i``).
2. :func:`square_box` makes each box square (side ``max(w, h)`` about its centre), shifts it back
   inside the image and clips it.
3. :func:`box_mask` rasterises the square box with ``int()`` truncation (uint8 ``[H, W]``).
4. :func:`expand_mask` enlarges the mask about its centre, ×1.2 in width and ×1.1 in height, by
   bilinearly resizing the old bounding-box content into the new box.
5. :func:`build_face_masks` sums the expanded masks (global mask), resizes it to the latent grid for
   the 4 mask channels of ``y`` and resizes each expanded mask to the DiT token grid.

User-drawn masks (e.g. one ComfyUI MASK per person) enter at step 4 through
:func:`build_face_masks_from_masks`.

Image-resolution arrays are numpy; the latent-resolution outputs that go straight into the DiT
(``y_mask``, ``token_masks``) are torch tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..input_names import name
from .detect import FaceBox

log = logging.getLogger(__name__)

WIDTH_SCALE = 1.2  # reference mask enlargement (width)
HEIGHT_SCALE = 1.1  # reference mask enlargement (height)

BoxLike = FaceBox | Sequence[float] | np.ndarray


# --------------------------------------------------------------------------------------------
# small helpers


def _as_xyxy(box: BoxLike) -> np.ndarray:
    """A box as float32 ``[x1, y1, x2, y2]``."""
    if isinstance(box, FaceBox):
        return np.array([box.x1, box.y1, box.x2, box.y2], dtype=np.float32)
    arr = np.asarray(box, dtype=np.float32).reshape(-1)
    if arr.shape != (4,):
        raise InputError(f"face box {box!r}: expected 4 numbers x1, y1, x2, y2 (pixels)")
    return arr


def _as_boxes(boxes: Sequence[BoxLike] | np.ndarray) -> list[np.ndarray]:
    if isinstance(boxes, np.ndarray) or isinstance(boxes, torch.Tensor):
        arr = np.asarray(boxes, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise InputError(f"face boxes: expected an array [N, 4] of x1, y1, x2, y2, got shape {arr.shape}")
        return [row.copy() for row in arr]
    return [_as_xyxy(b) for b in boxes]


def _check_hw(name: str, hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected (height, width), got {hw!r}") from None
    if h <= 0 or w <= 0:
        raise InputError(f"{name}: expected a positive (height, width), got ({h}, {w})")
    return h, w


def _resize_bilinear(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[h, w]`` float32 → ``[size]`` bilinear, align_corners=False, no antialias."""
    return F.interpolate(mask[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def validate_boxes(boxes: Sequence[BoxLike] | np.ndarray, image_hw: Sequence[int]) -> list[np.ndarray]:
    """Check user/detector boxes against the image; returns them as float32 ``[x1, y1, x2, y2]``.

    A box may stick out of the image (detectors do that near the border) but must overlap it and
    have a positive width and height.
    """
    height, width = _check_hw("image size", image_hw)
    out = []
    for i, box in enumerate(_as_boxes(boxes)):
        x1, y1, x2, y2 = (float(v) for v in box)
        where = f"face box {i + 1} (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g})"
        if not np.all(np.isfinite(box)):
            raise InputError(f"{where}: coordinates must be finite numbers")
        if x2 <= x1 or y2 <= y1:
            raise InputError(f"{where}: expected x2 > x1 and y2 > y1 (corners top-left, bottom-right in pixels)")
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise InputError(
                f"{where} lies outside the {width}x{height} image "
                f"(expected a box overlapping 0 <= x < {width}, 0 <= y < {height}, in pixels of this image)"
            )
        out.append(box)
    return out


# --------------------------------------------------------------------------------------------
# reference rules


def select_faces(detections: Sequence[BoxLike] | np.ndarray, n: int, *, source: str = "the reference image") -> list[np.ndarray]:
    """Keep the ``n`` largest boxes by area, ordered left to right by ``x1``.

    Args:
        detections: ``[D, 4]`` x1, y1, x2, y2 (pixels) or :class:`FaceBox` es, in any order.
        n: the number of identities (audio tracks), ≥ 1.
        source: what was searched, for the error messages.
    Returns:
        ``n`` float32 ``[4]`` boxes, identity order (left to right).
    Raises:
        InputError: no face at all, or fewer faces than ``n``.
    """
    if n < 1:
        raise InputError(f"number of audio tracks: expected at least 1, got {n}")
    boxes = _as_boxes(detections)
    if not boxes:
        raise InputError(
            f"no face found in {source}; use a photo with clearly visible faces, or {name('place_faces')}"
        )
    if len(boxes) < n:
        noun = "face" if len(boxes) == 1 else "faces"
        raise InputError(
            f"found {len(boxes)} {noun} but {n} audio tracks were given; {name('place_faces')}"
        )
    # area in float32, largest first; stable for ties (like Python's sort with reverse=True)
    areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes], dtype=np.float32)
    by_area = sorted(range(len(boxes)), key=lambda k: areas[k], reverse=True)[:n]
    if len(boxes) > n:
        log.info("kept the %d largest of %d detected faces", n, len(boxes))
    kept = [boxes[k] for k in by_area]
    return sorted(kept, key=lambda b: b[0])


def square_box(box: BoxLike, image_hw: Sequence[int]) -> np.ndarray:
    """The reference's square box: side ``max(w, h)`` about the box centre, kept inside the image.

    Returns float32 ``[x1, y1, x2, y2]``. A box leaving the image is shifted back inside
    (``x1 < 0`` → ``[0, side]``, ``x2 > W`` → ``[W - side, W]``, same for y) and then clipped.
    """
    height, width = _check_hw("image size", image_hw)
    x1, y1, x2, y2 = _as_xyxy(box)
    two = np.float32(2)
    cx, cy = (x1 + x2) / two, (y1 + y2) / two
    side = max(x2 - x1, y2 - y1)
    half = side / two
    nx1, ny1, nx2, ny2 = cx - half, cy - half, cx + half, cy + half
    zero = np.float32(0)
    fw, fh = np.float32(width), np.float32(height)
    if nx1 < 0:
        nx1, nx2 = zero, side
    if ny1 < 0:
        ny1, ny2 = zero, side
    if nx2 > fw:
        nx1, nx2 = fw - side, fw
    if ny2 > fh:
        ny1, ny2 = fh - side, fh
    nx1, ny1 = max(zero, nx1), max(zero, ny1)
    nx2, ny2 = min(fw, nx2), min(fh, ny2)
    return np.array([nx1, ny1, nx2, ny2], dtype=np.float32)


def xyxy_to_xywh(box: np.ndarray) -> np.ndarray:
    """float32 ``[x1, y1, x2, y2]`` → ``[x1, y1, x2 - x1, y2 - y1]`` (float32 subtraction)."""
    box = np.asarray(box, dtype=np.float32)
    return np.array([box[0], box[1], box[2] - box[0], box[3] - box[1]], dtype=np.float32)


def box_mask(box: BoxLike, image_hw: Sequence[int]) -> np.ndarray:
    """uint8 ``[H, W]``: 1 on rows ``int(y1):int(y2)``, cols ``int(x1):int(x2)``."""
    height, width = _check_hw("image size", image_hw)
    x1, y1, x2, y2 = _as_xyxy(box)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[int(y1):int(y2), int(x1):int(x2)] = 1
    return mask


def crop_box(square_xywh: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """Integer ``[x1, y1, x2, y2]`` of the face crop for CLIP (the square box, no enlargement).

    float32 ``[x, y, x + w, y + h]`` → centre ± size/2 → clipped to the image → ``int()``.
    """
    height, width = _check_hw("image size", image_hw)
    x, y, w, h = np.asarray(square_xywh, dtype=np.float32)
    bx1, by1, bx2, by2 = x, y, x + w, y + h
    two = np.float32(2)
    cx, cy = (bx1 + bx2) / two, (by1 + by2) / two
    bw, bh = bx2 - bx1, by2 - by1
    nx1 = max(np.float32(0), cx - bw / two)
    ny1 = max(np.float32(0), cy - bh / two)
    nx2 = min(np.float32(width), cx + bw / two)
    ny2 = min(np.float32(height), cy + bh / two)
    out = np.array([int(nx1), int(ny1), int(nx2), int(ny2)], dtype=np.int64)
    if out[2] <= out[0] or out[3] <= out[1]:
        raise InputError(
            f"face crop box {out.tolist()} is empty on the {width}x{height} image; "
            f"the face box must cover at least one pixel"
        )
    return out


def expand_mask(mask: np.ndarray | torch.Tensor, width_scale: float = WIDTH_SCALE,
                height_scale: float = HEIGHT_SCALE) -> np.ndarray:
    """Enlarge a face mask about its centre (reference ``expand_face_mask_flexible``).

    The bounding box of ``mask > 0.5`` (inclusive rows/cols ``min..max``) has centre
    ``c = (min + max) / 2`` and size ``s = max - min + 1``; the new size is ``int(s * scale)``
    (float32 product), the new box ``int(c - new/2) .. int(c + new/2)`` clipped to the image
    (inclusive), and the old box content is bilinearly resized (align_corners=False) into it.

    Args:
        mask: ``[H, W]`` (0/1 or soft). An empty mask is returned unchanged.
    Returns:
        float32 ``[H, W]``.
    """
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.ndim != 2:
        raise InputError(f"face mask: expected [H, W], got shape {tuple(m.shape)}")
    if width_scale == 1.0 and height_scale == 1.0:
        return m.numpy().copy()
    rows, cols = torch.nonzero(m > 0.5, as_tuple=True)
    if rows.numel() == 0:
        return m.numpy().copy()
    h_img, w_img = m.shape
    r0, r1 = int(rows.min()), int(rows.max())
    c0, c1 = int(cols.min()), int(cols.max())

    def new_span(lo: int, hi: int, scale: float, limit: int) -> tuple[int, int]:
        centre = np.float32(lo + hi) / np.float32(2)
        size = int(np.float32(hi - lo + 1) * np.float32(scale))
        half = np.float32(size / 2.0)
        return max(0, int(centre - half)), min(limit - 1, int(centre + half))

    nr0, nr1 = new_span(r0, r1, height_scale, h_img)
    nc0, nc1 = new_span(c0, c1, width_scale, w_img)
    out = torch.zeros_like(m)
    if nr1 > nr0 and nc1 > nc0:
        content = m[r0:r1 + 1, c0:c1 + 1]
        out[nr0:nr1 + 1, nc0:nc1 + 1] = _resize_bilinear(content, (nr1 - nr0 + 1, nc1 - nc0 + 1))
    return out.numpy()


def y_mask_channels(global_mask: np.ndarray | torch.Tensor, latent_hw: Sequence[int], latent_frames: int) -> torch.Tensor:
    """The 4 mask channels of ``y``: ``[4, F_lat, lat_h, lat_w]`` float32.

    Latent frame 0 is ones; every later latent frame is ``bilinear(global_mask → (lat_h, lat_w))``
    (align_corners=False), equal in all 4 channels.
    """
    lat_h, lat_w = _check_hw("latent size", latent_hw)
    if latent_frames < 1:
        raise InputError(f"latent frames: expected at least 1, got {latent_frames}")
    resized = _resize_bilinear(torch.as_tensor(np.asarray(global_mask), dtype=torch.float32), (lat_h, lat_w))
    y = resized.expand(4, latent_frames, lat_h, lat_w).clone()
    y[:, 0] = 1.0
    return y


def token_mask_grid(expanded_mask: np.ndarray | torch.Tensor, latent_hw: Sequence[int], latent_frames: int) -> torch.Tensor:
    """One identity's DiT token mask ``[F_lat, lat_h/2, lat_w/2]`` (bilinear, repeated over frames)."""
    lat_h, lat_w = _check_hw("latent size", latent_hw)
    if lat_h % 2 or lat_w % 2:
        raise InputError(
            f"latent size {lat_h}x{lat_w}: expected even sizes (the DiT patches latents 2x2); "
            f"use an image size that is a multiple of 16 pixels"
        )
    grid = _resize_bilinear(torch.as_tensor(np.asarray(expanded_mask), dtype=torch.float32), (lat_h // 2, lat_w // 2))
    return grid.expand(latent_frames, lat_h // 2, lat_w // 2).clone()


# --------------------------------------------------------------------------------------------
# everything at once


@dataclass
class FaceMasks:
    """Everything the generator needs about the faces, identity ``i`` = audio track ``i``.

    Image-resolution fields (numpy):
        boxes_xyxy: float32 ``[N, 4]`` input boxes in identity order (for masks: their bounds).
        square_boxes_xywh: float32 ``[N, 4]`` square boxes ``[x, y, w, h]``.
        crop_boxes: int64 ``[N, 4]`` x1, y1, x2, y2 of the face crop for CLIP (:func:`crop_faces`).
        raw_masks: uint8 ``[N, H, W]`` box (or user) masks before enlargement.
        expanded_masks: float32 ``[N, H, W]`` enlarged masks.
        global_mask: float32 ``[H, W]`` sum of ``expanded_masks`` (2 where two faces overlap).
    DiT inputs (torch float32):
        y_mask: ``[4, F_lat, lat_h, lat_w]`` the mask channels of ``y``.
        token_masks: ``[N, F_lat, lat_h/2, lat_w/2]`` soft identity masks on the token grid
            (``token_masks[i:i+1]`` is ``Speaker.token_mask`` for batch 1).
    """

    boxes_xyxy: np.ndarray
    square_boxes_xywh: np.ndarray
    crop_boxes: np.ndarray
    raw_masks: np.ndarray
    expanded_masks: np.ndarray
    global_mask: np.ndarray
    y_mask: torch.Tensor
    token_masks: torch.Tensor

    @property
    def num_faces(self) -> int:
        return int(self.raw_masks.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.global_mask.shape[0]), int(self.global_mask.shape[1])

    def token_mask(self, i: int, batch: int = 1) -> torch.Tensor:
        """Identity ``i``'s token mask as ``[batch, F_lat, lat_h/2, lat_w/2]``."""
        return self.token_masks[i].unsqueeze(0).expand(batch, *self.token_masks.shape[1:]).clone()


def _assemble(boxes: list[np.ndarray], squares: list[np.ndarray], raw: list[np.ndarray], image_hw: tuple[int, int],
              latent_hw: Sequence[int], latent_frames: int, width_scale: float, height_scale: float) -> FaceMasks:
    lat_h, lat_w = _check_hw("latent size", latent_hw)
    if latent_frames < 1:
        raise InputError(f"latent frames: expected at least 1, got {latent_frames}")
    expanded = [expand_mask(m, width_scale, height_scale) for m in raw]
    global_mask = np.zeros(image_hw, dtype=np.float32)
    for m in expanded:  # summed in identity order, like the reference
        global_mask += m
    squares_xywh = np.stack([xyxy_to_xywh(s) for s in squares])
    return FaceMasks(
        boxes_xyxy=np.stack(boxes).astype(np.float32),
        square_boxes_xywh=squares_xywh,
        crop_boxes=np.stack([crop_box(s, image_hw) for s in squares_xywh]),
        raw_masks=np.stack(raw).astype(np.uint8),
        expanded_masks=np.stack(expanded).astype(np.float32),
        global_mask=global_mask,
        y_mask=y_mask_channels(global_mask, (lat_h, lat_w), latent_frames),
        token_masks=torch.stack([token_mask_grid(m, (lat_h, lat_w), latent_frames) for m in expanded]),
    )


def build_face_masks(boxes: Sequence[BoxLike] | np.ndarray, image_hw: Sequence[int], latent_hw: Sequence[int],
                     latent_frames: int, *, width_scale: float = WIDTH_SCALE,
                     height_scale: float = HEIGHT_SCALE) -> FaceMasks:
    """Face boxes in identity order → all masks (reference chain, steps 2–5).

    Args:
        boxes: N boxes x1, y1, x2, y2 in pixels of the image, already in identity order
            (use :func:`select_faces` on raw detections first). Not reordered here.
        image_hw: (H, W) of the image the boxes refer to.
        latent_hw: (lat_h, lat_w) latent size (image size / 8 of the generated video; even).
        latent_frames: F_lat = (video_frames - 1) // 4 + 1.
    """
    image_hw = _check_hw("image size", image_hw)
    checked = validate_boxes(boxes, image_hw)
    if not checked:
        raise InputError("face boxes: expected at least one box (one per audio track)")
    squares = [square_box(b, image_hw) for b in checked]
    raw = [box_mask(s, image_hw) for s in squares]
    return _assemble(checked, squares, raw, image_hw, latent_hw, latent_frames, width_scale, height_scale)


def build_face_masks_from_masks(masks: np.ndarray | torch.Tensor | Sequence[np.ndarray], latent_hw: Sequence[int],
                                latent_frames: int, *, image_hw: Sequence[int] | None = None,
                                width_scale: float = WIDTH_SCALE, height_scale: float = HEIGHT_SCALE) -> FaceMasks:
    """User-drawn masks (one per person, identity order) → all masks.

    Each mask is binarised at 0.5 and used as the raw mask as drawn (no squaring), then enlarged
    like a box mask. The square box of its bounds gives the CLIP face crop.

    Args:
        masks: ``[N, H, W]`` (or a list of ``[H, W]``), values in 0..1, in identity order.
        image_hw: (H, W) of the image; if given, every mask must have that size.
    """
    arrays = [np.asarray(m, dtype=np.float32) for m in list(masks)]
    if not arrays:
        raise InputError("face masks: expected at least one mask (one per audio track)")
    for i, m in enumerate(arrays):
        if m.ndim != 2:
            raise InputError(f"face mask {i + 1}: expected a 2-D mask [H, W], got shape {m.shape}")
    want = _check_hw("image size", image_hw) if image_hw is not None else arrays[0].shape
    boxes, squares, raw = [], [], []
    for i, m in enumerate(arrays):
        if m.shape != tuple(want):
            raise InputError(
                f"face mask {i + 1} has size {m.shape[1]}x{m.shape[0]} but the image is {want[1]}x{want[0]}; "
                f"draw the masks on the same image"
            )
        binary = (m > 0.5).astype(np.uint8)
        rows, cols = np.nonzero(binary)
        if rows.size == 0:
            raise InputError(
                f"face mask {i + 1} is empty (no pixel above 0.5); paint over that person's face"
            )
        bounds = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)
        boxes.append(bounds)
        squares.append(square_box(bounds, want))
        raw.append(binary)
    return _assemble(boxes, squares, raw, (int(want[0]), int(want[1])), latent_hw, latent_frames,
                     width_scale, height_scale)


def split_mask(mask: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    """One mask painted over several people → ``n`` masks, one per region, left to right.

    The separate regions (8-connected, ``mask > 0.5``) are found, the ``n`` largest kept and
    ordered by their leftmost pixel, like detected faces.

    Args:
        mask: ``[H, W]`` values in 0..1.
        n: number of people (audio tracks).
    Returns:
        float32 ``[n, H, W]`` binary masks.
    """
    import cv2

    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InputError(f"face mask: expected one [H, W] mask to split into people, got shape {m.shape}")
    if n < 1:
        raise InputError(f"number of audio tracks: expected at least 1, got {n}")
    count, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0.5).astype(np.uint8), connectivity=8)
    regions = list(range(1, count))  # label 0 is the background
    if len(regions) < n:
        noun = "region" if len(regions) == 1 else "regions"
        raise InputError(
            f"the face mask has {len(regions)} separate {noun} but {n} audio "
            f"{'tracks were' if n != 1 else 'track was'} given; "
            f"paint one separate patch per person (or give one mask per person)"
        )
    regions = sorted(regions, key=lambda k: stats[k, cv2.CC_STAT_AREA], reverse=True)[:n]
    regions = sorted(regions, key=lambda k: stats[k, cv2.CC_STAT_LEFT])
    return np.stack([(labels == k).astype(np.float32) for k in regions])


def crop_faces(image: np.ndarray, crop_boxes: np.ndarray | Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Cut the face crops for the CLIP face tokens.

    Args:
        image: uint8 ``[H, W, 3]`` RGB (the image the boxes refer to).
        crop_boxes: int ``[N, 4]`` x1, y1, x2, y2 (:attr:`FaceMasks.crop_boxes`).
    Returns:
        N uint8 arrays ``[h_i, w_i, 3]`` (copies).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: expected an RGB array [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    crops = []
    for i, box in enumerate(np.asarray(crop_boxes, dtype=np.int64).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(v) for v in box)
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise InputError(
                f"face crop box {i + 1} {[x1, y1, x2, y2]} lies outside the {width}x{height} image "
                f"(expected 0 <= x1 < x2 <= {width}, 0 <= y1 < y2 <= {height})"
            )
        crops.append(image[y1:y2, x1:x2].copy())
    return crops
