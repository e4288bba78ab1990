"""The DiT's configuration: one dataclass, read from the reference's config JSON or inferred from weights.

The released checkpoints come with ``config_af2v_*.json`` holding the reference ``WanModel.__init__``
keyword arguments. Those files are not always at hand (ComfyUI users keep only the weights), and the
reference's own loader silently ignores some keys (``text_dim``, ``patch_size``...), so every size
that a tensor shape determines is taken from the state dict; the JSON only supplies what shapes
cannot tell (number of heads, ``eps``, ``text_len``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ..constants import PATCH_SIZE
from ..errors import CheckpointError

AfcaVariant = Literal["fused", "legacy"]

WAN_HEAD_DIM = 128  # every released Wan2.1 model uses 128-wide attention heads


@dataclass(frozen=True)
class AnyTalkerConfig:
    """Sizes and switches of the AnyTalker DiT (Wan2.1 I2V + Audio-Face Cross Attention).

    ``afca`` selects the variant: ``"fused"`` (AFCA inside cross-attention, the 1.3B release) or
    ``"legacy"`` (a per-frame audio sublayer after cross-attention, the 14B release).
    """

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 36
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    patch_size: tuple[int, int, int] = PATCH_SIZE
    afca: AfcaVariant = "fused"
    clip_dim: int = 1280  # width of the CLIP ViT-H/14 tokens (image and face)
    audio_window: int = 5  # wav2vec2 frames per video frame (t-2 .. t+2)
    audio_layers: int = 12  # stacked wav2vec2 hidden layers
    audio_channels: int = 768  # wav2vec2 hidden size
    audio_intermediate_dim: int = 512  # hidden width of the audio projection MLP
    audio_context_tokens: int = 32  # audio tokens per video frame (fused) / latent frame (legacy)
    audio_output_dim: int = 768  # legacy only: width of the audio tokens (fused uses ``dim``)
    vae_scale: int = 4  # video frames per latent frame (after the first)

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise CheckpointError(f"config: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.afca not in ("fused", "legacy"):
            raise CheckpointError(f"config: afca must be 'fused' or 'legacy', got {self.afca!r}")
        if (self.dim // self.num_heads) % 2:
            raise CheckpointError(f"config: head dim {self.dim // self.num_heads} must be even for RoPE")
        if self.afca == "fused":  # fused audio tokens are DiT-wide; the reference JSON's value is unused
            object.__setattr__(self, "audio_output_dim", self.dim)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def audio_frame_features(self) -> int:
        """Flattened size of one video frame's windowed wav2vec2 features."""
        return self.audio_window * self.audio_layers * self.audio_channels

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AnyTalkerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(kwargs["patch_size"])
        return cls(**kwargs)

    @classmethod
    def tiny(cls, afca: AfcaVariant = "fused", **overrides: Any) -> "AnyTalkerConfig":
        """A few-MB model for tests and ``--demo``; widths can be matched to tiny encoders."""
        base = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32, clip_dim=32,
                    audio_layers=2, audio_channels=32, audio_intermediate_dim=16,
                    audio_output_dim=16, afca=afca)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> "AnyTalkerConfig":
        return dataclasses.replace(self, **changes)


# Reference config-JSON keys (``WanModel.__init__`` kwargs) that map onto ours.
_REFERENCE_KEYS = {
    "dim": "dim", "ffn_dim": "ffn_dim", "num_heads": "num_heads", "num_layers": "num_layers",
    "in_dim": "in_dim", "out_dim": "out_dim", "text_dim": "text_dim", "freq_dim": "freq_dim",
    "text_len": "text_len", "eps": "eps", "qk_norm": "qk_norm", "cross_attn_norm": "cross_attn_norm",
    "patch_size": "patch_size", "audio_window": "audio_window", "context_tokens": "audio_context_tokens",
    "audio_output_dim": "audio_output_dim", "vae_scale": "vae_scale", "intermediate_dim": "audio_intermediate_dim",
}


def config_from_json(data: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Translate a reference config JSON (or our own saved config) into AnyTalkerConfig fields.

    Returns a partial dict: shape-determined fields are later checked against the weights. Anything that
    is not a JSON object of sensible values raises :class:`CheckpointError` naming ``source``.
    """
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object of model settings, got {type(data).__name__}")
    try:
        return _config_from_json(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: a setting has the wrong type or value ({exc})") from None


def _config_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    if "afca" in data:  # our own format
        return dict(AnyTalkerConfig.from_dict(data).to_dict())
    out: dict[str, Any] = {}
    for key, ours in _REFERENCE_KEYS.items():
        if key in data:
            out[ours] = data[key]
    if "patch_size" in out:
        out["patch_size"] = tuple(out["patch_size"])
    out["afca"] = "legacy" if data.get("legacy_audio_cross_attn", False) else "fused"
    return out


def read_config_json(path: str | Path) -> dict[str, Any]:
    from ..io.json_files import read_json

    path = Path(path)
    return config_from_json(read_json(path, "config", CheckpointError, hint="of model settings"),
                            f"config '{path}'")


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str = "checkpoint") -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{source}: the weight '{key}' is missing (an incomplete or damaged AnyTalker "
                              "checkpoint; download it again)")
    return tuple(sd[key].shape)


def infer_from_state_dict(sd: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None,
                          source: str = "checkpoint") -> AnyTalkerConfig:
    """Build the config from tensor shapes and key presence; ``hints`` fill what shapes cannot tell.

    Raises CheckpointError when the weights are not an AnyTalker DiT (e.g. a plain Wan model) or
    when a hint contradicts the weights.
    """
    try:
        return _infer(sd, hints, source)
    except (TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{source}: the weights have unexpected shapes, or the config unexpected values, "
                              f"for an AnyTalker DiT ({exc})") from None


def _infer(sd: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None, source: str) -> AnyTalkerConfig:
    hints = dict(hints or {})
    required = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                "head.head.weight", "blocks.0.self_attn.q.weight", "img_emb.proj.1.weight"]
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(
            f"{source}: not a Wan2.1 I2V DiT state dict (missing {', '.join(missing)})")
    fused = "blocks.0.cross_attn.k_audio.weight" in sd
    legacy = "blocks.0.audio_cross_attn.kv_linear.weight" in sd
    if not fused and not legacy:
        raise CheckpointError(
            f"{source}: this is a plain Wan2.1 model without AnyTalker's Audio-Face Cross Attention weights "
            "(no blocks.N.cross_attn.k_audio nor blocks.N.audio_cross_attn). Load an AnyTalker checkpoint "
            "such as 1_3B-single-v1.pth or 14B-multi-v1.pth.")
    if fused and legacy:
        raise CheckpointError(f"{source}: holds both fused and legacy AFCA weights; cannot tell the variant")

    dim, in_dim, *patch = _shape(sd, source=source, key="patch_embedding.weight")
    num_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    head_out = _shape(sd, source=source, key="head.head.weight")[0]
    found: dict[str, Any] = dict(
        dim=dim, in_dim=in_dim, patch_size=tuple(patch), num_layers=num_layers,
        out_dim=head_out // math.prod(patch),
        ffn_dim=_shape(sd, source=source, key="blocks.0.ffn.0.weight")[0],
        text_dim=_shape(sd, source=source, key="text_embedding.0.weight")[1],
        freq_dim=_shape(sd, source=source, key="time_embedding.0.weight")[1],
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd,
        clip_dim=_shape(sd, source=source, key="img_emb.proj.1.weight")[1],
        afca="fused" if fused else "legacy",
    )
    if fused:
        inter, frame_feats = _shape(sd, source=source, key="audio_emb.proj1.weight")
        found["audio_intermediate_dim"] = inter
        found["audio_context_tokens"] = _shape(sd, source=source, key="audio_emb.proj3.weight")[0] // dim
        found["audio_output_dim"] = dim
    else:
        inter, frame_feats = _shape(sd, source=source, key="audio_proj.proj1.weight")
        found["audio_intermediate_dim"] = inter
        out_dim = _shape(sd, source=source, key="audio_proj.norm.weight")[0]
        found["audio_output_dim"] = out_dim
        found["audio_context_tokens"] = _shape(sd, source=source, key="audio_proj.proj3.weight")[0] // out_dim

    merged = {**AnyTalkerConfig().to_dict(), **hints, **{k: v for k, v in found.items()}}
    # Hints that shapes contradict are a wrong config file, except the reference's own quirk:
    # the fused branch ignores the JSON's intermediate_dim / audio_output_dim.
    tolerated = {"audio_intermediate_dim", "audio_output_dim"} if fused else set()
    conflicts = [f"{k}: config says {hints[k]!r}, weights say {found[k]!r}"
                 for k in found if k in hints and k not in tolerated and _norm(hints[k]) != _norm(found[k])]
    if conflicts:
        raise CheckpointError(f"{source}: the config does not match the weights ({'; '.join(conflicts)})")
    if "num_heads" not in hints:
        if dim % WAN_HEAD_DIM:
            raise CheckpointError(
                f"{source}: cannot infer num_heads for dim {dim} (not a multiple of {WAN_HEAD_DIM}); "
                "pass the model's config JSON")
        merged["num_heads"] = dim // WAN_HEAD_DIM
    # the flattened per-frame audio window = window x layers x channels
    window, layers, channels = merged["audio_window"], merged["audio_layers"], merged["audio_channels"]
    if window * layers * channels != frame_feats:
        raise CheckpointError(
            f"{source}: audio projection expects {frame_feats} features per video frame, but the config's "
            f"audio window {window} x {layers} layers x {channels} channels = {window * layers * channels}; "
            "pass a config JSON with audio_layers/audio_channels matching your wav2vec2 model")
    return AnyTalkerConfig.from_dict(merged)


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
