"""The core's ``Conditioning`` as ComfyUI-native MODEL / CONDITIONING / LATENT.

The same DiT inputs the standalone pipeline feeds its own DiT, expressed the way ComfyUI's Wan I2V model
reads them (``comfy.model_base.WAN21.concat_cond`` / ``extra_conds``):

* ``concat_latent_image``: the first-frame latent ``y[:, 4:]`` in the VAE's raw scale (ComfyUI applies
  ``process_latent_in``, the Wan2.1 latent normalisation, on the way in);
* ``concat_mask``: ``1 - y[:, :4]`` (ComfyUI feeds ``1 - concat_mask`` as the 4 mask channels): 1 on
  latent frame 0, the sum of the face masks on later frames — AnyTalker's mask channels;
* ``clip_vision_output``: CLIP ViT-H penultimate tokens of the start image;
* the text embeddings padded with zero rows to the model's ``text_len`` (512), as the reference does;
* the speakers (audio windows, face CLIP tokens, token masks) go into the MODEL clone (:mod:`.patches`).
"""

from __future__ import annotations

import torch

from anytalker_core.errors import InputError

from .patches import is_anytalker_model, patch_model
from .weights import CONFIG_ATTR


def pad_text(embeds: torch.Tensor, text_len: int, what: str) -> torch.Tensor:
    """``[B, L, D]`` → ``[B, text_len, D]`` with zero rows (longer prompts are an error, not a silent cut)."""
    if embeds.ndim != 3:
        raise InputError(f"{what}: text embeddings must be [batch, tokens, width], got {tuple(embeds.shape)}")
    if embeds.shape[1] > text_len:
        raise InputError(f"{what}: {embeds.shape[1]} text tokens, but the model reads at most {text_len}; "
                         "shorten the prompt")
    return torch.nn.functional.pad(embeds, (0, 0, 0, text_len - embeds.shape[1]))


def clip_output(clip_fea: torch.Tensor):
    """A ``CLIP_VISION_OUTPUT`` holding ``clip_fea [1, 257, 1280]`` as its penultimate hidden states."""
    import comfy.clip_vision

    out = comfy.clip_vision.Output()
    out.penultimate_hidden_states = clip_fea
    return out


def native_conditioning(conditioning: list, values: dict, text_len: int, what: str) -> list:
    """Every entry of a CONDITIONING with padded text and ``values`` merged into its options."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise InputError(f"{what}: expected a CONDITIONING from CLIP Text Encode (umt5_xxl, type wan)")
    out = []
    for entry in conditioning:
        embeds, options = entry[0], dict(entry[1])
        options.update(values)
        out.append([pad_text(embeds, text_len, what), options])
    return out


def to_native(model, condition, positive: list, negative: list):
    """``(MODEL, positive, negative, LATENT)`` for ComfyUI's samplers from a core ``Conditioning``."""
    import comfy.latent_formats

    if not is_anytalker_model(model):
        raise InputError("model: not an AnyTalker model; load the checkpoint with Load AnyTalker Diffusion "
                         "Model (native) (the core Load Diffusion Model drops the AFCA weights)")
    cfg = getattr(model.model.diffusion_model, CONFIG_ATTR)
    y = condition.y.detach().float().cpu()
    latent_format = comfy.latent_formats.Wan21()
    values = {
        "concat_latent_image": latent_format.process_out(y[:, 4:]),
        "concat_mask": 1.0 - y[:, :4],
        "clip_vision_output": clip_output(condition.clip_fea.detach().float().cpu()),
    }
    for i, s in enumerate(condition.speakers):
        got = tuple(s.audio.shape[-2:])
        if got != (cfg.audio_layers, cfg.audio_channels):
            raise InputError(f"audio_features: person {i + 1} has wav2vec2 features {got} (layers, width) but the "
                             f"model expects {(cfg.audio_layers, cfg.audio_channels)}; use wav2vec2-base-960h")
    pos = native_conditioning(positive, values, cfg.text_len, "positive")
    neg = native_conditioning(negative, values, cfg.text_len, "negative")
    for what, cond in (("positive", pos), ("negative", neg)):
        if cond[0][0].shape[-1] != cfg.text_dim:
            raise InputError(f"{what}: text embeddings are {cond[0][0].shape[-1]} wide but the model expects "
                             f"{cfg.text_dim}; use umt5_xxl via Load CLIP (type wan)")
    speakers = [s.__class__(audio=s.audio.detach().float().cpu(), face_clip=s.face_clip.detach().float().cpu(),
                            token_mask=s.token_mask.detach().float().cpu()) for s in condition.speakers]
    patched = patch_model(model, speakers)
    latent = {"samples": torch.zeros(condition.plan.latent_shape)}
    return patched, pos, neg, latent
