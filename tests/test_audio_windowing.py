"""One audio-windowing rule: training's batched windows are inference's per-clip windows."""

import torch

from anytalker_core.audio.windowed import window_features
from train.data import window_audio


def test_training_windows_equal_inference_windows():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 9, 4, 6)  # [identities, batch, T, L, C]
    batched = window_audio(feats, window=5)
    assert batched.shape == (2, 3, 9, 5, 4, 6)
    for i in range(2):
        for b in range(3):
            assert torch.equal(batched[i, b], window_features(feats[i, b], radius=2))
    # the rule itself: frame t sees t-2 .. t+2, clamped at the ends
    one = window_features(torch.arange(4.0).reshape(4, 1, 1), radius=2)[..., 0, 0]
    assert one.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
