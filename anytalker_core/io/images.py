"""Reading an image file as uint8 RGB, for every pixel mode Pillow reads, or refusing it clearly.

:func:`load_image` returns ``uint8 [H, W, 3]`` RGB with the EXIF rotation applied. Pillow's own
``convert("RGB")`` clips high-bit-depth pixels to 255, so it is used only for the 8-bit modes:

=========================  ==========================================================================
mode                       conversion
=========================  ==========================================================================
1, L, P, PA, LA, RGB,      Pillow's ``convert("RGB")`` (palette transparency and alpha are dropped,
RGBA, RGBX, CMYK, YCbCr,   as the reference does; premultiplied ``La``/``RGBa`` are un-premultiplied
LAB, HSV, La, RGBa         first)
I;16, I;16L, I;16B, ...    16-bit grey: ``v / 257`` (0..65535 -> 0..255), replicated to 3 channels
I (32-bit integer)         values 0..255: as 8-bit; up to 65535: as 16-bit; anything larger or
                           negative is refused (no standard brightness scale)
F (32-bit float)           0..1: ``v * 255``; up to 255: as is; NaN/inf, negative or larger values are
                           refused
=========================  ==========================================================================

Images larger than :data:`MAX_IMAGE_PIXELS` (Pillow's decompression-bomb limit, about 89.5 MP) are
refused before any pixel is decoded. Multi-frame files (GIF, APNG, TIFF pages) use their first frame.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["MAX_IMAGE_PIXELS", "image_to_rgb", "load_image"]

MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default decompression-bomb threshold (about 9459 x 9459)


def _refuse(what: str, detail: str) -> InputError:
    return InputError(f"{what}: {detail}; save it as an 8-bit RGB or greyscale png/jpg")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def image_to_rgb(img, what: str = "image") -> np.ndarray:
    """A Pillow image of any mode -> uint8 ``[H, W, 3]`` RGB (see the module table), or :class:`InputError`."""
    mode = img.mode
    if mode.startswith("I;16"):
        values = np.asarray(img).astype(np.float64)  # uint16 (any byte order)
        return _grey_to_rgb(np.round(values / 257.0).astype(np.uint8))
    if mode == "I":
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise _refuse(what, f"32-bit integer pixels range from {low} to {high}, beyond 16 bits, which has "
                                "no standard brightness scale")
        scale = 1.0 if high <= 255 else 257.0
        return _grey_to_rgb(np.round(values / scale).astype(np.uint8))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise _refuse(what, "floating-point pixels contain NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise _refuse(what, f"floating-point pixels range from {low:g} to {high:g}; expected 0..1 or 0..255")
        scale = 255.0 if high <= 1.0 else 1.0
        return _grey_to_rgb(np.clip(np.round(values * scale), 0, 255).astype(np.uint8))
    if mode in ("La", "RGBa"):  # premultiplied alpha
        img = img.convert("LA" if mode == "La" else "RGBA")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise _refuse(what, f"pixel mode {mode!r} cannot be converted to RGB ({exc})") from None
    out = np.array(rgb, dtype=np.uint8)  # a writable copy
    if out.ndim != 3 or out.shape[2] != 3:
        raise _refuse(what, f"pixel mode {mode!r} gave an array of shape {out.shape}")
    return out


def load_image(path: str | Path, what: str | None = None) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB (EXIF rotation applied).

    ``what`` names the input in messages (default ``image '<path>'``; the CLI passes ``--image '<path>'``).
    Raises :class:`InputError`: missing, unreadable, too large (more than :data:`MAX_IMAGE_PIXELS`) or of a
    pixel format that has no faithful RGB conversion.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    what = what or f"image '{path}'"
    if not path.exists():
        raise InputError(f"{what}: no such file")
    if path.is_dir():
        raise InputError(f"{what}: is a folder, expected an image file")
    limit = f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP (about {int(MAX_IMAGE_PIXELS ** 0.5)}x{int(MAX_IMAGE_PIXELS ** 0.5)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{what}: {width}x{height} pixels, {width * height / 1e6:.1f} MP is larger "
                                     f"than the limit of {limit} (decompression-bomb protection); downscale it first")
                if getattr(img, "n_frames", 1) > 1:
                    log.info("%s has %d frames: the first one is used", path, img.n_frames)
                img = ImageOps.exif_transpose(img)
                return np.ascontiguousarray(image_to_rgb(img, what))
    except Image.DecompressionBombError as exc:  # Pillow refuses beyond twice its limit at open
        import re

        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "the image"
        raise InputError(f"{what}: {size} is larger than the limit of {limit} (decompression-bomb "
                         "protection); downscale it first") from None
    except UnidentifiedImageError:
        raise InputError(f"{what}: not a readable image (Pillow cannot identify it); expected png, jpg, webp, bmp, "
                         "tiff, ...") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise InputError(f"{what}: the image data cannot be decoded, the file is truncated or corrupt "
                         f"({exc})") from None
