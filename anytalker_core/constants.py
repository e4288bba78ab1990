"""The numbers the released models fix, in one place (every module imports them from here).

They come from how Wan2.1 / AnyTalker were trained (see /work/shared/REFERENCE.md): change one and the
released checkpoints stop matching.
"""

from __future__ import annotations

#: audio: wav2vec2-base-960h reads 16 kHz mono
SAMPLE_RATE = 16000

#: video frame rate the audio features are aligned to (and the model was trained at)
FPS = 24

#: Wan2.1 VAE: video frames per latent frame after the first (a clip has 4n+1 frames, n+1 latent frames)
VAE_TEMPORAL_STRIDE = 4
#: Wan2.1 VAE: pixels per latent cell, each side
VAE_SPATIAL_STRIDE = 8
#: Wan2.1 VAE latent channels
LATENT_CHANNELS = 16
#: DiT patch: latent cells per token (time, height, width)
PATCH_SIZE = (1, 2, 2)
#: video sides are multiples of this (the reference snaps to 32; the grid itself is VAE stride x patch = 16)
SIZE_MULTIPLE = 32

#: the default (and training) video area: 832x480 pixels
MAX_AREA = 832 * 480

#: speakers (identities) one clip supports
MAX_SPEAKERS = 8

#: the training clip length in frames (3.4 s at 24 fps): the default long-clip window
WINDOW_FRAMES = 81

__all__ = ["SAMPLE_RATE", "FPS", "VAE_TEMPORAL_STRIDE", "VAE_SPATIAL_STRIDE", "LATENT_CHANNELS", "PATCH_SIZE",
           "SIZE_MULTIPLE", "MAX_AREA", "MAX_SPEAKERS", "WINDOW_FRAMES"]
