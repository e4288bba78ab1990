"""CLIP vision encoder: ComfyUI/Wan layouts, Wan preprocessing, penultimate tokens, wrong inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage.data import astronaut

from anytalker_core.encoders.clip_vision import (
    CLIP_MEAN,
    CLIP_STD,
    load_clip_vision,
    make_tiny_clip_vision,
)
from anytalker_core.errors import CheckpointError, InputError, MissingModelError


@pytest.fixture(scope="module")
def comfy_file(tmp_path_factory):
    return make_tiny_clip_vision(tmp_path_factory.mktemp("clip") / "clip_vision_h.safetensors", seed=5)


@pytest.fixture(scope="module")
def wan_file(tmp_path_factory):
    return make_tiny_clip_vision(
        tmp_path_factory.mktemp("clipwan") / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        layout="wan", seed=5,
    )


@pytest.fixture(scope="module")
def encoder(comfy_file):
    return load_clip_vision(comfy_file)


@pytest.fixture(scope="module")
def image():
    return torch.from_numpy(astronaut()).float().div(255.0)[None]  # [1, 512, 512, 3]


def _wan_visual_reference(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """Wan's VisionTransformer.forward(use_31_block=True) written from its structure, on Wan-layout weights."""
    w = sd["visual.patch_embedding.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_embedding"].expand(x.shape[0], -1, -1), x], dim=1) + sd["visual.pos_embedding"]
    dim = x.shape[-1]

    def ln(t, name):
        return F.layer_norm(t, (dim,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    x = ln(x, "visual.pre_norm")
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual.transformer."))
    for i in range(layers - 1):
        p = f"visual.transformer.{i}."
        b, s, _ = x.shape
        qkv = F.linear(ln(x, p + "norm1"), sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"])
        q, k, v = qkv.view(b, s, 3, heads, dim // heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(att.transpose(1, 2).reshape(b, s, dim), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.linear(ln(x, p + "norm2"), sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])
        x = x + F.linear(F.gelu(h), sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


def test_round_trip_on_a_real_image(encoder, image):
    assert encoder.hidden_size == 32 and encoder.num_tokens == 257 and encoder.image_size == 224
    out = encoder.encode(image)
    assert out.shape == (1, 257, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, encoder.encode(image))
    batch = encoder.encode(torch.cat([image, image.flip(2)]))
    torch.testing.assert_close(batch[0], out[0], atol=1e-5, rtol=1e-5)
    assert (batch[1] - batch[0]).abs().max() > 1e-3  # a mirrored face is a different input
    uint8 = encoder.encode(torch.from_numpy(astronaut())[None])
    torch.testing.assert_close(uint8, out, atol=1e-5, rtol=1e-5)


def test_preprocessing_matches_wan(encoder, image):
    pixels = encoder.preprocess(image)
    assert pixels.shape == (1, 3, 224, 224)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    # Wan: bicubic (align_corners=False, no antialias) on the -1..1 image, back to 0..1, CLIP mean/std
    wan = F.interpolate(image.permute(0, 3, 1, 2) * 2 - 1, size=(224, 224), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pixels, (wan * 0.5 + 0.5 - mean) / std, atol=1e-6, rtol=1e-6)
    antialiased = F.interpolate(image.permute(0, 3, 1, 2), size=(224, 224), mode="bicubic", antialias=True)
    assert (pixels - (antialiased - mean) / std).abs().max() > 1e-2  # not ComfyUI's antialiased resize
    # a non-square image is squashed to 224×224, not cropped: a flat colour stays exactly that colour
    flat = torch.full((1, 120, 300, 3), 0.25)
    torch.testing.assert_close(encoder.preprocess(flat), ((0.25 - mean) / std).expand(1, 3, 224, 224))


def test_penultimate_states_equal_full_model_hidden_states(encoder, comfy_file, image):
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sd = {k.removeprefix("vision_model."): v for k, v in load_file(str(comfy_file)).items() if k.startswith("vision_model.")}
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=224, patch_size=14, hidden_act="gelu")
    full = CLIPVisionModel(config).eval()
    target = full.vision_model if hasattr(full, "vision_model") else full
    target.load_state_dict(sd, strict=False)
    with torch.no_grad():
        states = full(pixel_values=encoder.preprocess(image), output_hidden_states=True).hidden_states
    assert len(states) == 4
    torch.testing.assert_close(encoder.encode(image), states[-2], atol=1e-6, rtol=1e-5)


def test_wan_layout_matches_comfy_and_wan_math(encoder, wan_file, image):
    wan = load_clip_vision(wan_file)
    assert torch.equal(wan.encode(image), encoder.encode(image))
    sd = torch.load(wan_file, weights_only=True)
    reference = _wan_visual_reference(sd, encoder.preprocess(image), heads=2)
    torch.testing.assert_close(encoder.encode(image), reference, atol=1e-5, rtol=1e-5)


def test_older_files_with_position_ids_and_a_prefix(encoder, comfy_file, tmp_path, image):
    """Older transformers saved the int64 position_ids buffer; some tools add a prefix to every key."""
    from safetensors.torch import load_file, save_file

    sd = {"clip_vision." + k: v for k, v in load_file(str(comfy_file)).items()}
    sd["clip_vision.vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    save_file(sd, str(tmp_path / "old.safetensors"), metadata={"num_attention_heads": "2"})
    assert torch.equal(load_clip_vision(tmp_path / "old.safetensors").encode(image), encoder.encode(image))


def test_bare_visual_tower_and_legacy_pth(encoder, wan_file, tmp_path, image):
    """Wan's visual tower saved alone (no 'visual.' prefix), in the legacy non-zip .pth format."""
    sd = torch.load(wan_file, weights_only=True)
    bare = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    path = tmp_path / "clip_visual.pth"
    torch.save(bare, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_clip_vision(path).encode(image), encoder.encode(image))


def test_half_precision_load(comfy_file, image):
    enc = load_clip_vision(comfy_file, dtype=torch.bfloat16)
    out = enc.encode(image)
    assert out.dtype == torch.float32 and out.shape == (1, 257, 32)
    assert next(enc.model.parameters()).dtype == torch.bfloat16


def test_wrong_files(tmp_path):
    from anytalker_core.encoders.vae import make_tiny_vae

    vae = make_tiny_vae(tmp_path / "wan_2.1_vae.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_clip_vision(vae)
    message = str(info.value)
    assert str(vae) in message and "Wan VAE" in message and "clip_vision_h.safetensors" in message
    with pytest.raises(MissingModelError):
        load_clip_vision(tmp_path / "clip_vision_h.safetensors")


def test_dit_file_is_named_as_such(fixtures):
    with pytest.raises(CheckpointError, match="diffusion model"):
        load_clip_vision(fixtures / "dit_af.pth")


def test_bad_images(encoder):
    with pytest.raises(InputError, match=r"\[B, H, W, 3\]"):
        encoder.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(InputError, match="0..1"):
        encoder.encode(torch.rand(1, 64, 64, 3) * 255)


def test_real_vit_h14_size_is_inferred_from_wan_shapes():
    """The full Wan open-clip ViT-H/14 layout (meta tensors) gives 1280 wide, 16 heads, 224 px, 31 of 32 blocks."""
    from anytalker_core.encoders.clip_vision import _config_from_state_dict, _wan_to_hf

    d = 1280
    shapes = {"visual.patch_embedding.weight": (d, 3, 14, 14), "visual.cls_embedding": (1, 1, d),
              "visual.pos_embedding": (1, 257, d), "visual.head": (d, 1024), "log_scale": ()}
    for name in ("pre_norm", "post_norm"):
        shapes.update({f"visual.{name}.weight": (d,), f"visual.{name}.bias": (d,)})
    for i in range(32):
        p = f"visual.transformer.{i}."
        shapes.update({p + "attn.to_qkv.weight": (3 * d, d), p + "attn.to_qkv.bias": (3 * d,),
                       p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                       p + "mlp.0.weight": (4 * d, d), p + "mlp.0.bias": (4 * d,),
                       p + "mlp.2.weight": (d, 4 * d), p + "mlp.2.bias": (d,)})
        for n in ("norm1", "norm2"):
            shapes.update({p + f"{n}.weight": (d,), p + f"{n}.bias": (d,)})
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    state = _wan_to_hf(sd, "visual.", torch.float16, "real")
    assert state["encoder.layers.31.self_attn.v_proj.weight"].shape == (d, d)
    config, layers, positions = _config_from_state_dict(state, {}, "real")
    assert (config.hidden_size, config.num_attention_heads, config.image_size, config.patch_size) == (1280, 16, 224, 14)
    assert (layers, config.num_hidden_layers, positions, config.intermediate_size) == (32, 31, 257, 5120)
    assert config.hidden_act == "gelu"  # open-clip ViT-H uses exact GELU, not CLIP's quick_gelu
