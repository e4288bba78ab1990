"""Wan2.1 VAE: original/ComfyUI key layout -> diffusers, normalisation, shapes, first-frame condition, errors."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from anytalker_core.encoders.onednn_conv import route_convolutions_through_onednn
from anytalker_core.encoders.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    diffusers_to_wan_key,
    encode_first_frame_condition,
    load_vae,
    make_tiny_vae,
    wan_to_diffusers_key,
)
from anytalker_core.errors import CheckpointError, InputError, MissingModelError


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    return make_tiny_vae(tmp_path_factory.mktemp("vae") / "wan_2.1_vae.safetensors", seed=1)


@pytest.fixture(scope="module")
def vae(vae_file):
    return load_vae(vae_file)


def _video(t: int, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_decode_shapes(vae, frames):
    video = _video(frames)
    latent = vae.encode(video)
    assert latent.shape == (1, 16, 1 + (frames - 1) // 4, 4, 6) and latent.dtype == torch.float32
    assert torch.equal(latent, vae.encode(video))
    decoded = vae.decode(latent)
    assert decoded.shape == video.shape and decoded.dtype == torch.float32
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_key_remap_is_exact_against_diffusers(tmp_path):
    """A diffusers model exported in Wan's layout and loaded back gives bit-identical latents and frames."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(7)
    model = AutoencoderKLWan(base_dim=4, z_dim=16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # no dead branch: perturb norms and biases too
            p.add_(0.05 * torch.randn_like(p))
    nrb = model.config.num_res_blocks
    # the same convolution kernels as load_vae's model (oneDNN; tests/test_onednn_conv.py pins that change)
    route_convolutions_through_onednn(model)
    wan_state = {diffusers_to_wan_key(k, nrb): v.contiguous() for k, v in model.state_dict().items()}
    assert "encoder.downsamples.2.resample.1.weight" in wan_state and "decoder.upsamples.4.shortcut.weight" in wan_state
    path = tmp_path / "wan_2.1_vae.safetensors"
    save_file(wan_state, str(path))
    loaded = load_vae(path)
    video = _video(5, seed=3)
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        mu = model.encode(video).latent_dist.mode()
        expected = (mu - mean) * (1.0 / std)
        assert torch.equal(loaded.encode(video), expected)
        frames = model.decode(expected / (1.0 / std) + mean).sample.clamp(-1, 1)
    assert torch.equal(loaded.decode(expected), frames)


def test_key_map_matches_diffusers_conversion_script_for_the_real_vae():
    """Full-size (meta) Wan2.1 VAE: our generic map equals the hand-written table of convert_wan_to_diffusers.py."""
    from diffusers import AutoencoderKLWan

    from anytalker_core.encoders.vae import _config_from_diffusers_keys

    with torch.device("meta"):
        model = AutoencoderKLWan()
    keys = list(model.state_dict().keys())
    residual = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
                "residual.3.gamma": "norm2.gamma", "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias"}
    for key in keys:
        wan = diffusers_to_wan_key(key, 2)
        assert wan_to_diffusers_key(wan, 2) == key
        m = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", wan)
        if m:  # the script's explicit decoder grouping: 0-2|3, 4-6|7, 8-10|11, 12-14
            k, rest = int(m.group(1)), m.group(2)
            if rest in residual:
                group = {0: 0, 1: 0, 2: 0, 4: 1, 5: 1, 6: 1, 8: 2, 9: 2, 10: 2, 12: 3, 13: 3, 14: 3}[k]
                assert key == f"decoder.up_blocks.{group}.resnets.{k - 4 * group}.{residual[rest]}"
            elif rest.startswith(("resample.", "time_conv.")):
                assert key == f"decoder.up_blocks.{ {3: 0, 7: 1, 11: 2}[k] }.upsamplers.0.{rest}"
            else:
                assert k == 4 and key == f"decoder.up_blocks.1.resnets.0.conv_shortcut.{rest.split('.')[-1]}"
    wan_keys = {diffusers_to_wan_key(k, 2) for k in keys}
    for real in ("conv1.weight", "conv2.bias", "encoder.conv1.weight", "encoder.head.0.gamma", "encoder.head.2.weight",
                 "encoder.middle.1.to_qkv.weight", "decoder.middle.2.residual.6.weight",
                 "encoder.downsamples.5.time_conv.weight", "decoder.upsamples.11.resample.1.weight"):
        assert real in wan_keys
    config = _config_from_diffusers_keys(model.state_dict(), "real")
    assert config["base_dim"] == 96 and config["dim_mult"] == [1, 2, 4, 4] and config["num_res_blocks"] == 2
    assert config["temperal_downsample"] == [False, True, True] and config["z_dim"] == 16


def test_latent_statistics_are_wan21():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        config = AutoencoderKLWan().config
    assert list(WAN21_LATENTS_MEAN) == pytest.approx(config.latents_mean)
    assert list(WAN21_LATENTS_STD) == pytest.approx(config.latents_std)


def test_diffusers_folder_layout(vae, tmp_path):
    folder = make_tiny_vae(tmp_path / "Wan2.1-Diffusers" / "vae", layout="diffusers", seed=1)
    video = _video(5)
    from_folder = load_vae(folder)
    assert torch.equal(from_folder.encode(video), vae.encode(video))
    assert torch.equal(load_vae(folder.parent).encode(video), vae.encode(video))  # pipeline folder with vae/


def test_first_frame_condition(vae):
    image = _video(1)[:, :, 0]
    cond = encode_first_frame_condition(vae, image, 9)
    assert cond.shape == (1, 16, 3, 4, 6)
    manual = torch.zeros(1, 3, 9, 32, 48)
    manual[:, :, 0] = image
    assert torch.equal(cond, vae.encode(manual))
    with pytest.raises(InputError, match="4n\\+1"):
        encode_first_frame_condition(vae, image, 8)


def test_bad_inputs(vae):
    with pytest.raises(InputError, match="4n\\+1"):
        vae.encode(_video(4))
    with pytest.raises(InputError, match="multiples of 8"):
        vae.encode(_video(5, h=36))
    with pytest.raises(InputError, match="-1..1"):
        vae.encode(_video(1) * 127 + 128)
    with pytest.raises(InputError, match=r"\[B, 16, F, h, w\]"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4))


def test_wrong_files(tmp_path):
    from diffusers import AutoencoderKLWan

    from anytalker_core.encoders.text import make_tiny_text_encoder

    t5 = make_tiny_text_encoder(tmp_path / "te")
    with pytest.raises(CheckpointError) as info:
        load_vae(t5)
    assert str(t5) in str(info.value) and "T5" in str(info.value) and "wan_2.1_vae" in str(info.value)
    with pytest.raises(MissingModelError, match="models/vae"):
        load_vae(tmp_path / "wan_2.1_vae.safetensors")
    wan22 = AutoencoderKLWan(base_dim=4, z_dim=48, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    path = tmp_path / "wan2.2_vae.safetensors"
    save_file({diffusers_to_wan_key(k, 2): v.contiguous() for k, v in wan22.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="16"):
        load_vae(path)


def test_to_moves_statistics(vae):
    assert vae.to("cpu") is vae and vae.latents_mean.device == torch.device("cpu")
