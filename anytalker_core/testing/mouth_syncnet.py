"""A SyncNet with designed (not trained) weights whose response is known, and clips that exercise it.

The released SyncNet weights cannot be downloaded here, so tests of the code that *uses* Sync-C (the
data filter pairing voices with faces) need a network of the real layout
(:class:`anytalker_core.metrics.syncnet.SyncNet`, saved as ``syncnet_v2.model``) whose scores mean
something. :func:`make_mouth_syncnet` sets the weights by hand so that

* the lip stream's embedding is the darkness of the mouth region of each of the 5 frames (centred
  over the window): the first 3-D convolution averages each frame's 7×7 patches, later layers pass it
  through and average, the last one reads the cells where ``syncnet_python``'s crop puts the mouth;
* the audio stream's embedding is the loudness (MFCC c0, the log energy, above a floor) of each of
  the 5 frames (centred): the top row of the MFCC map is selected with the zero padding at the border
  and passed through to the last convolution, which resamples its 4 columns to 5 frames.

So an open (dark) mouth when the audio is loud gives a small distance at offset 0 and a clear
minimum (a high Sync-C); another voice gives no minimum. This is *not* the released SyncNet: its
absolute Sync-C values have another scale. :func:`mouth_clip` animates a real photo's mouth with an
audio envelope, as a face that speaks that audio.
"""

from __future__ import annotations

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..metrics.syncnet import SyncNet

__all__ = ["make_mouth_syncnet", "mouth_clip", "loudness_envelope", "MOUTH_ROWS", "MOUTH_COLS"]

FRAMES = 5
MOUTH_ROWS = (3, 4)  # cells of the lip stream's final 6×6 map (centres at 32·q + 25 px of the 224 crop)
MOUTH_COLS = (2, 3)
_BIG = 1000.0


def _identity_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()


def _centre_head(fc: torch.nn.Sequential, scale: float) -> None:
    """``Linear → BN → ReLU → Linear`` that outputs ``scale · (x − mean(x))`` of the first 5 inputs."""
    centre = torch.eye(FRAMES) - 1.0 / FRAMES
    fc[0].weight.data.zero_(), fc[0].bias.data.zero_()
    fc[0].weight.data[:FRAMES, :FRAMES] = centre
    fc[0].weight.data[FRAMES:2 * FRAMES, :FRAMES] = -centre
    fc[3].weight.data.zero_(), fc[3].bias.data.zero_()
    for j in range(FRAMES):  # relu(x) − relu(−x) = x
        fc[3].weight.data[j, j] = scale
        fc[3].weight.data[j, FRAMES + j] = -scale


def make_mouth_syncnet(lip_scale: float = 20.0, audio_scale: float = 1.0, loudness_floor: float = 15.0,
                       embed_dim: int = 16) -> SyncNet:
    """The designed SyncNet described in the module docstring (eval mode).

    ``loudness_floor``: MFCC c0 (log frame energy on the int16 scale) below it counts as silence.
    """
    net = SyncNet(embed_dim=embed_dim)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        _identity_bn(net)
        lip = net.netcnnlip
        for t in range(FRAMES):  # darkness of frame t: 1 - mean(BGR)/255 over each 7x7 patch
            lip[0].weight[t, :, t] = -1.0 / (3 * 49 * 255)
            lip[0].bias[t] = 1.0
            lip[4].weight[t, t, 0] = 1.0 / 25
            for k in (8, 11, 14):
                lip[k].weight[t, t, 0, 1, 1] = 1.0
            cells = [(r, c) for r in MOUTH_ROWS for c in MOUTH_COLS]
            for r, c in cells:
                lip[18].weight[t, t, 0, r, c] = 1.0 / len(cells)
        aud = net.netcnnaud
        aud[0].weight[0, 0, 1, 1] = 1.0  # ch 0: MFCC value above the floor (row 0 = c0, the log energy)
        aud[0].bias[0] = -loudness_floor
        aud[0].bias[1] = 1.0  # ch 1: constant 1
        aud[4].weight[0, 0, 1, 1] = 1.0
        aud[4].weight[0, 1, 0, 1] = -_BIG  # rows below the top see the constant above them: removed
        aud[4].weight[1, 1, 1, 1] = 1.0
        for k in (8, 11, 14):
            aud[k].weight[0, 0, 1, 1] = 1.0
            aud[k].weight[1, 1, 1, 1] = 1.0
        # final map row 0 holds 4 columns centred on MFCC frames 4j+3; frame t of the window is centred on 4t+1.5
        for t in range(FRAMES):
            pos = min(max((4 * t + 1.5 - 3) / 4, 0.0), 3.0)
            j0 = int(np.floor(pos))
            j1 = min(j0 + 1, 3)
            aud[18].weight[t, 0, 0, j0] += 1.0 - (pos - j0)
            aud[18].weight[t, 0, 0, j1] += pos - j0
        _centre_head(net.netfclip, lip_scale)
        _centre_head(net.netfcaud, audio_scale)
    return net.eval()


def loudness_envelope(wave: torch.Tensor | np.ndarray, fps: float, num_frames: int, sample_rate: int = SAMPLE_RATE
                      ) -> np.ndarray:
    """RMS of ``wave`` in each video frame, scaled to 0..1 (``[num_frames]``)."""
    x = np.asarray(wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else wave, dtype=np.float64)
    step = sample_rate / fps
    rms = np.array([np.sqrt(np.mean(x[int(i * step):int((i + 1) * step)] ** 2) + 1e-12) for i in range(num_frames)])
    return np.clip(rms / max(rms.max(), 1e-9), 0.0, 1.0)


def mouth_clip(face: np.ndarray, mouth_xy: tuple[float, float], mouth_w: float, envelope: np.ndarray) -> np.ndarray:
    """``uint8 [T, H, W, 3]``: ``face`` with a dark open mouth (ellipse at ``mouth_xy``, ``mouth_w`` px wide)
    whose height follows ``envelope`` (0 = closed, 1 = wide open)."""
    import cv2

    out = np.repeat(face[None], len(envelope), axis=0).copy()
    for t, e in enumerate(envelope):
        h = int(round(mouth_w * 0.5 * e))
        if h > 0:
            cv2.ellipse(out[t], (int(mouth_xy[0]), int(mouth_xy[1])), (int(mouth_w / 2), h), 0, 0, 360,
                        (40, 10, 15), -1)
    return out
