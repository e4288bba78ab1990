"""wav2vec2 loading (HF folder, single ComfyUI-style file, key variants) and the feature path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from anytalker_core.audio.wav2vec import (
    infer_wav2vec_config,
    load_wav2vec,
    normalize_state_dict,
    normalize_waveform,
    video_frames_for_samples,
    window_features,
)
from anytalker_core.errors import CheckpointError, InputError, MissingModelError
from anytalker_core.testing.tiny_wav2vec import make_tiny_wav2vec


def _save(sd, path):
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return 0.1 * torch.randn(20000, generator=g)


def test_normalize_waveform_population_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = normalize_waveform(x)
    expected = (x - 2.5) / torch.sqrt(torch.tensor(1.25 + 1e-7))  # ddof 0: var = 1.25
    assert torch.allclose(y, expected, atol=1e-7)
    assert y.dtype == torch.float32
    z = normalize_waveform(torch.zeros(10))  # silence: 0 / sqrt(1e-7) stays finite
    assert torch.equal(z, torch.zeros(10))


def test_window_features_clamps_at_edges():
    h = torch.arange(4, dtype=torch.float32)[:, None, None].expand(4, 2, 3)  # [T=4, L=2, C=3]
    w = window_features(h)
    assert w.shape == (4, 5, 2, 3)
    assert w[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]


def test_video_frames_for_samples():
    assert video_frames_for_samples(46537, 24) == 70
    assert video_frames_for_samples(16000, 24) == 24
    assert video_frames_for_samples(16001, 25) == 26


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_encode_matches_transformers_forward(tmp_path, noise, norm):
    """With T = the CNN's own length, interpolation is the identity: every layer output must equal
    transformers' own forward (layer-norm-first models: last layer after encoder.layer_norm)."""
    enc = load_wav2vec(make_tiny_wav2vec(tmp_path / "m", feat_extract_norm=norm, num_layers=3))
    assert enc.config.do_stable_layer_norm == (norm == "layer")
    values = enc.normalize(noise)
    with torch.no_grad():
        ref = enc.model(values[None], output_hidden_states=True)
    t50 = enc.model.feature_extractor(values[None]).shape[-1]
    hidden = enc.encode(values, t50)
    assert hidden.shape == (t50, 3, enc.hidden_size)
    torch.testing.assert_close(hidden[:, -1], ref.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    for i in range(2):  # intermediate layers: the raw layer outputs
        torch.testing.assert_close(hidden[:, i], ref.hidden_states[i + 1][0], atol=1e-5, rtol=1e-5)


def test_features_shape_and_interpolation(tmp_path, noise):
    enc = load_wav2vec(make_tiny_wav2vec(tmp_path / "m"))
    feats = enc.features(noise, fps=24)
    t = video_frames_for_samples(noise.numel(), 24)
    assert feats.shape == (t, 5, 2, 64) and feats.dtype == torch.float32
    # the window's centre row is the frame itself, row 0 its clamped t-2 neighbour
    assert torch.equal(feats[5, 0], feats[3, 2]) and torch.equal(feats[0, 0], feats[0, 2])
    other = enc.features(noise, num_frames=40)
    assert other.shape[0] == 40
    with pytest.raises(InputError, match="too short for wav2vec2"):
        enc.features(noise[:300], num_frames=5)


def test_single_file_inferred_config_matches_folder(tmp_path, noise):
    """ComfyUI-style single file (prefix 'wav2vec2.', no config) loads to the same model."""
    folder = make_tiny_wav2vec(tmp_path / "hf", hidden_size=128, num_heads=2, seed=7)
    single = make_tiny_wav2vec(tmp_path / "audio_encoders" / "w2v.safetensors", hidden_size=128, num_heads=2, seed=7)
    assert all(k.startswith("wav2vec2.") for k in load_file(str(single)))
    a = load_wav2vec(folder)
    b = load_wav2vec(single)
    assert b.config.num_attention_heads == 2 and b.config.num_hidden_layers == 2
    assert b.config.feat_extract_norm == "group" and not b.config.do_stable_layer_norm
    assert b.config.num_conv_pos_embeddings == 16 and b.config.num_conv_pos_embedding_groups == 16
    torch.testing.assert_close(a.features(noise), b.features(noise), atol=0, rtol=0)


def test_single_file_layer_norm_model_is_inferred_stable(tmp_path, noise):
    path = make_tiny_wav2vec(tmp_path / "large.safetensors", feat_extract_norm="layer", hidden_size=128,
                             num_heads=2, seed=2)
    enc = load_wav2vec(path)
    assert enc.config.feat_extract_norm == "layer" and enc.config.do_stable_layer_norm and enc.config.conv_bias
    ref = load_wav2vec(make_tiny_wav2vec(tmp_path / "large_hf", feat_extract_norm="layer", hidden_size=128,
                                         num_heads=2, seed=2))
    torch.testing.assert_close(enc.features(noise), ref.features(noise), atol=0, rtol=0)


def test_single_file_embedded_config_and_key_variants(tmp_path, noise):
    # hidden 32 with 2 heads cannot be inferred from shapes: the embedded config says it
    path = make_tiny_wav2vec(tmp_path / "tiny.safetensors", hidden_size=32, num_heads=2, embed_config=True, seed=4)
    enc = load_wav2vec(path)
    assert enc.config.num_attention_heads == 2
    expected = enc.features(noise)

    sd = load_file(str(path))
    bare = {k.removeprefix("wav2vec2."): v for k, v in sd.items()}
    # old weight-norm names, other prefix, extra CTC head: all accepted
    old = {}
    for k, v in bare.items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        k = k.replace("parametrizations.weight.original1", "weight_v")
        old["model." + k] = v
    old["lm_head.weight"] = torch.zeros(32, 32)
    variant = tmp_path / "variant.safetensors"
    save_file(old, str(variant))
    with pytest.raises(CheckpointError, match="heads cannot be inferred"):
        load_wav2vec(variant)
    got = load_wav2vec(variant, num_heads=2).features(noise)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)

    # weight norm folded into a plain positional-conv weight
    pc = "encoder.pos_conv_embed.conv.parametrizations.weight."
    g, v = bare[pc + "original0"], bare[pc + "original1"]
    folded = {k: t for k, t in bare.items() if not k.startswith(pc)}
    folded["encoder.pos_conv_embed.conv.weight"] = g * v / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True)
    folded_enc = load_wav2vec(_save(folded, tmp_path / "folded.safetensors"), num_heads=2)
    torch.testing.assert_close(folded_enc.features(noise), expected, atol=1e-5, rtol=1e-5)

    # a .bin (torch.save) file without prefix
    bin_path = tmp_path / "w.bin"
    torch.save(bare, bin_path)
    torch.testing.assert_close(load_wav2vec(bin_path, num_heads=2).features(noise), expected, atol=0, rtol=0)


def test_normalize_state_dict_and_infer_config_errors():
    with pytest.raises(CheckpointError, match="not a wav2vec2 checkpoint"):
        normalize_state_dict({"blocks.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="conv_layers"):
        infer_wav2vec_config({"feature_projection.projection.weight": torch.zeros(4, 4)})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_and_device_arguments(tmp_path, noise, dtype):
    enc = load_wav2vec(make_tiny_wav2vec(tmp_path / "m"), device="cpu", dtype=dtype)
    assert enc.dtype == dtype and enc.device.type == "cpu"
    feats = enc.features(noise)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    ref = load_wav2vec(make_tiny_wav2vec(tmp_path / "m")).features(noise)
    err = (feats - ref).abs()
    assert err.mean() < 0.02 * ref.abs().mean() and err.max() < 0.1 * ref.abs().max()


def test_load_errors(tmp_path):
    with pytest.raises(MissingModelError, match="audio_encoders"):
        load_wav2vec(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MissingModelError, match="no config.json"):
        load_wav2vec(tmp_path / "empty_dir")
    folder = make_tiny_wav2vec(tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingModelError, match="no model.safetensors"):
        load_wav2vec(folder)
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.attn.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="not a wav2vec2 checkpoint"):
        load_wav2vec(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors': not a PyTorch checkpoint or safetensors file"):
        load_wav2vec(junk)
    # a config that does not fit the weights
    hf = make_tiny_wav2vec(tmp_path / "hf2")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["num_hidden_layers"] = 5
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tensors missing"):
        load_wav2vec(hf)
