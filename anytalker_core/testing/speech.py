"""Synthetic speech with ``espeak-ng``, for tests, the CLI ``--demo`` and examples.

Real speech (not noise) exercises the wav2vec2 path the way user audio does; espeak-ng is a small
system package (``apt-get install espeak-ng``), nothing is downloaded.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..constants import SAMPLE_RATE
from ..errors import InputError, MissingModelError

log = logging.getLogger(__name__)


def espeak_available() -> bool:
    """True when the ``espeak-ng`` executable is on PATH."""
    return shutil.which("espeak-ng") is not None


def synthesize_speech(
    text: str,
    path: str | Path | None = None,
    voice: str = "en-us",
    speed: int = 175,
    sample_rate: int = SAMPLE_RATE,
    pitch: int | None = None,
) -> torch.Tensor:
    """Speak ``text`` with espeak-ng; returns ``[S]`` float32 mono at ``sample_rate``.

    ``voice`` is an espeak-ng voice, optionally with a variant (``"en-us+m3"``); ``pitch`` (0-99,
    espeak-ng's default 50) moves the voice up or down.

    If ``path`` is given, espeak-ng's own wav (22.05 kHz, mono) is kept there as well.
    """
    if not text or not text.strip():
        raise InputError("synthesize_speech: text is empty")
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingModelError("espeak-ng is not installed (apt-get install espeak-ng / brew install espeak-ng)")
    from ..io.media import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(path) if path is not None else Path(tmp) / "speech.wav"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "-v", voice, "-s", str(int(speed)), "-w", str(out)]
        if pitch is not None:
            cmd += ["-p", str(int(pitch))]
        cmd.append(text)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            raise InputError(f"espeak-ng failed for voice '{voice}': {result.stderr.strip()}")
        return load_audio(out, sample_rate)
