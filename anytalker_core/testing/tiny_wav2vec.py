"""A tiny random wav2vec2 in the real file formats (tests and ``anytalker generate --demo``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..audio.wav2vec import _CONFIG_METADATA_KEY as CONFIG_METADATA_KEY
from ..audio.wav2vec import STANDARD_CONV_KERNEL, STANDARD_CONV_STRIDE
from ..constants import SAMPLE_RATE
from ..errors import InputError

__all__ = ["make_tiny_wav2vec"]


def make_tiny_wav2vec(
    path: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 1,
    intermediate_size: int = 64,
    conv_dim: int = 32,
    feat_extract_norm: str = "group",
    pos_conv_kernel: int = 16,
    seed: int = 0,
    prefix: str = "wav2vec2.",
    embed_config: bool = False,
) -> Path:
    """Write a tiny random Wav2Vec2 in a real file format (tests, ``--demo``).

    * ``path`` ending in ``.safetensors`` → one file as ComfyUI keeps them (keys with ``prefix``;
      the config is embedded in the metadata only if ``embed_config``, else it must be inferred —
      then ``hidden_size`` should be a multiple of 64 with ``num_heads = hidden_size // 64``).
    * any other ``path`` → a Hugging Face folder (``config.json``, ``model.safetensors``,
      ``preprocessor_config.json``).

    ``feat_extract_norm='layer'`` gives a layer-norm-first model (``do_stable_layer_norm``), like
    wav2vec2-large-lv60. Weights are N(0, 0.02)-perturbed so no branch is dead. Returns ``path``.
    """
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if feat_extract_norm not in ("group", "layer"):
        raise InputError(f"feat_extract_norm must be 'group' or 'layer', got {feat_extract_norm!r}")
    path = Path(path)
    kwargs = dict(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, conv_dim=[conv_dim] * 7, conv_kernel=list(STANDARD_CONV_KERNEL),
        conv_stride=list(STANDARD_CONV_STRIDE), feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=(feat_extract_norm == "layer"), conv_bias=(feat_extract_norm == "layer"),
        num_conv_pos_embeddings=pos_conv_kernel, num_conv_pos_embedding_groups=min(16, hidden_size), vocab_size=32,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Wav2Vec2Model(Wav2Vec2Config(**kwargs))
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "pt"}
        if embed_config:
            meta[CONFIG_METADATA_KEY] = json.dumps(kwargs)
        save_file({prefix + k: v for k, v in sd.items()}, str(path), metadata=meta)
    else:
        path.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(path))
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "preprocessor_config.json").write_text(json.dumps({
            "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
            "sampling_rate": SAMPLE_RATE,
        }, indent=2))
    return path
