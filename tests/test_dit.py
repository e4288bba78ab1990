"""The AnyTalker DiT: fixture parity, AFCA semantics, dtypes, checkpoints and their errors."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from unittest import mock

import pytest
import torch

from anytalker_core.model.afca import dense_fused_afca, fused_afca
from anytalker_core.model.attention import check_attention_backend
from anytalker_core.model.checkpoint import convert_checkpoint, load_dit, read_state_dict, save_dit
from anytalker_core.model.prepared import KV
from anytalker_core.model.speaker import Speaker
from anytalker_core.model.config import AnyTalkerConfig
from anytalker_core.model.dit import AnyTalkerDiT
from anytalker_core.errors import CheckpointError, InputError
from anytalker_core.parity import run_fixture


def make_inputs(cfg: AnyTalkerConfig, n: int, frames: int = 3, h: int = 4, w: int = 6, seed: int = 0,
                batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    video_frames = 4 * (frames - 1) + 1

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    x = rnd(batch, 16, frames, h, w)
    y = rnd(batch, 20, frames, h, w)
    context = rnd(batch, 7, cfg.text_dim)
    clip = rnd(batch, 257, cfg.clip_dim)
    speakers = []
    for i in range(n):
        mask = torch.zeros(batch, frames, h // 2, w // 2)
        mask[..., :, i % (w // 2)] = 1.0  # each identity owns one token column
        speakers.append(Speaker(audio=rnd(batch, video_frames, cfg.audio_window, cfg.audio_layers,
                                          cfg.audio_channels),
                                face_clip=rnd(batch, 257, cfg.clip_dim), token_mask=mask))
    return x, torch.tensor([700]), context, clip, y, speakers


@pytest.fixture(params=["fused", "legacy"])
def model(request):
    torch.manual_seed(0)
    return AnyTalkerDiT(AnyTalkerConfig.tiny(request.param)).eval()


# ---------------------------------------------------------------- parity with the reference
@pytest.mark.parametrize("name", ["dit_af", "dit_legacy"])
def test_dit_fixtures_pass(fixtures, name):
    results = run_fixture(fixtures / f"{name}.json")
    names = {r.name for r in results}
    assert {"out_n1", "out_n2", "out_n2_zero_audio", "dbg_block0_out"} <= names
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed)


def test_verify_fixture_command(fixtures):
    files = [str(fixtures / f) for f in ("dit_af.json", "dit_legacy.json", "dit_inputs.json")]
    proc = subprocess.run([sys.executable, "-m", "anytalker_core.cli", "verify-fixture", *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  out_n2 " in proc.stdout and "0 failed" in proc.stdout


def test_verify_fixture_reports_failure(fixtures, tmp_path):
    """A fixture whose golden output was altered must FAIL with a non-zero exit code."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    for f in ("dit_af.pth", "dit_af.config.json", "dit_inputs.json", "dit_inputs.safetensors"):
        shutil.copy(fixtures / f, tmp_path / f)
    meta = json.loads((fixtures / "dit_af.json").read_text())
    (tmp_path / "dit_af.json").write_text(json.dumps(meta))
    tensors = load_file(str(fixtures / "dit_af.safetensors"))
    tensors["out_n2"] = tensors["out_n2"] + 1e-3
    save_file(tensors, str(tmp_path / "dit_af.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "anytalker_core.cli", "verify-fixture",
                           str(tmp_path / "dit_af.json")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "FAIL  out_n2 " in proc.stdout


# ---------------------------------------------------------------- AFCA semantics
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_any_number_of_identities(model, n):
    inputs = make_inputs(model.config, n)
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == inputs[0].shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_zero_identities_is_plain_i2v(model):
    """With N = 0 the AFCA weights play no part."""
    inputs = make_inputs(model.config, 0)
    with torch.no_grad():
        before = model(*inputs)
        for name, p in model.named_parameters():
            if any(k in name for k in ("k_audio", "v_audio", "k_face", "audio_cross_attn", "audio_emb",
                                       "audio_proj", "audio_ref_emb", "norm_x")):
                p.add_(1.0)
        after = model(*inputs)
    assert torch.equal(before, after)


def test_identity_permutation_invariance(model):
    x, t, ctx, clip, y, speakers = make_inputs(model.config, 3)
    with torch.no_grad():
        a = model(x, t, ctx, clip, y, speakers)
        b = model(x, t, ctx, clip, y, [speakers[2], speakers[0], speakers[1]])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_zero_mask_removes_identity(model):
    x, t, ctx, clip, y, speakers = make_inputs(model.config, 2)
    silenced = Speaker(speakers[1].audio, speakers[1].face_clip, torch.zeros_like(speakers[1].token_mask))
    with torch.no_grad():
        with_zero = model(x, t, ctx, clip, y, [speakers[0], silenced])
        alone = model(x, t, ctx, clip, y, [speakers[0]])
        both = model(x, t, ctx, clip, y, speakers)
    torch.testing.assert_close(with_zero, alone, atol=1e-6, rtol=1e-6)
    assert (both - alone).abs().max() > 1e-4  # the second identity does matter when its mask is on


def test_audio_drives_output(model):
    x, t, ctx, clip, y, speakers = make_inputs(model.config, 1)
    with torch.no_grad():
        a = model(x, t, ctx, clip, y, speakers)
        b = model(x, t, ctx, clip, y, [speakers[0].without_audio()])
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_frame_local_equals_dense_mask(frames):
    g = torch.Generator().manual_seed(1)
    b, s_f, heads, d, tok = 2, 6, 2, 8, 32
    t_video = 4 * (frames - 1) + 1
    q = torch.randn(b, frames * s_f, heads, d, generator=g)
    fk, fv = torch.randn(2, b, 257, heads, d, generator=g)
    ak, av = torch.randn(2, b, t_video, tok, heads, d, generator=g)
    face, audio = KV(fk, fv), KV(ak, av)
    torch.testing.assert_close(fused_afca(q, face, audio, frames), dense_fused_afca(q, face, audio, frames),
                               atol=1e-5, rtol=1e-5)
    # audio equal in every video frame (zero audio) passed once, T = 1: the same as all T frames
    one = KV(ak[:, :1], av[:, :1])
    every = KV(ak[:, :1].expand_as(ak).contiguous(), av[:, :1].expand_as(av).contiguous())
    torch.testing.assert_close(fused_afca(q, face, one, frames), dense_fused_afca(q, face, every, frames),
                               atol=1e-5, rtol=1e-5)


@contextlib.contextmanager
def dense_afca():
    """The whole model with the reference's dense-mask AFCA in place of the frame-local one (test only)."""
    import anytalker_core.model.dit as dit_module
    from anytalker_core.model import afca

    with mock.patch.object(dit_module, "fused_afca_sum", functools.partial(afca.fused_afca_sum,
                                                                           impl=dense_fused_afca)):
        yield


def test_dense_reference_mode_gives_same_model_output():
    torch.manual_seed(0)
    model = AnyTalkerDiT(AnyTalkerConfig.tiny("fused")).eval()
    inputs = make_inputs(model.config, 2, frames=4)
    with torch.no_grad():
        local = model(*inputs)
        with dense_afca():
            dense = model(*inputs)
    torch.testing.assert_close(local, dense, atol=1e-5, rtol=1e-5)


def test_batch_matches_single(model):
    inputs = make_inputs(model.config, 2, batch=2)
    x, t, ctx, clip, y, speakers = inputs
    with torch.no_grad():
        both = model(*inputs)
        first = model(x[:1], t, ctx[:1], clip[:1], y[:1],
                      [Speaker(s.audio[:1], s.face_clip[:1], s.token_mask[:1]) for s in speakers])
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_fp32(model, dtype):
    inputs = make_inputs(model.config, 2)
    with torch.no_grad():
        ref = model(*inputs)
        out = model.to(dtype)(*inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() / ref.abs().max() < 0.05


def test_fixture_model_in_bf16(fixtures):
    from safetensors.torch import load_file

    inp = load_file(str(fixtures / "dit_inputs.safetensors"))
    expected = load_file(str(fixtures / "dit_af.safetensors"))["out_n2"]
    model = load_dit(fixtures / "dit_af.pth", fixtures / "dit_af.config.json", dtype=torch.bfloat16)
    speakers = [Speaker(inp["audio_features"][i][None], inp["face_clip_tokens"][i],
                        inp["face_token_mask_grid"][i][None]) for i in range(2)]
    with torch.no_grad():
        out = model(inp["x"][None], inp["t"], inp["context"][None], inp["clip_fea"], inp["y"][None], speakers)[0]
    assert (out - expected).abs().max() < 0.05 * expected.abs().max()


def test_attention_backend_errors(model):
    with pytest.raises(InputError, match="unknown"):
        check_attention_backend("xformers")
    with pytest.raises(InputError, match="not installed"):
        model.attention_backend = "flash_attn"
    assert model.attention_backend == "sdpa"  # unchanged by the refused setting
    with pytest.raises(InputError, match="not installed"):
        load_dit("never-read.pth", attention="sage")  # refused before any file is read


def test_attention_backend_belongs_to_the_model(monkeypatch):
    """Each loaded model runs with its own backend; nothing process-wide is set (no setter exists)."""
    from anytalker_core.model import attention as attn

    assert not hasattr(attn, "set_attention_backend")
    fake = object()
    monkeypatch.setattr(attn, "BACKENDS", (*attn.BACKENDS, "fake"))
    monkeypatch.setattr(attn, "available_backends", lambda: ["sdpa", "fake"])
    monkeypatch.setattr(attn, "_make_kernel", lambda name: fake if name == "fake" else None)
    torch.manual_seed(0)
    a, b = AnyTalkerDiT(AnyTalkerConfig.tiny("fused")).eval(), AnyTalkerDiT(AnyTalkerConfig.tiny("fused")).eval()
    a.attention_backend = "fake"
    seen = []
    for m in (a, b):
        m.blocks[0].register_forward_pre_hook(lambda mod, args, m=m: seen.append((m, attn._kernel.get())))
    inputs = make_inputs(a.config, 1)
    with torch.no_grad():
        a(*inputs)
        b(*inputs)
    assert seen == [(a, fake), (b, None)] and attn._kernel.get() is None


# ---------------------------------------------------------------- checkpoints
def test_save_load_round_trip(model, tmp_path):
    path = save_dit(model, tmp_path / "m.safetensors")
    loaded = load_dit(path)
    assert loaded.config == model.config
    inputs = make_inputs(model.config, 2)
    with torch.no_grad():
        assert torch.equal(model(*inputs), loaded(*inputs))
    # safetensors keeps tensors at 8-byte offsets, where MKL's one-row kernels round differently
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()] if t.numel())


def test_released_pth_format_and_conversion(model, tmp_path):
    import json

    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    (tmp_path / "m.config.json").write_text(json.dumps(model.config.to_dict()))
    inputs = make_inputs(model.config, 1)
    with torch.no_grad():
        ref = model(*inputs)
        assert torch.equal(load_dit(tmp_path / "m.pth")(*inputs), ref)
    convert_checkpoint(tmp_path / "m.pth", tmp_path / "m.safetensors", dtype=torch.bfloat16)
    sd, hints = read_state_dict(tmp_path / "m.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert hints["afca"] == model.config.afca
    half = load_dit(tmp_path / "m.safetensors", dtype=torch.bfloat16)
    with torch.no_grad():
        assert (half(*inputs) - ref).abs().max() < 0.05 * ref.abs().max()


def test_convert_command(fixtures, tmp_path):
    out = tmp_path / "af.safetensors"
    proc = subprocess.run([sys.executable, "-m", "anytalker_core.cli", "convert", str(fixtures / "dit_af.pth"),
                           str(out), "--dtype", "fp16", "--config", str(fixtures / "dit_af.config.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert load_dit(out).config.num_heads == 2  # the config travelled in the metadata


@pytest.mark.parametrize("afca", ["fused", "legacy"])
def test_config_inferred_from_shapes(tmp_path, afca):
    """No config JSON: every size comes from the weights (heads from Wan's 128-wide heads)."""
    cfg = AnyTalkerConfig.tiny(afca, dim=256, num_heads=2, ffn_dim=64, audio_layers=12, audio_channels=768,
                               audio_intermediate_dim=4, text_dim=24, clip_dim=40)
    torch.save({"model": AnyTalkerDiT(cfg).state_dict()}, tmp_path / "noconfig.pth")
    assert load_dit(tmp_path / "noconfig.pth").config == cfg


def test_config_inference_needs_json_for_unusual_audio(tmp_path):
    cfg = AnyTalkerConfig.tiny("legacy", dim=256, num_heads=2, ffn_dim=64)  # 2 x 32 wav2vec2 features
    torch.save({"model": AnyTalkerDiT(cfg).state_dict()}, tmp_path / "noconfig.pth")
    with pytest.raises(CheckpointError, match="audio_layers/audio_channels"):
        load_dit(tmp_path / "noconfig.pth")


def test_config_contradicting_weights(model, tmp_path):
    import json

    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    bad = dict(model.config.to_dict(), dim=model.config.dim * 2)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="config does not match the weights.*dim"):
        load_dit(tmp_path / "m.pth", config_path=tmp_path / "bad.json")


class NotATensor:
    pass


@pytest.fixture
def fused_sd():
    torch.manual_seed(0)
    return AnyTalkerDiT(AnyTalkerConfig.tiny("fused")).state_dict()


def test_error_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth': no such file"):
        load_dit(tmp_path / "nope.pth")


def test_error_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="notes.pth': not a PyTorch checkpoint"):
        load_dit(p)


def test_error_truncated_pth(fused_sd, tmp_path):
    p = tmp_path / "cut.pth"
    torch.save({"model": fused_sd}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth'.*truncated or corrupt"):
        load_dit(p)


def test_error_truncated_safetensors(model, tmp_path):
    p = save_dit(model, tmp_path / "cut.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors'.*truncated or corrupt"):
        load_dit(p)


def test_error_plain_wan_without_afca(fused_sd, tmp_path):
    plain = {k: v for k, v in fused_sd.items()
             if not any(s in k for s in ("k_audio", "v_audio", "k_face", "v_face", "audio_emb", "audio_ref_emb"))}
    torch.save({"model": plain}, tmp_path / "wan.pth")
    with pytest.raises(CheckpointError, match="plain Wan2.1 model without AnyTalker's Audio-Face Cross Attention"):
        load_dit(tmp_path / "wan.pth")


def test_error_missing_and_unknown_keys_listed(fused_sd, tmp_path):
    import json

    sd = dict(fused_sd)
    del sd["blocks.1.cross_attn.k_face.weight"]
    sd["blocks.0.extra_adapter.weight"] = torch.zeros(2)
    torch.save({"model": sd}, tmp_path / "odd.pth")
    (tmp_path / "odd.config.json").write_text(json.dumps(AnyTalkerConfig.tiny("fused").to_dict()))
    with pytest.raises(CheckpointError) as err:
        load_dit(tmp_path / "odd.pth")
    msg = str(err.value)
    assert "missing keys: blocks.1.cross_attn.k_face.weight" in msg
    assert "unexpected keys: blocks.0.extra_adapter.weight" in msg


def test_error_pickle_with_objects(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "extra": NotATensor()}, tmp_path / "obj.pth")
    with pytest.raises(CheckpointError, match="Python objects other than tensors"):
        load_dit(tmp_path / "obj.pth")


def test_error_wrong_audio_length(model):
    x, t, ctx, clip, y, speakers = make_inputs(model.config, 1)
    short = speakers[0].with_audio(speakers[0].audio[:, :-1])
    with pytest.raises(InputError, match="speaker 1: audio must be"):
        model(x, t, ctx, clip, y, [short])


def test_error_wrong_mask_grid(model):
    x, t, ctx, clip, y, speakers = make_inputs(model.config, 1)
    bad = Speaker(speakers[0].audio, speakers[0].face_clip, speakers[0].token_mask[..., :1])
    with pytest.raises(InputError, match="token_mask must be"):
        model(x, t, ctx, clip, y, [bad])


@pytest.mark.parametrize("afca", ["fused", "legacy"])
def test_verify_fixture_other_sizes(tmp_path, afca):
    """The runner reads every size from the fixture: other dims, N = 3, 5 latent frames, another grid."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(3)
    cfg = AnyTalkerConfig.tiny(afca, dim=48, num_heads=3, audio_layers=3, audio_channels=16, text_dim=40,
                               clip_dim=24)
    model = AnyTalkerDiT(cfg).eval()
    frames, h, w, n = 5, 6, 8, 3
    x, t, ctx, clip, y, speakers = make_inputs(cfg, n, frames=frames, h=h, w=w, seed=5)
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    reference_config = {  # WanModel.__init__ keys, as the reference writes them: no wav2vec2 sizes
        "model_type": "a2v_af", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers, "in_dim": 36, "out_dim": 16, "text_dim": cfg.text_dim, "freq_dim": 256,
        "text_len": 512, "eps": 1e-6, "qk_norm": True, "cross_attn_norm": True, "patch_size": [1, 2, 2],
        "legacy_audio_cross_attn": afca == "legacy", "audio_window": 5,
        "intermediate_dim": cfg.audio_intermediate_dim, "audio_output_dim": cfg.audio_output_dim,
        "context_tokens": 32, "vae_scale": 4}
    (tmp_path / "m.config.json").write_text(json.dumps(reference_config))
    inputs = {
        "x": x[0], "t": t, "context": ctx[0], "clip_fea": clip, "y": y[0],
        "audio_features": torch.stack([s.audio[0] for s in speakers]),
        "face_clip_tokens": torch.stack([s.face_clip for s in speakers]),
        "face_token_mask_grid": torch.stack([s.token_mask[0] for s in speakers]),
    }
    save_file(inputs, str(tmp_path / "in.safetensors"))
    (tmp_path / "in.json").write_text(json.dumps({"group": "dit_inputs", "file": "in.safetensors"}))
    outputs = {}
    with torch.no_grad():
        outputs[f"out_n{n}"] = model(x, t, ctx, clip, y, speakers)[0]
        outputs[f"out_n{n}_zero_audio"] = model(x, t, ctx, clip, y, [s.without_audio() for s in speakers])[0]
        outputs["out_n1"] = model(x, t, ctx, clip, y, speakers[:1])[0]
    save_file(outputs, str(tmp_path / "out.safetensors"))
    meta = {"group": "dit_af" if afca == "fused" else "dit_legacy", "file": "out.safetensors",
            "inputs": "in.safetensors", "checkpoint": {"file": "m.pth", "config": "m.config.json"}}
    (tmp_path / "out.json").write_text(json.dumps(meta))
    results = run_fixture(tmp_path / "out.json")
    assert sorted(r.name for r in results) == sorted(outputs)
    assert all(r.passed for r in results), [r.line() for r in results]


# ---------------------------------------------------------------- fp8 weight storage
def _block_weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.blocks.parameters())


def test_fp8_blocks_halve_memory_and_stay_close(model, tmp_path):
    inputs = make_inputs(model.config, 2)
    path = save_dit(model, tmp_path / "m.safetensors")
    bf16 = load_dit(path, dtype=torch.bfloat16)
    fp8 = load_dit(path, dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
    linear_weights = [m.weight for m in fp8.blocks.modules() if hasattr(m, "scale")]
    assert linear_weights and all(w.dtype == torch.float8_e4m3fn for w in linear_weights)
    assert fp8.patch_embedding.weight.dtype == torch.bfloat16  # only block linears are stored in fp8
    assert _block_weight_bytes(fp8) < 0.6 * _block_weight_bytes(bf16)
    with torch.no_grad():
        ref = model(*inputs)
        out = fp8(*inputs)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() / ref.abs().max() < 0.1
    fp8.to("cpu")  # a device move keeps the fp8 storage
    assert all(w.dtype == torch.float8_e4m3fn for w in linear_weights)


def test_fp8_dequantised_weights_match(model):
    from anytalker_core.model.quantization import FP8Linear

    linear = model.blocks[0].self_attn.q
    q = FP8Linear(linear, torch.float32)
    dequant = q.weight.float() * q.scale[:, None]
    assert q.scale.shape == (linear.out_features,)  # one scale per output channel
    row_max = linear.weight.abs().amax(dim=1, keepdim=True)
    assert ((dequant - linear.weight).abs() <= 0.07 * row_max).all()  # e4m3: 3 mantissa bits, per row
    x = torch.randn(4, linear.in_features)
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, dequant, linear.bias), atol=1e-5, rtol=1e-5)


def test_fp8_rejects_bad_dtypes(model, tmp_path):
    path = save_dit(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="weight_dtype"):
        load_dit(path, dtype=torch.bfloat16, weight_dtype=torch.int8)


def test_verify_fixture_glob_skips_model_configs(fixtures):
    """`anytalker verify-fixture fixtures/*.json` runs every fixture; the model configs are skipped."""
    files = sorted(str(p) for p in fixtures.glob("*.json"))
    proc = subprocess.run([sys.executable, "-m", "anytalker_core.cli", "verify-fixture", *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dit_af.config.json: not a fixture (no 'group' key), skipped" in proc.stdout
    for group in ("dit_af", "dit_legacy", "audio_features", "face_masks", "scheduler", "interactivity"):
        assert f"(group {group})" in proc.stdout
    assert " 0 failed" in proc.stdout


def test_verify_fixture_missing_file_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "anytalker_core.cli", "verify-fixture",
                           str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr
