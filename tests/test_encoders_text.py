"""UMT5 text encoder: ComfyUI/Wan file layouts, fp8 scaled weights, tokenizers, Wan-equivalent numerics."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from anytalker_core.encoders.text import load_text_encoder, make_tiny_text_encoder
from anytalker_core.errors import CheckpointError, InputError, MissingModelError

PROMPTS = ["Two people are talking in a bright room.", "A man nods.", ""]


@pytest.fixture(scope="module")
def comfy_file(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("t5comfy"), layout="comfy", seed=3)


@pytest.fixture(scope="module")
def wan_file(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("t5wan"), layout="wan", seed=3)


@pytest.fixture(scope="module")
def encoder(comfy_file):
    return load_text_encoder(comfy_file)


def _bucket(rel: torch.Tensor, num_buckets: int = 32, max_dist: int = 128) -> torch.Tensor:
    """Wan's T5RelativeEmbedding._relative_position_bucket (bidirectional)."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_dist / max_exact) * (half - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return out + torch.where(rel < max_exact, rel, large)


def _wan_t5_reference(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Wan's T5Encoder forward written from its module structure, on Wan-layout weights. ids [L] -> [L, D]."""

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    x = sd["token_embedding.weight"][ids]
    length = ids.shape[0]
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    for i in range(layers):
        b = f"blocks.{i}."
        heads = sd[b + "pos_embedding.embedding.weight"].shape[1]
        bias = sd[b + "pos_embedding.embedding.weight"][_bucket(rel)].permute(2, 0, 1)  # [H, L, L]
        h = norm(x, sd[b + "norm1.weight"])
        q, k, v = (h @ sd[b + f"attn.{n}.weight"].T for n in "qkv")
        q, k, v = (t.view(length, heads, -1) for t in (q, k, v))
        attn = torch.einsum("ind,jnd->nij", q, k) + bias  # T5: no 1/sqrt(d) scaling
        out = torch.einsum("nij,jnd->ind", attn.softmax(-1), v).reshape(length, -1)
        x = x + out @ sd[b + "attn.o.weight"].T
        h = norm(x, sd[b + "norm2.weight"])
        gated = (h @ sd[b + "ffn.fc1.weight"].T) * gelu_tanh(h @ sd[b + "ffn.gate.0.weight"].T)
        x = x + gated @ sd[b + "ffn.fc2.weight"].T
    return norm(x, sd["norm.weight"])


def test_round_trip_shapes_dtype_determinism(encoder):
    assert encoder.dim == 32
    out = encoder.encode(PROMPTS)
    assert len(out) == 3
    ids, mask = encoder.tokenize(PROMPTS)
    for tensor, n in zip(out, mask.sum(1).tolist()):
        assert tensor.shape == (n, 32) and tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()
    assert out[2].shape == (1, 32)  # an empty prompt is just </s>
    assert all(row[int(n) - 1] == 1 for row, n in zip(ids, mask.sum(1)))  # every prompt ends with </s>
    again = encoder.encode(PROMPTS)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    # padding inside a batch does not change a prompt's states
    alone = encoder.encode([PROMPTS[1]])[0]
    torch.testing.assert_close(alone, out[1], atol=1e-6, rtol=1e-5)
    assert encoder.encode("A man nods.")[0].shape == out[1].shape


def test_wan_layout_matches_comfy_layout_and_wan_math(encoder, wan_file):
    wan = load_text_encoder(wan_file)  # tokenizer found in google/umt5-xxl/ beside the .pth
    assert "google/umt5-xxl" in wan.tokenizer.source.replace("\\", "/")
    a, b = encoder.encode(PROMPTS), wan.encode(PROMPTS)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    sd = torch.load(wan_file, weights_only=True)
    ids, _ = encoder.tokenize(PROMPTS[:1])
    reference = _wan_t5_reference(sd, ids[0])
    torch.testing.assert_close(a[0], reference, atol=1e-5, rtol=1e-5)
    # swapping the gate and the linear branch (a plausible remapping bug) must be visible
    swapped = dict(sd)
    swapped["blocks.0.ffn.fc1.weight"], swapped["blocks.0.ffn.gate.0.weight"] = sd["blocks.0.ffn.gate.0.weight"], sd["blocks.0.ffn.fc1.weight"]
    assert (a[0] - _wan_t5_reference(swapped, ids[0])).abs().max() > 1e-3


def test_fp8_scaled_weights_are_dequantised(comfy_file, tmp_path, encoder):
    sd = load_file(str(comfy_file))
    quant = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in sd.items():
        if key.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight", "wo.weight")):
            scale = value.abs().max() / 448.0
            quant[key] = (value / scale).to(torch.float8_e4m3fn)
            quant[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            quant[key] = value
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(quant, str(path))
    fp8 = load_text_encoder(path)
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    expected = quant[key].to(torch.float32) * quant[key[: -len("weight")] + "scale_weight"]
    assert torch.equal(fp8.model.state_dict()[key], expected)
    # the same model stored with the dequantised weights in float32 gives the same states
    dequant = {k: v for k, v in quant.items() if k != "scaled_fp8" and not k.endswith("scale_weight")}
    for k, value in list(dequant.items()):
        if value.dtype == torch.float8_e4m3fn:
            dequant[k] = value.to(torch.float32) * quant[k[: -len("weight")] + "scale_weight"]
    save_file(dequant, str(tmp_path / "dequant.safetensors"))
    reference = load_text_encoder(tmp_path / "dequant.safetensors")
    b = fp8.encode(PROMPTS[:1])[0]
    assert torch.equal(b, reference.encode(PROMPTS[:1])[0])
    a = encoder.encode(PROMPTS[:1])[0]  # and stays close to the unquantised model (fp8 rounding only)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95


def test_int8_weights_are_rejected(comfy_file, tmp_path):
    sd = load_file(str(comfy_file))
    sd["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros_like(sd["encoder.block.0.layer.0.SelfAttention.q.weight"], dtype=torch.int8)
    path = tmp_path / "umt5_int8.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="int8"):
        load_text_encoder(path)


def test_missing_tokenizer_message_and_search(tmp_path, encoder):
    folder = tmp_path / "text_encoders"
    path = make_tiny_text_encoder(folder, layout="comfy", embed_tokenizer=False, seed=3)
    with pytest.raises(MissingModelError) as info:
        load_text_encoder(path)
    message = str(info.value)
    assert "spiece.model" in message and "google/umt5-xxl" in message and str(folder / "umt5-xxl") in message
    # the documented place beside the weights
    spiece = encoder.tokenizer._sp.serialized_model_proto()
    (folder / "umt5-xxl").mkdir()
    (folder / "umt5-xxl" / "spiece.model").write_bytes(spiece)
    found = load_text_encoder(path)
    assert all(torch.equal(x, y) for x, y in zip(found.encode(PROMPTS), encoder.encode(PROMPTS)))
    # an explicit tokenizer folder
    explicit = tmp_path / "elsewhere"
    shutil.move(str(folder / "umt5-xxl"), explicit)
    assert load_text_encoder(path, tokenizer=explicit).encode(["x"])[0].shape[1] == 32
    with pytest.raises(MissingModelError, match="tokenizer"):
        load_text_encoder(path, tokenizer=tmp_path / "nothing-here")


def test_tokenizer_json_and_truncation(comfy_file, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder = tmp_path / "umt5-json"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    enc = load_text_encoder(comfy_file, tokenizer=folder)
    ids, _ = enc.tokenize(["hello  world &amp; more"])
    assert ids[0].tolist() == [3, 4, 2, 2, 1]  # '&' is unescaped, unknown words -> <unk>, </s> appended
    long_prompt = " ".join(["hello"] * 700)
    out = enc.encode([long_prompt])[0]
    assert out.shape == (512, 32)
    assert enc.tokenize([long_prompt])[0][0, -1].item() == 1  # </s> survives truncation


def test_prompt_cleaning_like_wan(encoder):
    a, b = encoder.encode(["a  man &amp;amp;\n a woman "]), encoder.encode(["a man & a woman"])
    assert torch.equal(a[0], b[0])


def test_bf16_compute_dtype(comfy_file):
    enc = load_text_encoder(comfy_file, dtype=torch.bfloat16)
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    out = enc.encode(PROMPTS[:1])[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_fp16_keeps_ffn_output_in_fp32(comfy_file, encoder):
    enc = load_text_encoder(comfy_file, dtype=torch.float16)
    weights = enc.model.state_dict()
    assert weights["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == torch.float32
    assert weights["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].dtype == torch.float16
    out = enc.encode(PROMPTS[:1])[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, encoder.encode(PROMPTS[:1])[0], atol=5e-2, rtol=5e-2)


def test_wrong_files(tmp_path):
    from anytalker_core.encoders.clip_vision import make_tiny_clip_vision

    clip = make_tiny_clip_vision(tmp_path / "clip_vision_h.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_text_encoder(clip)
    assert str(clip) in str(info.value) and "CLIP vision model" in str(info.value)
    assert "umt5_xxl" in str(info.value)
    with pytest.raises(MissingModelError, match="models/text_encoders"):
        load_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_text_encoder(bad)


def test_bad_prompts(encoder):
    with pytest.raises(InputError):
        encoder.encode([1, 2])
    assert encoder.encode([]) == []


def test_real_umt5_xxl_size_is_inferred_from_wan_shapes():
    """The full Wan models_t5_umt5-xxl-enc-bf16.pth layout (as meta tensors) maps to the UMT5-XXL config."""
    from anytalker_core.encoders.text import _config_from_state_dict, _wan_to_hf_key

    shapes = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (4096,), b + "norm2.weight": (4096,),
                       b + "pos_embedding.embedding.weight": (32, 64), b + "ffn.gate.0.weight": (10240, 4096),
                       b + "ffn.fc1.weight": (10240, 4096), b + "ffn.fc2.weight": (4096, 10240)})
        shapes.update({b + f"attn.{n}.weight": (4096, 4096) for n in "qkvo"})
    sd = {_wan_to_hf_key(k): torch.empty(s, device="meta") for k, s in shapes.items()}
    assert None not in sd
    config = _config_from_state_dict(sd, "real")
    assert (config.vocab_size, config.d_model, config.d_kv, config.d_ff) == (256384, 4096, 64, 10240)
    assert (config.num_layers, config.num_heads, config.relative_attention_num_buckets) == (24, 64, 32)
    assert config.dense_act_fn == "gelu_new" and config.is_gated_act  # Wan's tanh GELU, gated


def test_to_moves_the_encoder(encoder):
    assert encoder.to("cpu") is encoder and encoder.device == torch.device("cpu")
