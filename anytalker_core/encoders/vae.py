"""Wan2.1 video VAE (causal 3D, stride 4×8×8, 16 latent channels) run by diffusers' ``AutoencoderKLWan``.

Accepted weights:

* ComfyUI: ``models/vae/wan_2.1_vae.safetensors`` and Wan's ``Wan2.1_VAE.pth`` -- the original Wan key layout
  (``encoder.conv1``, ``encoder.downsamples.{i}.residual.{0,2,3,6}``, ``decoder.upsamples.{k}``,
  ``{en,de}coder.middle.{0,1,2}``, ``{en,de}coder.head.{0,2}``, top-level ``conv1``/``conv2``), remapped to
  diffusers names as in diffusers' ``scripts/convert_wan_to_diffusers.py`` (generalised to any depth).
* diffusers: a single file with diffusers key names, a folder with ``config.json`` +
  ``diffusion_pytorch_model.safetensors``, or a pipeline folder with a ``vae/`` subfolder.

Latents are normalised as Wan does: ``z = (mu - mean) * (1 / std)`` per channel with the 16-channel Wan2.1
statistics (:data:`WAN21_LATENTS_MEAN` / :data:`WAN21_LATENTS_STD`); the encoder returns the posterior mean
(no sampling) and the decoder output is clamped to ``-1..1``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError, MissingModelError
from ..io.weights import (LazyStateDict, describe_checkpoint, is_quant_key, load_into_empty, strip_prefix,
                          to_compute_dtype)
from .onednn_conv import route_convolutions_through_onednn

log = logging.getLogger(__name__)

__all__ = [
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "WanVAE",
    "diffusers_to_wan_key",
    "encode_first_frame_condition",
    "load_vae",
    "make_tiny_vae",
    "wan_to_diffusers_key",
]

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

_WHAT = "Wan2.1 VAE"
_WAN_SIGNATURE = "decoder.middle.0.residual.0.gamma"
_DIFFUSERS_SIGNATURE = "decoder.mid_block.resnets.0.norm1.gamma"

# ResidualBlock: residual = [RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d]
_RESIDUAL = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_RESIDUAL_INV = {v: k for k, v in _RESIDUAL.items()}
# whole-model keys and the stem/head layers of the encoder and decoder, Wan name -> diffusers name
_TOP = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
        "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
_TOP_INV = {v: k for k, v in _TOP.items()}
_ENDS = (("conv1.", "conv_in."), ("head.0.gamma", "norm_out.gamma"), ("head.2.", "conv_out."))


def _rename_ends(key: str, top: dict[str, str], ends: tuple[tuple[str, str], ...]) -> str | tuple[str, str]:
    """The renamed key when it is a whole-model or stem/head key (or not an encoder/decoder key at all:
    unchanged); otherwise its ``(part, rest)`` for the block rules of the caller."""
    if key in top:
        return top[key]
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return key
    part, rest = m.groups()
    for old, new in ends:
        if rest.startswith(old):
            return f"{part}.{new}{rest[len(old):]}"
    return part, rest


# --------------------------------------------------------------------------------------------- key layouts


def wan_to_diffusers_key(key: str, num_res_blocks: int) -> str:
    """Original Wan / ComfyUI VAE key -> ``AutoencoderKLWan`` key (unknown keys are returned unchanged).

    ``num_res_blocks`` fixes the decoder grouping: each decoder stage holds ``num_res_blocks + 1`` residual
    blocks followed (except in the last stage) by one upsampler, flattened in Wan's ``upsamples`` list.
    """
    renamed = _rename_ends(key, _TOP, _ENDS)
    if isinstance(renamed, str):
        return renamed
    part, rest = renamed
    m = re.fullmatch(r"middle\.(\d)\.(.+)", rest)
    if m:
        idx, sub = int(m.group(1)), m.group(2)
        if idx == 1:
            return f"{part}.mid_block.attentions.0.{sub}"
        return f"{part}.mid_block.resnets.{idx // 2}.{_RESIDUAL.get(sub, sub)}"
    m = re.fullmatch(r"downsamples\.(\d+)\.(.+)", rest)
    if m and part == "encoder":
        return f"encoder.down_blocks.{m.group(1)}.{_RESIDUAL.get(m.group(2), m.group(2))}"
    m = re.fullmatch(r"upsamples\.(\d+)\.(.+)", rest)
    if m and part == "decoder":
        k, sub = int(m.group(1)), m.group(2)
        stage, j = divmod(k, num_res_blocks + 2)
        if j <= num_res_blocks:
            return f"decoder.up_blocks.{stage}.resnets.{j}.{_RESIDUAL.get(sub, sub)}"
        return f"decoder.up_blocks.{stage}.upsamplers.0.{sub}"
    return key


def diffusers_to_wan_key(key: str, num_res_blocks: int) -> str:
    """Inverse of :func:`wan_to_diffusers_key` (writes ComfyUI-layout files from a diffusers model)."""
    renamed = _rename_ends(key, _TOP_INV, tuple((new, old) for old, new in _ENDS))
    if isinstance(renamed, str):
        return renamed
    part, rest = renamed
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)
    if m:
        return f"{part}.middle.1.{m.group(1)}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest)
    if m:
        return f"{part}.middle.{2 * int(m.group(1))}.{_RESIDUAL_INV.get(m.group(2), m.group(2))}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)
    if m and part == "encoder":
        return f"encoder.downsamples.{m.group(1)}.{_RESIDUAL_INV.get(m.group(2), m.group(2))}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m and part == "decoder":
        k = int(m.group(1)) * (num_res_blocks + 2) + int(m.group(2))
        return f"decoder.upsamples.{k}.{_RESIDUAL_INV.get(m.group(3), m.group(3))}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest)
    if m and part == "decoder":
        k = int(m.group(1)) * (num_res_blocks + 2) + num_res_blocks + 1
        return f"decoder.upsamples.{k}.{m.group(2)}"
    return key


def _wan_num_res_blocks(keys: list[str]) -> int:
    """Residual blocks per encoder stage, from the position of the first encoder downsampler."""
    resample = sorted(int(m.group(1)) for k in keys for m in [re.match(r"encoder\.downsamples\.(\d+)\.resample\.", k)] if m)
    if resample:
        return resample[0]
    blocks = {int(m.group(1)) for k in keys for m in [re.match(r"encoder\.downsamples\.(\d+)\.", k)] if m}
    return len(blocks)


def _config_from_diffusers_keys(sd: dict[str, torch.Tensor], path: Path) -> dict:
    """``AutoencoderKLWan`` constructor arguments inferred from tensor shapes."""
    try:
        base_dim = int(sd["encoder.conv_in.weight"].shape[0])
        z_dim = int(sd["post_quant_conv.weight"].shape[0])
        decoder_base_dim = int(sd["decoder.conv_out.weight"].shape[1])
        in_channels = int(sd["encoder.conv_in.weight"].shape[1])
    except KeyError as exc:
        raise CheckpointError(f"{_WHAT}: {path} lacks the weight {exc} needed to infer the model size") from exc
    indices = sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down_blocks\.(\d+)\.", k)] if m})
    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for i in indices:
        if f"encoder.down_blocks.{i}.resample.1.weight" in sd:
            temporal.append(f"encoder.down_blocks.{i}.time_conv.weight" in sd)
            stages.append([])
        elif f"encoder.down_blocks.{i}.conv2.weight" in sd:
            stages[-1].append(i)
        else:
            raise CheckpointError(f"{_WHAT}: {path}: encoder block {i} is neither a residual block nor a resampler "
                                  f"(attention inside the encoder stages is not a Wan2.1 VAE)")
    if not stages[0] or any(len(s) != len(stages[0]) for s in stages):
        raise CheckpointError(f"{_WHAT}: {path}: uneven encoder stages {[len(s) for s in stages]}")
    dim_mult = [int(sd[f"encoder.down_blocks.{s[-1]}.conv2.weight"].shape[0]) // base_dim for s in stages]
    if z_dim != len(WAN21_LATENTS_MEAN):
        raise CheckpointError(
            f"{path} has {z_dim} latent channels; AnyTalker needs the Wan2.1 VAE with 16 (wan_2.1_vae.safetensors). "
            f"The Wan2.2 VAE (48 channels) does not fit this model."
        )
    config = {
        "base_dim": base_dim, "z_dim": z_dim, "dim_mult": dim_mult, "num_res_blocks": len(stages[0]),
        "attn_scales": [], "temperal_downsample": temporal, "dropout": 0.0,
        "latents_mean": list(WAN21_LATENTS_MEAN), "latents_std": list(WAN21_LATENTS_STD),
    }
    if decoder_base_dim != base_dim:
        config["decoder_base_dim"] = decoder_base_dim
    if in_channels != 3:
        config["in_channels"] = in_channels
    return config


def _state_dict_from_file(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    sd = LazyStateDict(path, _WHAT)
    keys = list(sd.keys())
    prefix = strip_prefix(keys, _WAN_SIGNATURE)
    if prefix is not None:
        stripped = [k[len(prefix):] for k in keys if k.startswith(prefix)]
        nrb = _wan_num_res_blocks(stripped)
        return {
            wan_to_diffusers_key(k[len(prefix):], nrb): to_compute_dtype(sd, k, dtype, _WHAT, path)
            for k in keys if k.startswith(prefix) and not is_quant_key(k)
        }
    prefix = strip_prefix(keys, _DIFFUSERS_SIGNATURE)
    if prefix is not None:
        return {k[len(prefix):]: to_compute_dtype(sd, k, dtype, _WHAT, path)
                for k in keys if k.startswith(prefix) and not is_quant_key(k)}
    raise CheckpointError(
        f"{path} is not a {_WHAT}: it looks like {describe_checkpoint(keys)}. Expected ComfyUI's "
        f"wan_2.1_vae.safetensors / Wan's Wan2.1_VAE.pth (keys like '{_WAN_SIGNATURE}') or a diffusers "
        f"AutoencoderKLWan (keys like '{_DIFFUSERS_SIGNATURE}'), in models/vae/."
    )


# --------------------------------------------------------------------------------------------- model


class WanVAE:
    """Wan2.1 VAE with Wan's latent normalisation.

    Attributes:
        z_dim: latent channels (16).
        temporal_stride, spatial_stride: 4 and 8 (video frames per latent frame after the first; pixels per latent).
    """

    temporal_stride = 4
    spatial_stride = 8

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        route_convolutions_through_onednn(model)  # no unfolded column buffers on the CPU (onednn_conv)
        self.model = model
        self.device = device
        self.dtype = dtype
        config = model.config
        self.z_dim = int(config.z_dim)
        mean = config.latents_mean if config.latents_mean is not None else WAN21_LATENTS_MEAN
        std = config.latents_std if config.latents_std is not None else WAN21_LATENTS_STD
        self.latents_mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        self.latents_inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)

    def to(self, device: str | torch.device) -> WanVAE:
        """Move the model and the latent statistics to ``device``; returns ``self``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.latents_mean = self.latents_mean.to(self.device)
        self.latents_inv_std = self.latents_inv_std.to(self.device)
        return self

    def set_tiling(self, enabled: bool) -> None:
        """Spatial tiling in diffusers (lower peak memory for large frames, tiny seams possible)."""
        if enabled:
            self.model.enable_tiling()
        else:
            self.model.disable_tiling()

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video [B, 3, T, H, W]`` in -1..1 (T = 4n+1, H and W multiples of 8) -> ``[B, 16, 1+(T-1)//4, H/8, W/8]``.

        Returns the normalised posterior mean in float32.
        """
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise InputError(f"VAE encode: video must be a tensor [B, 3, T, H, W], got {shape}")
        _, _, t, h, w = video.shape
        if (t - 1) % self.temporal_stride:
            raise InputError(f"VAE encode: the frame count must be 4n+1 (1, 5, 9, ..., 81), got {t}")
        if h % self.spatial_stride or w % self.spatial_stride:
            raise InputError(f"VAE encode: height and width must be multiples of 8, got {h}×{w}")
        if not video.is_floating_point():
            raise InputError(f"VAE encode: video must be float in -1..1, got {video.dtype}")
        low, high = torch.aminmax(video)  # no |video| copy of a whole clip
        peak = max(-float(low), float(high))
        if peak > 1.5:
            raise InputError(f"VAE encode: video values must lie in -1..1, found magnitude {peak:.3g} "
                             f"(0..255 or 0..1 images must be scaled first: x * 2 - 1)")
        posterior = self.model.encode(video.to(self.device, self.dtype)).latent_dist
        mu = posterior.mode().float()
        return (mu - self.latents_mean) * self.latents_inv_std

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised ``latent [B, 16, F, h, w]`` -> ``video [B, 3, 4(F-1)+1, 8h, 8w]`` in -1..1 (float32)."""
        if not isinstance(latent, torch.Tensor) or latent.dim() != 5 or latent.shape[1] != self.z_dim:
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise InputError(f"VAE decode: latent must be a tensor [B, {self.z_dim}, F, h, w], got {shape}")
        z = latent.to(self.device, torch.float32) / self.latents_inv_std + self.latents_mean
        model = self.model
        if model.use_tiling or model.config.patch_size is not None or not hasattr(model, "_feat_map"):
            video = model.decode(z.to(self.dtype)).sample
        else:
            video = _decode_into_one_buffer(model, z.to(self.dtype))
        return video.float().clamp_(-1.0, 1.0)


def _decode_into_one_buffer(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """diffusers' ``AutoencoderKLWan._decode`` (one latent frame at a time through the causal decoder and its
    feature cache; the same calls, so the same values) writing each frame's output into one preallocated
    video instead of ``torch.cat``-ing it onto the frames so far, which allocates a new, larger copy of
    the whole video for every latent frame (21 of them for 81 frames; the freed ones are what made the
    process's resident memory during a decode several times the video's size, and different each time).
    ``z [B, 16, F, h, w]`` (denormalised) -> ``[B, 3, 4(F-1)+1, 8h, 8w]`` clamped to -1..1."""
    frames = int(z.shape[2])
    model.clear_cache()
    x = model.post_quant_conv(z)
    out, pos = None, 0
    for i in range(frames):
        model._conv_idx = [0]
        part = model.decoder(x[:, :, i:i + 1], feat_cache=model._feat_map, feat_idx=model._conv_idx,
                             first_chunk=i == 0)
        if out is None:
            out = part.new_empty(part.shape[0], part.shape[1], 1 + 4 * (frames - 1), *part.shape[3:])
        out[:, :, pos:pos + part.shape[2]] = part
        pos += int(part.shape[2])
        del part
    model.clear_cache()
    if pos != out.shape[2]:
        raise RuntimeError(f"VAE decode: the decoder produced {pos} frames, expected {out.shape[2]}")
    return out.clamp_(-1.0, 1.0)


def encode_first_frame_condition(vae: WanVAE, image: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Wan I2V first-frame latent: encode ``[image, zeros × (num_frames - 1)]`` as one video.

    Args:
        vae: the loaded VAE.
        image: ``[B, 3, H, W]`` in -1..1 (already at the generation size).
        num_frames: video frames (4n+1).

    Returns:
        ``[B, 16, 1 + (num_frames - 1) // 4, H/8, W/8]`` (the last 16 channels of the DiT's ``y``).
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"first-frame condition: image must be a tensor [B, 3, H, W] in -1..1, got {shape}")
    if num_frames < 1 or (num_frames - 1) % 4:
        raise InputError(f"first-frame condition: num_frames must be 4n+1, got {num_frames}")
    b, c, h, w = image.shape
    video = torch.zeros(b, c, num_frames, h, w, dtype=image.dtype, device=image.device)
    video[:, :, 0] = image
    return vae.encode(video)


def _from_diffusers_folder(folder: Path, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{_WHAT}: cannot read {folder / 'config.json'}: {exc}") from exc
    if config.get("_class_name") not in (None, "AutoencoderKLWan"):
        raise CheckpointError(f"{folder} holds a diffusers {config.get('_class_name')}, expected AutoencoderKLWan")
    if int(config.get("z_dim", 16)) != 16:
        raise CheckpointError(f"{folder}: z_dim {config.get('z_dim')} is not the Wan2.1 VAE (16 latent channels)")
    try:
        model = AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{_WHAT}: cannot load the diffusers folder {folder}: {exc}") from exc
    return model.to(device).eval().requires_grad_(False)


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    """Load the Wan2.1 VAE from ``wan_2.1_vae.safetensors``, ``Wan2.1_VAE.pth`` or a diffusers file/folder.

    Raises:
        MissingModelError: nothing at ``path``.
        CheckpointError: not a Wan2.1 VAE (the message says what the file looks like), or damaged.
    """
    from diffusers import AutoencoderKLWan

    path = Path(path)
    device = torch.device(device)
    if not path.exists():
        raise MissingModelError(
            f"{_WHAT} not found: {path}. Put wan_2.1_vae.safetensors (Comfy-Org/Wan_2.1_ComfyUI_repackaged, "
            f"split_files/vae) in ComfyUI's models/vae/."
        )
    if path.is_dir():
        model = _from_diffusers_folder(path, device, dtype)
    else:
        state = _state_dict_from_file(path, dtype)
        config = _config_from_diffusers_keys(state, path)
        state = {k: v.to(device) for k, v in state.items()}
        model = load_into_empty(lambda: AutoencoderKLWan(**config), state, what=_WHAT, path=path)
    log.info("loaded %s from %s on %s/%s", _WHAT, path, device, dtype)
    return WanVAE(model, device, dtype)


def make_tiny_vae(
    path: str | Path,
    *,
    layout: str = "comfy",
    base_dim: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random Wan2.1 VAE (real depth and strides, narrow channels, 16 latent channels).

    Args:
        path: ``layout="comfy"``: a ``wan_2.1_vae.safetensors``-style file (original Wan key names);
            ``layout="diffusers"``: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``.
        base_dim: the first stage width (96 in the real VAE); 4 keeps the file under 1 MB.
    """
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    if layout not in ("comfy", "diffusers"):
        raise InputError(f"make_tiny_vae: layout must be 'comfy' or 'diffusers', got {layout!r}")
    path = Path(path)
    torch.manual_seed(seed)  # diffusers initialises with the global generator; reseeded below anyway
    model = AutoencoderKLWan(base_dim=base_dim, z_dim=16)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("gamma"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.05 * noise)
            else:
                fan_in = max(1, param[0].numel())
                param.copy_(noise * fan_in ** -0.5)
    if layout == "diffusers":
        model.save_pretrained(str(path), safe_serialization=True)
        return path
    nrb = int(model.config.num_res_blocks)
    state = {diffusers_to_wan_key(k, nrb): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
