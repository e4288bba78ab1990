"""One call from a reference image to identity masks: detection, or the user's boxes/masks.

Precedence: user masks, else user boxes, else the detector. User boxes and masks are taken in the
order given (box/mask ``i`` ↔ audio track ``i``); detected faces are ordered left to right like the
reference. ``order`` then permutes the identities explicitly: identity ``i`` becomes candidate
``order[i]``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .detect import FaceBox, FaceDetector, check_image
from .masks import (HEIGHT_SCALE, WIDTH_SCALE, FaceMasks, build_face_masks, build_face_masks_from_masks,
                    select_faces, validate_boxes)

log = logging.getLogger(__name__)


def _check_order(order: Sequence[int] | None, n: int) -> list[int]:
    if order is None:
        return list(range(n))
    order = [int(k) for k in order]
    if sorted(order) != list(range(n)):
        raise InputError(
            f"face order {order}: expected a permutation of 0..{n - 1} "
            f"(entry i = which face, counted from the left from 0, audio track i drives)"
        )
    return order


def _count_check(what: str, got: int, n: int) -> None:
    if got != n:
        raise InputError(
            f"{got} face {what}{'s' if got != 1 else ''} given for {n} audio track{'s' if n != 1 else ''}; "
            f"give exactly one {what} per audio track"
        )


def _usable(box: FaceBox | Sequence[float], image_hw: tuple[int, int]) -> np.ndarray | None:
    """A detection as float32 xyxy, or None if it is degenerate or off the image (dropped, not an error)."""
    try:
        return validate_boxes([box], image_hw)[0]
    except InputError as exc:
        log.debug("dropped detection: %s", exc)
        return None


def detect_and_select(image: np.ndarray, detector: FaceDetector, num_speakers: int | None = None
                      ) -> list[np.ndarray]:
    """The one face-selection rule, used by every caller (generation, the CLI preview, the Face Masks node).

    Detections that are degenerate or off the image are dropped (detectors produce them near the border);
    of the rest the ``num_speakers`` largest are kept (``None``: all), ordered left to right.

    Raises:
        InputError: no usable face, or fewer than ``num_speakers``.
    """
    image = check_image(image)
    hw = image.shape[:2]
    name = getattr(detector, "name", "?")
    found = [b for b in (_usable(d, hw) for d in detector.detect(image)) if b is not None]
    log.info("%s detector found %d face(s)", name, len(found))
    n = num_speakers if num_speakers is not None else max(len(found), 1)
    return select_faces(found, n, source=f"the reference image (detector '{name}')")


def locate_faces(image: np.ndarray, num_speakers: int, *, detector: FaceDetector | None = None,
                 boxes: Sequence[FaceBox | Sequence[float]] | np.ndarray | None = None,
                 order: Sequence[int] | None = None) -> list[np.ndarray]:
    """The face boxes in identity order (float32 ``[x1, y1, x2, y2]``), from the user or a detector."""
    image = check_image(image)
    hw = image.shape[:2]
    if boxes is not None:
        checked = validate_boxes(boxes, hw)
        _count_check("box", len(checked), num_speakers)
        chosen = checked
    elif detector is not None:
        chosen = detect_and_select(image, detector, num_speakers)
    else:
        raise InputError("faces: no detector, boxes or masks given; pass one of them to place the speakers")
    return [chosen[k] for k in _check_order(order, len(chosen))]


def prepare_faces(image: np.ndarray, num_speakers: int, latent_hw: Sequence[int], latent_frames: int, *,
                  detector: FaceDetector | None = None,
                  boxes: Sequence[FaceBox | Sequence[float]] | np.ndarray | None = None,
                  masks: np.ndarray | torch.Tensor | Sequence[np.ndarray] | None = None,
                  order: Sequence[int] | None = None, width_scale: float = WIDTH_SCALE,
                  height_scale: float = HEIGHT_SCALE) -> FaceMasks:
    """Reference image → :class:`FaceMasks` for ``num_speakers`` identities.

    Args:
        image: uint8 ``[H, W, 3]`` RGB; masks and boxes refer to its pixels.
        num_speakers: number of audio tracks (identities), ≥ 1.
        latent_hw, latent_frames: the latent grid of the video to generate.
        detector: used when neither ``masks`` nor ``boxes`` is given.
        boxes: one box per speaker (x1, y1, x2, y2 pixels), in audio-track order.
        masks: one mask per speaker ``[N, H, W]`` in 0..1, in audio-track order (wins over boxes).
        order: optional permutation; identity ``i`` takes candidate ``order[i]``.
    """
    if num_speakers < 1:
        raise InputError(f"number of audio tracks: expected at least 1, got {num_speakers}")
    image = check_image(image)
    if masks is not None:
        arrays = list(masks)
        _count_check("mask", len(arrays), num_speakers)
        arrays = [arrays[k] for k in _check_order(order, len(arrays))]
        if boxes is not None:
            log.info("face masks given: the face boxes are ignored")
        return build_face_masks_from_masks(arrays, latent_hw, latent_frames, image_hw=image.shape[:2],
                                           width_scale=width_scale, height_scale=height_scale)
    chosen = locate_faces(image, num_speakers, detector=detector, boxes=boxes, order=order)
    return build_face_masks(chosen, image.shape[:2], latent_hw, latent_frames,
                            width_scale=width_scale, height_scale=height_scale)
