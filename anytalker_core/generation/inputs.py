"""The user's inputs, checked: the image, one voice per person, and the faces for the preview.

Every check raises :class:`~anytalker_core.errors.InputError` naming the input and what was expected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..constants import MAX_SPEAKERS, SAMPLE_RATE
from ..errors import InputError
from ..input_names import name as input_name
from ..io.images import load_image

log = logging.getLogger(__name__)

__all__ = ["load_image", "check_image", "check_tracks", "fit_length", "to_uint8_frames", "make_face_detector",
           "detect_faces_for_preview"]


def check_image(image: Any) -> np.ndarray:
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: expected an RGB array [H, W, 3], got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and 0.0 <= image.min() and image.max() <= 1.0:
            image = (image * 255.0 + 0.5).astype(np.uint8)
        else:
            raise InputError(f"image: expected uint8 0..255 or float 0..1 values, got dtype {image.dtype}")
    if min(image.shape[:2]) < 32:
        raise InputError(f"image: {image.shape[1]}x{image.shape[0]} pixels is too small (at least 32x32)")
    return np.ascontiguousarray(image)


def check_tracks(audio: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(audio, torch.Tensor):
        audio = [audio]
    tracks = list(audio)
    if not tracks:
        raise InputError("audio: expected one audio track per person, got none")
    if len(tracks) > MAX_SPEAKERS:
        raise InputError(f"audio: {len(tracks)} tracks given; at most {MAX_SPEAKERS} people are supported")
    out = []
    for i, t in enumerate(tracks):
        if isinstance(t, (str, Path)):
            from ..io.media import load_audio

            t = load_audio(t, SAMPLE_RATE)
        t = torch.as_tensor(np.asarray(t, dtype=np.float32)) if not isinstance(t, torch.Tensor) else t
        if t.ndim != 1:
            raise InputError(f"audio track {i + 1}: expected a mono waveform [S], got shape {tuple(t.shape)}")
        if t.numel() < SAMPLE_RATE // 10:
            raise InputError(f"audio track {i + 1}: {t.numel()} samples is shorter than 0.1 s at 16 kHz")
        if not torch.isfinite(t).all():
            raise InputError(f"audio track {i + 1}: contains NaN or infinite samples")
        out.append(t.float().cpu())
    return out


def fit_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Cut or zero-pad ``wave [S]`` to ``samples``."""
    if wave.numel() >= samples:
        return wave[:samples].clone()
    return torch.cat([wave, wave.new_zeros(samples - wave.numel())])


#: frames converted at a time by :func:`to_uint8_frames` (its float temporaries are this many frames, not the clip)
UINT8_CHUNK_FRAMES = 8


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[1, 3, T, H, W]`` (or ``[3, T, H, W]``) in -1..1 -> uint8 ``[T, H, W, 3]`` (on the CPU).

    Converted :data:`UINT8_CHUNK_FRAMES` frames at a time (the same float operations frame by frame), so
    beside the video only a few frames of float temporaries exist — for the whole clip at once they were
    two more float copies of it (776 MB for 81 frames at 480×832, on the decoding device)."""
    if video.ndim == 5:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise RuntimeError(f"VAE decode returned shape {tuple(video.shape)}, expected [1, 3, T, H, W]")
    video = video.detach()
    frames, height, width = int(video.shape[1]), int(video.shape[2]), int(video.shape[3])
    out = torch.empty(frames, height, width, 3, dtype=torch.uint8)
    for t in range(0, frames, UINT8_CHUNK_FRAMES):
        part = video[:, t:t + UINT8_CHUNK_FRAMES].float().clamp(-1, 1).add_(1).mul_(127.5).round_()
        out[t:t + part.shape[1]] = part.to(torch.uint8).permute(1, 2, 3, 0).cpu()
    return out.numpy()


def make_face_detector(backend: str, insightface_root: Path | None, device: torch.device | str = "cpu"):
    """A face detector; ``auto`` = insightface when its package and models are present, else mediapipe."""
    from ..faces import load_detector

    dev = str(device) if str(device).startswith("cuda") else "cpu"
    detector = load_detector(backend, models_dir=insightface_root, device=dev)
    log.info("face detector: %s", getattr(detector, "name", type(detector).__name__))
    return detector


def detect_faces_for_preview(image: np.ndarray, num_speakers: int | None = None, *, boxes=None,
                             backend: str = "auto", models_dir: str | Path | None = None, detector: Any = None
                             ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Find the faces (or take ``boxes``) and draw the numbered preview; no generation model is loaded.

    Detected faces follow the one rule of :func:`~anytalker_core.faces.detect_and_select`, so the preview
    (CLI ``--preview-faces``, the Face Masks node) shows the faces generation will use.

    Args:
        image: uint8 ``[H, W, 3]``.
        num_speakers: how many faces to keep (the largest, then ordered left to right); ``None`` = all.
        boxes: user boxes (then nothing is detected).
        backend: ``auto``, ``insightface`` or ``mediapipe`` (when no ``detector`` is given).
        models_dir: ComfyUI-style models folder (for ``insightface/``).
        detector: an already loaded ``FaceDetector``.
    Returns:
        ``(preview uint8 [H, W, 3], boxes in identity order)``.
    """
    from ..faces import detect_and_select, draw_preview, validate_boxes

    image = check_image(image)
    if boxes is not None:
        chosen = validate_boxes(boxes, image.shape[:2])
        if num_speakers is not None and len(chosen) != num_speakers:
            raise InputError(f"{input_name('boxes')}: {len(chosen)} face box(es) given for {num_speakers} "
                             f"{input_name('audio')}(s); give exactly one box per person, left to right")
    else:
        if detector is None:
            root = Path(models_dir) / "insightface" if models_dir is not None else None
            detector = make_face_detector(backend, root if root is not None and root.is_dir() else None)
        chosen = detect_and_select(image, detector, num_speakers)
    return draw_preview(image, chosen), chosen
