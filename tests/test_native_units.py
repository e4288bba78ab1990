"""Pure parts of the native route (nodes/native) that need no ComfyUI: branch selection, text padding,
window sizes, the release-config lookup. The route itself runs in the real ComfyUI: tests/test_native_route.py."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "comfy_stub"))  # nodes/__init__ imports ComfyUI's node API
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from anytalker_core.errors import CheckpointError, InputError
from nodes.native.conditioning import pad_text
from nodes.native.nodes import window_length
from nodes.native.patches import ZERO_AUDIO, audio_enabled
from nodes.native.weights import find_released_config


def test_audio_follows_cond_or_uncond():
    # KSampler: [positive, negative] batched, one entry each -> audio for the positive only
    assert audio_enabled({"cond_or_uncond": [0, 1], "uuids": ["p", "n"]}, 2).tolist() == [True, False]
    # two entries per chunk
    assert audio_enabled({"cond_or_uncond": [1, 0], "uuids": ["n", "p"]}, 4).tolist() == [False, False, True, True]
    # the guider's text-only branch (index 2) is silenced by uuid
    opts = {"cond_or_uncond": [0, 1, 2], "uuids": ["p", "n", "t"], ZERO_AUDIO: {"t"}}
    assert audio_enabled(opts, 3).tolist() == [True, False, False]
    # a direct call without sampler information: conditional
    assert audio_enabled({}, 2).tolist() == [True, True]
    with pytest.raises(RuntimeError, match="does not split"):
        audio_enabled({"cond_or_uncond": [0, 1]}, 3)


def test_text_is_padded_with_zero_rows():
    x = torch.randn(1, 5, 8)
    out = pad_text(x, 12, "positive")
    assert out.shape == (1, 12, 8) and torch.equal(out[:, :5], x) and not out[:, 5:].any()
    with pytest.raises(InputError, match="positive: 13 text tokens"):
        pad_text(torch.randn(1, 13, 8), 12, "positive")


def test_window_length():
    assert window_length(81, 161, 0) == 81
    assert window_length(81, 161, 80) == 81
    assert window_length(81, 121, 80) == 41  # what is left, 4j+1
    with pytest.raises(InputError, match="4m\\+1"):
        window_length(80, 161, 0)
    with pytest.raises(InputError, match="nothing is left"):
        window_length(81, 161, 160)


def _release_config(path, legacy: bool, dim: int) -> None:
    path.write_text(json.dumps({"dim": dim, "num_heads": dim // 128, "legacy_audio_cross_attn": legacy}))


def test_release_config_is_the_one_that_fits(tmp_path):
    fused = {"patch_embedding.weight": torch.zeros(1536, 36, 1, 2, 2), "blocks.0.cross_attn.k_audio.weight": torch.zeros(1)}
    legacy = {"patch_embedding.weight": torch.zeros(5120, 36, 1, 2, 2)}
    _release_config(tmp_path / "config_af2v_1_3B.json", legacy=False, dim=1536)
    _release_config(tmp_path / "config_af2v_14B.json", legacy=True, dim=5120)
    assert find_released_config(tmp_path / "1_3B-single-v1.pth", fused).name == "config_af2v_1_3B.json"
    assert find_released_config(tmp_path / "14B-multi-v1.pth", legacy).name == "config_af2v_14B.json"
    _release_config(tmp_path / "config_af2v_1_3B_copy.json", legacy=False, dim=1536)
    with pytest.raises(CheckpointError, match="several configs"):
        find_released_config(tmp_path / "1_3B-single-v1.pth", fused)
    assert find_released_config(tmp_path / "sub" / "x.pth", fused) is None
