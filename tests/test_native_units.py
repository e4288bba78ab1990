"""Pure parts of the native route (nodes/native) that need no ComfyUI: branch selection, text padding,
the pinned-latent mask of long clips, the release-config lookup. The route itself runs in the real ComfyUI: tests/test_native_route.py."""

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
from nodes.native.long_clip import NativeSampling, known_latent_inputs
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


def test_known_latents_become_comfyui_noise_mask_and_latent_image():
    """Long clips: the core's pinned motion latents as ComfyUI's inpainting inputs (0 = keep in the mask)."""
    from comfy.latent_formats import Wan21

    from anytalker_core.generation.windows import KnownLatents

    values = torch.randn(1, 16, 2, 4, 6)
    latent, mask = known_latent_inputs(KnownLatents(values, first=0), (1, 16, 5, 4, 6))
    assert mask.shape == (1, 1, 5, 4, 6)
    assert not mask[:, :, :2].any() and mask[:, :, 2:].eq(1).all()
    assert torch.allclose(Wan21().process_in(latent[:, :, :2]), values, atol=1e-5)  # raw scale in, normalised back
    assert not latent[:, :, 2:].any()
    later, mask = known_latent_inputs(KnownLatents(values[:, :, :1], first=1), (1, 16, 5, 4, 6))  # re-anchored
    assert mask[0, 0, :, 0, 0].tolist() == [1, 0, 1, 1, 1] and not later[:, :, 0].any()
    assert known_latent_inputs(None, (1, 16, 5, 4, 6))[1] is None


def test_separate_guidance_only_when_the_scales_differ():
    assert not NativeSampling("euler", "simple", 4.5).separate
    assert not NativeSampling("euler", "simple", 4.5, audio_cfg=4.5).separate
    assert NativeSampling("euler", "simple", 4.5, audio_cfg=6.0).separate


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
