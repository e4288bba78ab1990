"""wav2vec2 loading (HF folder, single ComfyUI-style file, key variants) and the feature path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from anytalker_core.audio import wav2vec_cnn
from anytalker_core.audio.wav2vec import (
    CHUNKED_TOLERANCE,
    CNN_CHUNK_FRAMES,
    WindowedFeatures,
    infer_wav2vec_config,
    load_wav2vec,
    normalize_state_dict,
    normalize_waveform,
    video_frames_for_samples,
    window_features,
)
from anytalker_core.errors import CheckpointError, InputError, MissingModelError
from anytalker_core.testing.speech import espeak_available, synthesize_speech
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


# ----------------------------------------------------------------------------- long tracks: chunked CNN


needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for real speech")


@pytest.fixture(scope="module")
def sentence() -> torch.Tensor:
    return synthesize_speech("The quick brown fox jumps over the lazy dog, twice.", voice="en-us")  # ~3 s


@needs_espeak
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_chunked_feature_encoder_matches_one_pass_on_speech(tmp_path, sentence, norm):
    """Chunks of 40 CNN frames (0.8 s, the last one partial) give the one-pass features within
    CHUNKED_TOLERANCE; the group variant only because its GroupNorm statistics are the whole track's."""
    enc = load_wav2vec(make_tiny_wav2vec(tmp_path / norm, feat_extract_norm=norm))
    values = enc.normalize(sentence)
    frames = video_frames_for_samples(values.numel(), 24)
    assert wav2vec_cnn.cnn_frames(values.numel(), enc.config) % 40  # a partial last chunk
    one = enc.encode(values, frames)  # ~3 s: one pass (the path every clip took before chunking)
    chunked = enc.encode(values, frames, chunk_frames=40)
    scale = float(one.abs().max())
    assert float((chunked - one).abs().max()) <= CHUNKED_TOLERANCE * scale
    x = values[None]
    with torch.no_grad():
        cnn = enc.model.feature_extractor(x)
        assert float((wav2vec_cnn.feature_encoder(enc.model, x, 40) - cnn).abs().max()) <= \
            CHUNKED_TOLERANCE * float(cnn.abs().max())
        if norm == "group":  # chunks normalised on their own statistics are far off: the test can tell
            hop, field = wav2vec_cnn.hop_samples(enc.config), wav2vec_cnn.receptive_field(enc.config)
            naive = torch.cat([enc.model.feature_extractor(x[:, j * hop:(j + 39) * hop + field])
                               for j in range(0, cnn.shape[-1] - 40, 40)], dim=-1)
            assert float((naive - cnn[..., :naive.shape[-1]]).abs().max()) > 100 * CHUNKED_TOLERANCE * \
                float(cnn.abs().max())


def test_short_tracks_take_the_one_pass_path(tmp_path, noise, monkeypatch):
    """Up to CNN_CHUNK_FRAMES (10 s) the CNN runs once, bit for bit as before; a one-window clip encodes at
    most 2 × 81 frames (pad mode's rounding up), which is under it."""
    enc = load_wav2vec(make_tiny_wav2vec(tmp_path / "m"))
    assert wav2vec_cnn.cnn_frames(int(2 * 81 / 24 * 16000), enc.config) <= CNN_CHUNK_FRAMES
    calls = []
    forward = enc.model.feature_extractor.forward
    monkeypatch.setattr(enc.model.feature_extractor, "forward", lambda x: calls.append(x.shape) or forward(x))
    values = enc.normalize(noise)
    one = enc.encode(values, 30)
    assert calls == [(1, noise.numel())]
    torch.testing.assert_close(enc.encode(values, 30, keep=12), one[:12], atol=0, rtol=0)


def test_windowed_features_equal_the_windowed_stack():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 2, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    # person 1: frames 0..6 of a 9-frame encoding (its windows read frames 7, 8); person 2: a turn at 5..8
    stored = WindowedFeatures.on_timeline([[(0, a, 7)], [(5, b, 4)]], num_frames=10)
    expected = torch.zeros(2, 10, 5, 2, 3)
    expected[0, :7] = window_features(a)[:7]
    expected[1, 5:9] = window_features(b)
    assert stored.shape == expected.shape and stored.rows.shape == (1 + 9 + 4, 2, 3)
    torch.testing.assert_close(stored.dense(), expected, atol=0, rtol=0)
    torch.testing.assert_close(stored.span(3, 8), expected[:, 3:8], atol=0, rtol=0)
    torch.testing.assert_close(stored.cut(4, 10).span(1, 3), expected[:, 5:7], atol=0, rtol=0)
    torch.testing.assert_close(WindowedFeatures.from_dense(expected).span(2, 9), expected[:, 2:9], atol=0, rtol=0)
    with pytest.raises(InputError, match=r"\[N, F, 5, L, C\]"):
        WindowedFeatures.from_dense(a)
