"""Parity runner for the ``audio_features`` fixture group (wav2vec2 features + multi-track assembly)."""

from __future__ import annotations

import logging
import re

import torch

from ..audio.timeline import build_audio_conditioning, frame_num_from_audio
from ..audio.wav2vec import load_wav2vec
from ..errors import InputError
from . import Comparison, Fixture, compare, compare_exact

#: golden tensors read as inputs (the waveforms the official code read)
INPUTS = ("wav_*",)

log = logging.getLogger(__name__)


def _tolerance(meta: dict) -> tuple[float, float]:
    """``atol``/``rtol`` of the features from the json (e.g. ``"atol 1e-4, rtol 1e-4 (float32)"``)."""
    text = str(meta.get("tolerance", {}).get("features_*", ""))
    atol = re.search(r"atol\s*([0-9.eE+-]+)", text)
    rtol = re.search(r"rtol\s*([0-9.eE+-]+)", text)
    if not atol or not rtol:
        raise InputError(f"fixture {meta.get('group')}: tolerance.features_* has no 'atol X, rtol Y' ({text!r})")
    return float(atol.group(1)), float(rtol.group(1))


def _model_dir(fixture: Fixture):
    spec = fixture.meta.get("wav2vec2_model", {}).get("dir", "audio_features_wav2vec2")
    name = spec.split()[0].rstrip("/")
    path = fixture.sibling(name)
    if not path.is_dir():
        raise InputError(f"fixture {fixture.json_path}: wav2vec2 model folder '{path}' not found")
    return path


def run(fixture: Fixture) -> list[Comparison]:
    meta, t = fixture.meta, fixture.tensors
    atol, rtol = _tolerance(meta)
    fps = meta["fps"]
    encoder = load_wav2vec(_model_dir(fixture), device="cpu", dtype=torch.float32)
    out: list[Comparison] = []

    singles = sorted(meta["single_tracks"], key=lambda s: s["track"])
    waves = []
    for info in singles:
        i = info["track"]
        wave = t[f"wav_{i}"]
        if wave.numel() != info["num_samples"]:
            raise InputError(f"fixture wav_{i} has {wave.numel()} samples, json says {info['num_samples']}")
        waves.append(wave)
        out.append(compare(f"input_values_{i}", encoder.normalize(wave), t[f"input_values_{i}"], atol, rtol))
        feats = encoder.features(wave, fps=fps)
        if feats.shape[0] != info["audio_length_frames"]:
            log.warning("track %d: %d frames, json says %d", i, feats.shape[0], info["audio_length_frames"])
        out.append(compare(f"features_single_{i}", feats, t[f"features_single_{i}"], atol, rtol))

    counts = [w.numel() for w in waves]
    derived = torch.tensor([frame_num_from_audio(counts, fps, "pad"), frame_num_from_audio(counts, fps, "concat")])
    out.append(compare_exact("frame_num", derived, t["frame_num"]))

    for mode in ("pad", "concat"):
        cond = build_audio_conditioning(waves, mode=mode, fps=fps, encoder=encoder)  # frame_num derived
        out.append(compare(f"features_{mode}_fp32", cond.features, t[f"features_{mode}_fp32"], atol, rtol))
    return out
