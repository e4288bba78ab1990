"""``anytalker generate``'s checks, all made before any generation model loads.

The order a run follows (each step only reads files; nothing is written and no model weights load):

1. :func:`check_flags` — every flag on its own and in combination: guidance scales, shift, seed, steps,
   fps, frame count, window length, ``--device`` (exists in this torch build and on this machine), and
   ``--out`` / ``--preview-faces`` (the right suffix, not an existing folder, in a writable place).
2. :func:`check_clip` — one clip's inputs: the image decodes (every Pillow mode, size limit), every audio
   decodes and is usable, the frame count fits the audio, the boxes fit the image and the voices, the
   detected faces are at least as many as the voices (``detector``, loaded once and reused by the
   pipeline), and the disk holds the expected mp4.

Every failure is an :class:`~.errors.InputError` (or its :class:`~.errors.OutputLocationError` /
:class:`~.errors.DeviceError` subclasses) whose message starts with the input as the user gave it:
the flag, or ``tasks.json['name'].image_path`` for a batch entry.
"""

from __future__ import annotations

import argparse
import errno
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DeviceError, InputError, OutputLocationError

__all__ = [
    "MAX_FPS",
    "MAX_STEPS",
    "CheckedClip",
    "check_clip",
    "check_device",
    "check_flags",
    "check_free_space",
    "check_output_dir",
    "check_output_file",
    "estimate_mp4_bytes",
    "parse_boxes",
]

MAX_FPS = 120  # the model was trained at 24 fps; far beyond that one audio window is a few samples
MAX_STEPS = 1000  # the flow schedulers' training timesteps
MAX_SEED = 2**64 - 1
MP4_BYTES_PER_PIXEL = 3 / 8  # generous H.264 estimate (raw RGB / 8); real clips are usually far smaller
MP4_OVERHEAD = 1 << 20


# ---------------------------------------------------------------------------------------- flags


def _finite(value: float | None, flag: str, low: float, low_inclusive: bool = True) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (value >= low if low_inclusive else value > low)
    if not ok:
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        raise InputError(f"{flag} must be a finite number {bound}, got {value!r}")


def parse_boxes(text: str) -> list[list[float]]:
    """``"x1,y1,x2,y2;x1,y1,x2,y2"`` (pixels of the input image, one box per person) -> list of boxes."""
    boxes = []
    for chunk in text.replace(" ", "").split(";"):
        if not chunk:
            continue
        try:
            vals = [float(v) for v in chunk.split(",")]
        except ValueError:
            raise InputError(f"--boxes: '{chunk}' is not four numbers x1,y1,x2,y2") from None
        if len(vals) != 4:
            raise InputError(f"--boxes: '{chunk}' has {len(vals)} numbers, expected x1,y1,x2,y2")
        if vals[2] <= vals[0] or vals[3] <= vals[1]:
            raise InputError(f"--boxes: '{chunk}' is empty; expected x2 > x1 and y2 > y1")
        boxes.append(vals)
    if not boxes:
        raise InputError("--boxes: no box given; expected 'x1,y1,x2,y2;x1,y1,x2,y2' (one per person)")
    return boxes


def check_flags(args: argparse.Namespace) -> None:
    """Flags on their own and together (no file is opened except to probe output locations)."""
    from .long_clip import check_long_clip_args
    from .split_voices import check_conversation_args

    if args.demo and args.batch:
        raise InputError("--demo and --batch cannot be combined")
    if not args.demo and not args.batch and args.image is None:
        raise InputError("--image is required (or use --batch FILE.json, or --demo)")
    check_conversation_args(args)  # --audio, or --conversation MIX
    if args.batch and (args.image is not None or args.audio):
        raise InputError("--batch takes its images and audio from the JSON; drop --image/--audio")
    if args.batch and args.preview_faces is not None:
        raise InputError("--preview-faces works on one --image, not with --batch")
    if (args.text_guidance is None) != (args.audio_guidance is None):
        raise InputError("--text-guidance and --audio-guidance go together; give both or neither (then --guidance)")
    _finite(args.guidance, "--guidance", 0.0)
    _finite(args.text_guidance, "--text-guidance", 0.0)
    _finite(args.audio_guidance, "--audio-guidance", 0.0)
    _finite(args.shift, "--shift", 0.0, low_inclusive=False)
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    if args.seed is not None and args.seed != -1 and not 0 <= args.seed <= MAX_SEED:
        raise InputError(f"--seed must be -1 (random) or between 0 and 2**64-1, got {args.seed}")
    if args.frame_num is not None and (args.frame_num < 5 or (args.frame_num - 1) % 4):
        raise InputError(f"--frame-num must be 4n+1 and at least 5 (5, 9, 13, ..., 81), got {args.frame_num}")
    if not 1 <= args.fps <= MAX_FPS:
        raise InputError(f"--fps must be between 1 and {MAX_FPS} (the model was trained at 24), got {args.fps}")
    check_long_clip_args(args)  # --window-frames and the long-clip flags (cli/long_clip.py)
    if args.dit_config is not None and not Path(args.dit_config).is_file():
        raise InputError(f"--dit-config '{args.dit_config}': no such file")
    if len(args.audio) > 8:
        raise InputError(f"--audio given {len(args.audio)} times; at most 8 people are supported")
    if args.boxes is not None:
        boxes = parse_boxes(args.boxes)
        if args.audio and len(boxes) != len(args.audio):
            raise InputError(f"--boxes: {len(boxes)} box(es) for {len(args.audio)} --audio file(s); "
                             "give exactly one box per person, left to right")
    if args.batch:
        check_output_dir(args.out if args.out is not None else Path(args.batch).resolve().with_suffix(""), "--out")
    elif args.preview_faces is None or args.demo:
        check_output_file(args.out or Path("demo.mp4" if args.demo else "out.mp4"), "--out", ".mp4")
    if args.preview_faces is not None:
        check_output_file(args.preview_faces, "--preview-faces", ".png")


def check_device(name: str):
    """``--device`` -> ``torch.device``, refused when this torch build or machine cannot run it."""
    import torch

    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device: unknown torch device {name!r} (try cpu, cuda, cuda:0, mps)") from None
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise DeviceError(f"--device {name}: this torch {torch.__version__} is a CPU-only build (no CUDA); "
                              "use --device cpu, or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is visible to torch (driver missing or "
                              "CUDA_VISIBLE_DEVICES empty); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), "
                              f"numbered 0..{count - 1}")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise DeviceError(f"--device {name}: this torch build or machine has no {device.type} device; "
                              "use --device cpu")
    return device


# ------------------------------------------------------------------------------------ output places


def _nearest_existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe_writable(folder: Path, flag: str, shown: Path) -> None:
    """Create and remove a file in ``folder`` (the real test; ``os.access`` is wrong for root and ACLs)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputLocationError(f"{flag} '{shown}': '{existing}' is a file, not a folder")
    try:
        with tempfile.TemporaryFile(prefix=".anytalker-write-test-", dir=existing):
            pass  # created and removed at once
    except OSError as exc:
        reason = "read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else exc.strerror
        raise OutputLocationError(f"{flag} '{shown}': cannot write in '{existing}' ({reason}); "
                                  "choose a writable location") from None


def check_output_file(path: str | Path, flag: str, suffix: str) -> Path:
    """An output file: ``suffix``, not an existing folder, its folder writable (or creatable)."""
    path = Path(path)
    if path.is_dir():
        raise OutputLocationError(f"{flag} '{path}' is an existing folder; give a file name such as "
                                  f"'{path / ('out' + suffix)}'")
    if path.suffix.lower() != suffix:
        raise OutputLocationError(f"{flag} '{path}': expected a {suffix} file name")
    _probe_writable(path.parent, flag, path)
    return path


def check_output_dir(path: str | Path, flag: str) -> Path:
    """An output folder (batch): not an existing file, writable (or creatable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputLocationError(f"{flag} '{path}' is a file; with --batch it names the output folder")
    _probe_writable(path, flag, path)
    return path


def estimate_mp4_bytes(frames: int, height: int, width: int) -> int:
    """A generous size estimate of the mp4 (H.264 at crf 18 + AAC)."""
    return int(frames * height * width * MP4_BYTES_PER_PIXEL) + MP4_OVERHEAD


def check_free_space(path: str | Path, needed: int, flag: str) -> None:
    """Refuse when the file system of ``path`` has less than ``needed`` bytes free."""
    existing = _nearest_existing(Path(path).parent)
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutputLocationError(f"{flag} '{path}': {free / 1e6:.1f} MB free in '{existing}', the clip needs "
                                  f"about {needed / 1e6:.1f} MB; free some space or choose another place")


# --------------------------------------------------------------------------------------- one clip


@dataclass
class CheckedClip:
    """One clip's inputs, decoded and checked: ready for the pipeline once the models are loaded.

    Attributes:
        name: clip name (batch task name, or the output's stem).
        image: uint8 ``[H, W, 3]``.
        audio: one ``[S]`` float32 16 kHz waveform per person, left to right.
        boxes: face boxes in identity order (the user's, or the detector's choice), or ``None``.
        frame_num: the clip's frame count (``4n+1``).
        size: video ``(height, width)``.
        out: the mp4 to write.
    """

    name: str
    image: Any
    audio: list
    prompt: str
    audio_mode: str
    negative_prompt: str | None
    seed: int | None
    boxes: list | None
    frame_num: int
    size: tuple[int, int]
    out: Path


def check_clip(*, name: str, image: Any, audio: Sequence[Any], prompt: str, audio_mode: str,
               negative_prompt: str | None, seed: int | None, boxes: list | None, out: Path,
               frame_num: int | None, fps: int, max_area: int, detector: Any = None,
               image_label: str = "--image", audio_labels: Sequence[str] | None = None,
               boxes_label: str = "--boxes", out_label: str = "--out") -> CheckedClip:
    """Decode and check one clip's inputs (see the module docstring); nothing is loaded but the files.

    ``image`` is a path or an already decoded uint8 array; ``audio`` paths or ``[S]`` 16 kHz waveforms.
    The labels name the inputs in messages as the user gave them (default: the CLI flags, people
    numbered from 1: ``--audio #2``).
    """
    import torch

    from ..audio.timeline import check_timeline
    from ..faces import locate_faces
    from ..io.images import load_image
    from ..io.media import load_audio
    from ..sampling import target_size

    if isinstance(image, (str, Path)):
        image_label = f"{image_label} '{image}'"
        image = load_image(image, image_label)
    if not audio:
        raise InputError("no audio given; expected one audio file per person (--audio)")
    audio_labels = list(audio_labels or [f"--audio #{i + 1}" for i in range(len(audio))])
    waves = []
    for label, track in zip(audio_labels, audio):
        if isinstance(track, torch.Tensor):
            waves.append(track)
            continue
        try:
            waves.append(load_audio(track))
        except InputError as exc:
            raise InputError(f"{label}: {exc}") from None
    frames = check_timeline(waves, audio_mode, fps, frame_num)
    height, width = target_size(image.shape[0], image.shape[1], max_area)
    if boxes is not None:
        try:
            boxes = [b.tolist() for b in locate_faces(image, len(waves), boxes=boxes)]
        except InputError as exc:
            raise InputError(f"{boxes_label}: {exc}") from None
    elif detector is not None:  # the faces the pipeline would choose, found once, here
        boxes = [b.tolist() for b in locate_faces(image, len(waves), detector=detector)]
    check_free_space(out, estimate_mp4_bytes(frames, height, width), out_label)
    return CheckedClip(name=name, image=image, audio=waves, prompt=prompt, audio_mode=audio_mode,
                       negative_prompt=negative_prompt, seed=seed, boxes=boxes, frame_num=frames,
                       size=(height, width), out=Path(out))
