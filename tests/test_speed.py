"""The exact savings of the sampling loop leave the output unchanged.

Each saving is compared with the path without it: prepared keys/values vs projecting them in every
block, batched guidance branches vs one forward per branch (and vs the plain ``model(...)`` call the
reference makes), zero audio projected once vs per identity, log-sum-exp merged attention vs one
attention over the concatenated keys, complex-multiply RoPE vs the rotation written out.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from anytalker_core.generation.guided import GuidedDenoiser, SpeedOptions, stack_branch_inputs
from anytalker_core.model.attention import attention, attention_with_lse, merge_attention
from anytalker_core.model.checkpoint import load_dit, save_dit
from anytalker_core.model.config import AnyTalkerConfig
from anytalker_core.model.dit import AnyTalkerDiT
from anytalker_core.model.embeddings import apply_rope, rope_angles, rope_rotation
from anytalker_core.model.speaker import Speaker
from anytalker_core.sampling import Guidance, make_scheduler, sample


def make_case(cfg: AnyTalkerConfig, n: int, frames: int = 3, h: int = 4, w: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    video_frames = 4 * (frames - 1) + 1
    speakers = []
    for i in range(n):
        mask = torch.zeros(1, frames, h // 2, w // 2)
        mask[..., i % (w // 2)] = 1.0
        speakers.append(Speaker(rnd(1, video_frames, cfg.audio_window, cfg.audio_layers, cfg.audio_channels),
                                rnd(1, 257, cfg.clip_dim), mask))
    return dict(x=rnd(1, 16, frames, h, w), y=rnd(1, 20, frames, h, w), context=rnd(1, 7, cfg.text_dim),
                context_null=rnd(1, 11, cfg.text_dim), clip=rnd(1, 257, cfg.clip_dim), speakers=speakers)


@pytest.fixture(params=["fused", "legacy"])
def model(request):
    torch.manual_seed(0)
    return AnyTalkerDiT(AnyTalkerConfig.tiny(request.param)).eval().requires_grad_(False)


def branch_inputs_of(case):
    def inputs(branch):
        if branch == "cond":
            return case["context"], case["speakers"]
        if branch == "text_only":
            return case["context"], [s.without_audio() for s in case["speakers"]]
        return case["context_null"], [s.without_audio() for s in case["speakers"]]
    return inputs


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_cached_keys_values_equal_per_block_projection(model, n):
    case = make_case(model.config, n)
    t = torch.tensor([700])
    with torch.no_grad():
        cached = model.condition(case["context"], case["clip"], case["speakers"], cache_kv=True)
        uncached = model.condition(case["context"], case["clip"], case["speakers"], cache_kv=False)
        a = model.forward_conditioned(case["x"], t, case["y"], cached)
        b = model.forward_conditioned(case["x"], t, case["y"], uncached)
        plain = model(case["x"], t, case["context"], case["clip"], case["y"], case["speakers"])
    assert cached.blocks is not None and uncached.blocks is None
    assert cached.nbytes() > uncached.nbytes()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(b, plain, atol=0, rtol=0)


def test_ffn_in_pieces_equals_whole(model, monkeypatch):
    """The FFN sublayer (norm, modulation, FFN, gated residual) one row and 7 tokens at a time == at once."""
    import anytalker_core.model.dit as dit

    block = model.blocks[0]
    dim = model.config.dim
    x = torch.randn(2, 40, dim)
    shift, scale, gate = torch.randn(3, 2, 1, dim)
    whole = x + block.ffn(block.norm2(x) * (1 + scale) + shift) * gate
    monkeypatch.setattr(dit, "FFN_CHUNK_TOKENS", 7)
    torch.testing.assert_close(block._ffn(x, shift, scale, gate), whole, atol=1e-6, rtol=1e-6)
    # modulation of batch 1 (one timestep) serves every row
    whole = x + block.ffn(block.norm2(x) * (1 + scale[:1]) + shift[:1]) * gate[:1]
    torch.testing.assert_close(block._ffn(x, shift[:1], scale[:1], gate[:1]), whole, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_batched_branches_equal_one_forward_per_branch(model, n, separate, monkeypatch):
    """Batched cond/uncond (/text_only) with the shared first-block prefix, each sublayer run one branch
    at a time and the FFN in 5-token pieces == the reference's separate calls of the plain forward, one
    per branch."""
    import anytalker_core.model.dit as dit

    case = make_case(model.config, n)
    guidance = Guidance(text_scale=5.0, audio_scale=3.0) if separate else Guidance(4.5)
    inputs = branch_inputs_of(case)
    t = torch.tensor([999])
    with torch.no_grad():
        with monkeypatch.context() as patch:
            patch.setattr(dit, "FFN_CHUNK_TOKENS", 5)  # 18 tokens per row: pieces of 5, 5, 5, 3
            batched = GuidedDenoiser(model, inputs, case["clip"], case["y"], SpeedOptions(cfg_batch=True))(
                case["x"], t, guidance.branches)
        single = GuidedDenoiser(model, inputs, case["clip"], case["y"],
                                SpeedOptions(kv_cache=False, cfg_batch=False))(case["x"], t, guidance.branches)
        plain = [model(case["x"], t, *inputs(b)[:1], case["clip"], case["y"], inputs(b)[1])
                 for b in guidance.branches]
    assert len(batched) == len(guidance.branches)
    for a, b, c in zip(batched, single, plain):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_full_sampling_run_unchanged_by_the_savings(model, n):
    case = make_case(model.config, n)
    inputs = branch_inputs_of(case)
    results = []
    for options in (SpeedOptions(), SpeedOptions(kv_cache=True, cfg_batch=False),
                    SpeedOptions(kv_cache=False, cfg_batch=True), SpeedOptions(kv_cache=False, cfg_batch=False)):
        denoiser = GuidedDenoiser(model, inputs, case["clip"], case["y"], options)
        with torch.no_grad():
            results.append(sample(denoiser, case["x"], make_scheduler("unipc", 4, 3.0), Guidance(4.5)))
    for other in results[1:]:
        torch.testing.assert_close(results[0], other, atol=1e-5, rtol=1e-5)


def test_unconditional_audio_path_is_exact(model):
    """The unconditional branch's zeroed audio: projected from one video frame, its keys/values stored once
    for every speaker and attended as one key set with a log-count offset — the same prediction as
    projecting and attending all T frames of zero features, as the reference does."""
    case = make_case(model.config, 2)
    speakers = [s.without_audio() for s in case["speakers"]]
    t = torch.tensor([400])
    with torch.no_grad():
        fast = model.condition(case["context_null"], case["clip"], speakers, cache_kv=True)
        full = model.condition(case["context_null"], case["clip"], speakers, cache_kv=False)
        every_frame = model._embed_audio(speakers[0].audio)  # [1, T, tokens, d]: all frames of zero features
        for ident, spk in zip(full.identities, speakers):
            ident.audio = [model._embed_audio(spk.audio)]  # one projection per speaker, every frame
        a = model.forward_conditioned(case["x"], t, case["y"], fast)
        b = model.forward_conditioned(case["x"], t, case["y"], full)
    if model.config.afca == "fused":
        # the premise of the one-frame projection: every frame of zero features gives the same tokens (up to
        # the matmul's rounding, which differs between rows of one call)
        assert fast.blocks[0].identities[0].audio[0].k.shape[1] == 1
        torch.testing.assert_close(every_frame, every_frame[:, :1].expand_as(every_frame), atol=1e-6, rtol=1e-5)
        assert full.identities[0].audio[0].shape[1] == speakers[0].audio.shape[1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert float(a.norm()) > 0


def test_zero_audio_projected_once(model):
    case = make_case(model.config, 2)
    context, speakers = stack_branch_inputs([branch_inputs_of(case)(b) for b in ("cond", "uncond")])
    with torch.no_grad():
        embedded = model.condition(context, case["clip"], speakers, cache_kv=False)
        cond = model.condition(context, case["clip"], speakers, cache_kv=True)
    assert cond.text is None and cond.identities == []  # with the cache, the embeddings are released
    first, second = embedded.identities
    assert first.audio[0] is not second.audio[0]  # real audio: one projection per speaker
    assert first.audio[1] is second.audio[1]  # zero audio: one projection shared by both speakers
    if model.config.afca == "fused":
        assert first.audio[1].shape[1] == 1  # ... from a single video frame
        assert first.audio[0].shape[1] == case["speakers"][0].audio.shape[1]
    assert cond.blocks[0].identities[0].audio[1] is cond.blocks[0].identities[1].audio[1]  # and its K/V once


def test_cache_memory_is_accounted(model):
    case = make_case(model.config, 2)
    inputs = branch_inputs_of(case)
    on = GuidedDenoiser(model, inputs, case["clip"], case["y"], SpeedOptions(kv_cache=True))
    off = GuidedDenoiser(model, inputs, case["clip"], case["y"], SpeedOptions(kv_cache=False))
    with torch.no_grad():
        on(case["x"], torch.tensor([500]), ("cond", "uncond"))
        off(case["x"], torch.tensor([500]), ("cond", "uncond"))
    cfg, blocks = model.config, model.config.num_layers
    dim, text = cfg.dim, cfg.text_len + (257 if cfg.afca == "legacy" else 0)
    # at least the text keys/values of both branches in every block (float32)
    assert on.cache_bytes() - off.cache_bytes() >= blocks * 2 * 2 * text * dim * 4
    with pytest.raises(Exception, match="cfg_batch"):
        SpeedOptions(cfg_batch="sometimes")


def test_merged_attention_equals_attention_over_all_keys():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, n, 3, 16, generator=g) for n in (9, 40, 40))
    whole = attention(q, k, v)
    parts = [attention_with_lse(q, k[:, :15], v[:, :15]), attention_with_lse(q, k[:, 15:], v[:, 15:])]
    torch.testing.assert_close(merge_attention(parts), whole, atol=1e-6, rtol=1e-6)
    out, lse = parts[0]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k[:, :15]) / math.sqrt(16)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_rope_complex_multiply_equals_pairwise_rotation():
    grid, head_dim = (3, 2, 4), 12
    x = torch.randn(2, 24, 3, head_dim)
    angles = rope_angles(grid, head_dim)
    cos, sin = torch.cos(angles).float()[:, None], torch.sin(angles).float()[:, None]
    real, imag = x[..., 0::2], x[..., 1::2]
    expected = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rope(x, rope_rotation(angles)), expected, atol=1e-6, rtol=1e-6)


def test_loaded_weights_own_aligned_memory(model, tmp_path):
    """No parameter keeps pointing into the reader's buffer or the file's memory map."""
    path = save_dit(model, tmp_path / "m.safetensors")
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    (tmp_path / "m.json").write_text(json.dumps(model.config.to_dict()))
    for loaded in (load_dit(path), load_dit(tmp_path / "m.pth")):
        assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())


def test_fp8_matmul_path_matches_dequantised_weights():
    """The fp8 tensor-core path (``torch._scaled_mm``, used on CUDA sm89+) computed here on the CPU:
    per-token activation scales and per-channel weight scales give the dequantised layer's output
    up to the activations' e4m3 rounding."""
    from anytalker_core.model.quantization import FP8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    q = FP8Linear(linear, torch.bfloat16)
    x = torch.randn(2, 10, 64)
    try:
        fast = q._fp8_matmul(x.bfloat16())
    except (RuntimeError, NotImplementedError) as exc:  # a torch build without CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm not available on this CPU build: {exc}")
    slow = q(x)  # CPU: dequantised path
    exact = linear(x)
    assert fast.shape == slow.shape == (2, 10, 48)
    assert float((fast.float() + q.bias.float() - exact).norm() / exact.norm()) < 0.06
    assert float((slow.float() - exact).norm() / exact.norm()) < 0.04


def test_auto_dtype_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    from anytalker_core.model import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert precision.auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.auto_dtype("cpu") == torch.float32
