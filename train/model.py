"""The DiT a training run trains: its :class:`AnyTalkerConfig` from the config's ``[model]`` section, and the
model itself (float32, train mode, optionally initialised from a checkpoint), identical on every process."""

from __future__ import annotations

import json
import logging

import torch

from anytalker_core.errors import InputError

from .config import ModelSection

log = logging.getLogger(__name__)

__all__ = ["build_model", "model_config"]


def model_config(section: ModelSection):
    """The :class:`AnyTalkerConfig` of the DiT a ``[model]`` section describes (nothing is allocated)."""
    from anytalker_core.model.checkpoint import resolve_config
    from anytalker_core.model.config import AnyTalkerConfig, read_config_json

    if section.tiny:
        return AnyTalkerConfig.tiny(**section.tiny_overrides)
    if section.config_json:
        return AnyTalkerConfig.from_dict(read_config_json(section.config_json))
    if section.init_checkpoint:
        from .parallel import checkpoint_tensors

        shapes, _ = checkpoint_tensors(section.init_checkpoint)
        hints = {}
        if section.init_checkpoint.endswith(".safetensors"):
            from safetensors import safe_open

            from anytalker_core.model.checkpoint import CONFIG_METADATA_KEY
            from anytalker_core.model.config import config_from_json

            with safe_open(section.init_checkpoint, framework="pt") as fh:
                meta = fh.metadata() or {}
            if CONFIG_METADATA_KEY in meta:
                hints = config_from_json(json.loads(meta[CONFIG_METADATA_KEY]))
        meta_sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        return resolve_config(section.init_checkpoint, meta_sd, hints)
    raise InputError("config [model]: set init_checkpoint (a released/exported DiT), config_json, or tiny = true")


def build_model(section: ModelSection, seed: int):
    """The whole DiT in float32 and train mode (all parameters trainable), identical on every process."""
    from anytalker_core.model.checkpoint import load_dit, read_state_dict
    from anytalker_core.model.dit import AnyTalkerDiT

    from .parallel import raise_on_shape_problems, shape_problems

    torch.manual_seed(seed)  # identical random init on every process
    if section.tiny or section.config_json:
        model = AnyTalkerDiT(model_config(section))
    elif section.init_checkpoint:
        model = load_dit(section.init_checkpoint, device="cpu", dtype=torch.float32)
    else:
        raise InputError("config [model]: set init_checkpoint (a released/exported DiT), config_json, or tiny = true")
    if section.init_checkpoint and (section.tiny or section.config_json):
        # start from (part of) a checkpoint, e.g. Wan2.1 I2V weights with fresh AFCA layers
        sd, _ = read_state_dict(section.init_checkpoint)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        raise_on_shape_problems(shape_problems(expected, {k: v.shape for k, v in sd.items()}),
                                section.init_checkpoint)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        log.info("initialised from %s: %d tensors loaded, %d new (random), %d ignored", section.init_checkpoint,
                 len(sd) - len(unexpected), len(missing), len(unexpected))
    model.float().train().requires_grad_(True)
    model.enable_gradient_checkpointing(section.gradient_checkpointing)
    return model
