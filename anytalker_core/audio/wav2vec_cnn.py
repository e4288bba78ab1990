"""wav2vec2's CNN feature encoder over a long track in chunks (see :mod:`.wav2vec`): chunks cut at CNN
frame boundaries give the same frames (the CNN is local); the ``group`` variant's GroupNorm statistics of
the whole track are gathered in a first pass and combined exactly, so the result equals one pass up to
float32 rounding (:data:`CHUNKED_TOLERANCE`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

#: CNN frames (50 Hz) per chunk of the feature encoder: 10 s of audio; a track up to this long runs in one pass
CNN_CHUNK_FRAMES = 500
#: chunked against one-pass features: largest difference / largest magnitude (measured ≤ 1.2e-6, BENCHMARKS.md)
CHUNKED_TOLERANCE = 1e-5

__all__ = ["CNN_CHUNK_FRAMES", "CHUNKED_TOLERANCE", "cnn_frames", "feature_encoder", "hop_samples",
           "receptive_field"]


def cnn_frames(num_samples: int, config: Any) -> int:
    """Frames the CNN feature encoder makes of ``num_samples`` samples (no padding: ``(n − k) // s + 1`` per layer)."""
    n = int(num_samples)
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    return n


def hop_samples(config: Any) -> int:
    return int(np.prod(config.conv_stride))


def feature_encoder(model: Any, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """``model.feature_extractor`` of ``x [1, S]`` → ``[1, C_conv, T50]``, in chunks of ``chunk_frames`` output
    frames when the track is longer (see the module docstring); one pass otherwise."""
    config = model.config
    total = cnn_frames(x.shape[-1], config)
    if chunk_frames < 1:
        raise InputError(f"wav2vec2: chunk_frames must be at least 1, got {chunk_frames}")
    if total <= chunk_frames:
        return model.feature_extractor(x)
    hop, field = hop_samples(config), receptive_field(config)
    layers = list(model.feature_extractor.conv_layers)
    group = config.feat_extract_norm == "group"
    spans = [(j, min(total, j + chunk_frames)) for j in range(0, total, chunk_frames)]

    def piece(j0: int, j1: int) -> torch.Tensor:  # the samples CNN frames j0 .. j1-1 read: [1, 1, S']
        return x[:, None, j0 * hop:(j1 - 1) * hop + field]

    if group:
        # the GroupNorm after the first conv normalises each channel over the whole track: gather its
        # statistics first (exact combination of the chunks' means and variances, Chan et al.)
        first = layers[0]
        k0, s0 = int(config.conv_kernel[0]), int(config.conv_stride[0])
        frames0 = (x.shape[-1] - k0) // s0 + 1  # the first conv's frames over the whole track
        block = chunk_frames * hop // s0
        count, mean, m2 = 0, None, None
        for i0 in range(0, frames0, block):
            i1 = min(frames0, i0 + block)
            h = first.conv(x[:, None, i0 * s0:(i1 - 1) * s0 + k0])[0].float()  # [C, i1-i0]
            n_b = int(h.shape[1])
            var_b, mean_b = torch.var_mean(h, dim=1, correction=0)
            mean_b, m2_b = mean_b.double().cpu(), var_b.double().cpu() * n_b
            if mean is None:
                count, mean, m2 = n_b, mean_b, m2_b
            else:
                delta = mean_b - mean
                both = count + n_b
                mean = mean + delta * (n_b / both)
                m2 = m2 + m2_b + delta.square() * (count * n_b / both)
                count = both
            del h
        norm = first.layer_norm
        scale = (norm.weight.double().cpu() / torch.sqrt(m2 / count + norm.eps))
        shift = norm.bias.double().cpu() - mean * scale
        scale, shift = (t.to(device=x.device, dtype=x.dtype)[None, :, None] for t in (scale, shift))
    out = None
    for j0, j1 in spans:
        h = piece(j0, j1)
        if group:
            h = first.activation(first.conv(h) * scale + shift)
            rest = layers[1:]
        else:
            rest = layers
        for layer in rest:
            h = layer(h)
        if h.shape[-1] != j1 - j0:  # cannot happen for a valid conv stack
            raise RuntimeError(f"wav2vec2 chunk {j0}-{j1}: {h.shape[-1]} CNN frames, expected {j1 - j0}")
        if out is None:
            out = h.new_empty(1, h.shape[1], total)
        out[:, :, j0:j1] = h
    return out


def receptive_field(config: Any) -> int:
    size = 1
    for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        size = (size - 1) * s + k
    return size
