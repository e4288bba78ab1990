"""wav2vec2 audio features for AnyTalker (``facebook/wav2vec2-base-960h``-style encoders).

The reference (``wan/utils/audio_utils.py::preprocess_audio`` + ``wan/modules/wav2vec.py``) does:

1. normalise the 16 kHz waveform like ``Wav2Vec2FeatureExtractor``: ``(x - mean) / sqrt(var + 1e-7)``
   with the population variance, in float32;
2. run the CNN feature encoder (50 Hz);
3. linearly interpolate the CNN features (``align_corners=True``) to ``T`` video frames **before**
   ``feature_projection`` and the transformer encoder;
4. stack the outputs of every transformer layer (``hidden_states[1:]``) → ``[T, L, C]``;
5. give each frame the window of frames ``clamp(t-2 … t+2)`` → ``[T, 5, L, C]``.

transformers 5.x no longer returns per-layer hidden states from the encoder, so step 4 runs the
encoder's own modules by hand (``pos_conv_embed → layer_norm → dropout → layers``), which reproduces
the reference exactly. Layer-norm-first ("stable") models are handled too: there the final
``encoder.layer_norm`` is applied to the last layer's output, as transformers 4.x reported it.

Long tracks (more than :data:`CNN_CHUNK_FRAMES` CNN frames, 10 s) run the CNN feature encoder in chunks:
its memory is what the whole track's first convolution needs (channels × samples / 5, the largest
activation of the encoder) for one pass, but one chunk's for a chunked one. The CNN is local (400-sample
receptive field, 320-sample hop), so chunks cut at frame boundaries give the same frames; the one
non-local part is the ``group`` variant's (wav2vec2-base) GroupNorm after the first convolution, which
normalises every channel over the whole track: a first pass over the chunks gathers those statistics
(per-chunk mean and variance, combined exactly in float64), the second applies them. The result equals
the one-pass features up to float32 rounding (:data:`CHUNKED_TOLERANCE`; measured ≤ 1.2e-6 of the
features' largest magnitude on espeak-ng speech, ``benchmarks/wav2vec_chunks.py``). The transformer then runs over the whole track as before (its attention is
global; PyTorch's SDPA needs no T×T matrix), so nothing else changes. Tracks up to 10 s take exactly the
one-pass path.

:class:`WindowedFeatures` holds the ``[N, F, 5, L, C]`` windowed features without their five-fold copy:
one row per encoded frame and, per window slot, the row it reads; long clips take each window's span.

Models load from a Hugging Face folder (``config.json`` + ``model.safetensors``/``pytorch_model.bin``
+ ``preprocessor_config.json``) or from one ``.safetensors`` file as ComfyUI keeps them in
``models/audio_encoders/`` (config inferred from tensor shapes; key prefixes such as ``wav2vec2.``
are accepted). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import FPS, SAMPLE_RATE
from ..errors import CheckpointError, InputError, MissingModelError
from .wav2vec_cnn import CHUNKED_TOLERANCE, CNN_CHUNK_FRAMES, feature_encoder, receptive_field
from .windowed import WindowedFeatures, window_features

log = logging.getLogger(__name__)

NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
STANDARD_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
STANDARD_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
_CONFIG_METADATA_KEY = "wav2vec2_config"
# checkpoint parts that the base model does not use (CTC head, pre-training quantiser, ...)
_IGNORED_ROOTS = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "dropout_features", "classifier.",
                  "projector.")

__all__ = [
    "Wav2VecEncoder",
    "WindowedFeatures",
    "CNN_CHUNK_FRAMES",
    "CHUNKED_TOLERANCE",
    "load_wav2vec",
    "normalize_waveform",
    "window_features",
    "video_frames_for_samples",
    "normalize_state_dict",
    "infer_wav2vec_config",
]


# ----------------------------------------------------------------------------- pure functions


def normalize_waveform(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``Wav2Vec2FeatureExtractor`` normalisation: ``(x - mean) / sqrt(var + 1e-7)``.

    Population variance (ddof 0), computed with numpy in float32 exactly as transformers does.
    ``[S]`` → ``[S]`` float32 (CPU).
    """
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().float().numpy()
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise InputError(f"wav2vec2 expects a mono waveform [S], got shape {tuple(x.shape)}")
    out = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def video_frames_for_samples(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames covered by ``num_samples`` audio samples: ``ceil(num_samples / sr * fps)``.

    Same float expression as the reference, so edge cases round the same way.
    """
    return int(math.ceil(num_samples / sample_rate * fps))




def _find_prefix(keys: list[str]) -> str:
    anchor = "feature_projection.projection.weight"
    hits = [k[: -len(anchor)] for k in keys if k.endswith(anchor)]
    if not hits:
        raise CheckpointError(
            "no 'feature_projection.projection.weight' tensor: this is not a wav2vec2 checkpoint "
            "(expected Hugging Face Wav2Vec2 key names, optionally prefixed with 'wav2vec2.')"
        )
    if len(set(hits)) > 1:
        raise CheckpointError(f"several wav2vec2 models in one file (key prefixes {sorted(set(hits))})")
    return hits[0]


def normalize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint keys to ``transformers.Wav2Vec2Model`` names.

    Accepts a prefix before the model keys (``wav2vec2.`` from ``Wav2Vec2ForCTC``, or any other
    single prefix), old weight-norm names (``weight_g``/``weight_v``) and drops heads the base model
    does not have (``lm_head``, quantiser, ...). A positional-conv weight saved without its weight norm
    (``pos_conv_embed.conv.weight``) is split back into the norm and direction tensors.
    """
    prefix = _find_prefix(list(sd))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith(_IGNORED_ROOTS):
            continue
        name = name.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        name = name.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[name] = value
    fused = "encoder.pos_conv_embed.conv.weight"
    if fused in out:  # weight norm folded into a plain weight: split it back into g (norm over dims 0, 1) and v
        weight = out.pop(fused)
        out.setdefault("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
                       torch.linalg.vector_norm(weight.float(), dim=(0, 1), keepdim=True).to(weight.dtype))
        out.setdefault("encoder.pos_conv_embed.conv.parametrizations.weight.original1", weight)
    return out


def infer_wav2vec_config(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """Wav2Vec2Config kwargs from a normalised state dict's key names and tensor shapes.

    Attention heads are not visible in shapes: ``num_heads`` if given, else ``hidden // 64`` (the
    head size of every released wav2vec2). Layer-norm-first (``do_stable_layer_norm``) is not
    visible either: released models use it exactly when the feature extractor has per-layer layer
    norms (``feat_extract_norm='layer'``, e.g. large-lv60, XLS-R), so that is assumed.
    """
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"wav2vec2 checkpoint is missing '{key}'")
        return sd[key]

    conv_re = re.compile(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
    conv_idx = sorted({int(m.group(1)) for k in sd if (m := conv_re.match(k))})
    if not conv_idx or conv_idx != list(range(len(conv_idx))):
        raise CheckpointError(
            "wav2vec2 checkpoint: feature_extractor.conv_layers.N.conv.weight missing or not numbered 0..N-1")
    conv_w = [sd[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in conv_idx]
    conv_dim = [int(w.shape[0]) for w in conv_w]
    conv_kernel = [int(w.shape[2]) for w in conv_w]
    if tuple(conv_kernel) == STANDARD_CONV_KERNEL:
        conv_stride = list(STANDARD_CONV_STRIDE)
    else:
        raise CheckpointError(
            f"wav2vec2 checkpoint has conv kernels {conv_kernel}; strides can only be inferred for the standard "
            f"{list(STANDARD_CONV_KERNEL)} - put a config.json next to the weights (Hugging Face folder layout)"
        )
    if "feature_extractor.conv_layers.1.layer_norm.weight" in sd:
        norm = "layer"
    elif "feature_extractor.conv_layers.0.layer_norm.weight" in sd:
        norm = "group"
    else:
        raise CheckpointError("wav2vec2 checkpoint: no feature-extractor norm weights (conv_layers.0.layer_norm)")
    conv_bias = "feature_extractor.conv_layers.0.conv.bias" in sd or "feature_extractor.conv_layers.1.conv.bias" in sd

    hidden = int(need("feature_projection.projection.weight").shape[0])
    layer_idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    if not layer_idx:
        raise CheckpointError("wav2vec2 checkpoint has no encoder.layers.N.* tensors")
    intermediate = int(need("encoder.layers.0.feed_forward.intermediate_dense.weight").shape[0])
    pos_w = need("encoder.pos_conv_embed.conv.parametrizations.weight.original1")  # [C, C/groups, K]
    pos_groups = hidden // int(pos_w.shape[1])
    if num_heads is None:
        if hidden % 64:
            raise CheckpointError(
                f"wav2vec2 checkpoint with hidden size {hidden}: the number of attention heads cannot be inferred "
                "(hidden is not a multiple of 64); pass num_heads or use a folder with config.json"
            )
        num_heads = hidden // 64
    if hidden % num_heads:
        raise CheckpointError(f"wav2vec2: hidden size {hidden} is not divisible by num_heads={num_heads}")
    return dict(
        hidden_size=hidden,
        num_hidden_layers=len(layer_idx),
        num_attention_heads=int(num_heads),
        intermediate_size=intermediate,
        conv_dim=conv_dim,
        conv_kernel=conv_kernel,
        conv_stride=conv_stride,
        conv_bias=conv_bias,
        feat_extract_norm=norm,
        do_stable_layer_norm=(norm == "layer"),
        num_conv_pos_embeddings=int(pos_w.shape[2]),
        num_conv_pos_embedding_groups=pos_groups,
        vocab_size=32,
    )


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors + safetensors metadata from ``.safetensors`` or a ``torch.save`` file (weights only)."""
    from ..io.weights import read_weights

    return read_weights(path, "wav2vec2 weights")


def _folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return _read_weights(folder / name)[0]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(_read_weights(folder / shard)[0])
            return sd
    raise MissingModelError(
        f"wav2vec2 folder '{folder}': no model.safetensors or pytorch_model.bin "
        "(expected a Hugging Face folder such as facebook/wav2vec2-base-960h)"
    )


# ----------------------------------------------------------------------------- the encoder


class Wav2VecEncoder:
    """A loaded wav2vec2 model that produces AnyTalker's windowed per-frame audio features.

    Attributes:
        model: the ``transformers.Wav2Vec2Model`` (eval mode) on ``device``/``dtype``.
        do_normalize: apply the feature-extractor normalisation (``preprocessor_config.json``).
    """

    def __init__(self, model: Any, do_normalize: bool = True, source: str = ""):
        self.model = model.eval()
        self.do_normalize = bool(do_normalize)
        self.source = source

    # --- properties
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Wav2VecEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return (f"Wav2VecEncoder(layers={self.num_layers}, hidden={self.hidden_size}, "
                f"device={self.device}, dtype={self.dtype}, source={self.source!r})")

    # --- steps
    def normalize(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[S]`` → ``[S]`` float32: the feature-extractor normalisation (if the model uses it)."""
        if self.do_normalize:
            return normalize_waveform(wave)
        if isinstance(wave, torch.Tensor):
            return wave.detach().cpu().float().reshape(-1)
        return torch.from_numpy(np.asarray(wave, dtype=np.float32).reshape(-1))

    @torch.no_grad()  # not inference_mode: the features may feed a trainable projection later
    def encode(self, input_values: torch.Tensor, num_frames: int, keep: int | None = None,
               chunk_frames: int = CNN_CHUNK_FRAMES) -> torch.Tensor:
        """Per-layer hidden states at video rate.

        Args:
            input_values: ``[S]`` normalised 16 kHz waveform (see :meth:`normalize`).
            num_frames: ``T``, number of video frames to interpolate the CNN features to.
            keep: return only the first ``keep`` frames (the transformer still attends over all ``T``).
            chunk_frames: CNN frames per chunk of the feature encoder (:func:`~.wav2vec_cnn.feature_encoder`); a track of
                at most this many runs in one pass.
        Returns:
            ``[T, L, C]`` (``[keep, L, C]``) float32 on the model's device: the output of every transformer
            layer.
        """
        model = self.model
        if input_values.ndim != 1:
            raise InputError(f"wav2vec2 input must be a mono waveform [S], got shape {tuple(input_values.shape)}")
        if num_frames < 1:
            raise InputError(f"wav2vec2: num_frames must be at least 1, got {num_frames}")
        receptive = receptive_field(model.config)
        if input_values.numel() < receptive:
            raise InputError(
                f"audio too short for wav2vec2: {input_values.numel()} samples, need at least {receptive} "
                f"({receptive / SAMPLE_RATE * 1000:.0f} ms at 16 kHz)"
            )
        keep = int(num_frames) if keep is None else min(int(keep), int(num_frames))
        x = input_values.to(device=self.device, dtype=self.dtype)[None]  # [1, S]
        cnn = feature_encoder(model, x, chunk_frames)  # [1, C_conv, T50]
        del x
        cnn = F.interpolate(cnn, size=int(num_frames), mode="linear", align_corners=True)  # [1, C_conv, T]
        hidden, _ = model.feature_projection(cnn.transpose(1, 2))  # [1, T, C]
        encoder = model.encoder
        hidden = hidden + self._pos_conv(hidden)
        stable = bool(model.config.do_stable_layer_norm)
        if not stable:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        outputs = []
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask=None)
            if isinstance(hidden, tuple):  # older transformers return (hidden, attn)
                hidden = hidden[0]
            outputs.append(hidden[:, :keep])
        if stable:  # transformers 4.x reported the final layer after encoder.layer_norm
            outputs[-1] = encoder.layer_norm(hidden)[:, :keep]
        return torch.stack(outputs, dim=2)[0].float()  # [keep, L, C]

    def _pos_conv(self, hidden: torch.Tensor) -> torch.Tensor:
        """``encoder.pos_conv_embed``; on CPU in bfloat16 its grouped conv runs in float32, because
        PyTorch's CPU bf16 grouped ``conv1d`` returns wrong values (seen with torch 2.13)."""
        module = self.model.encoder.pos_conv_embed
        if hidden.device.type != "cpu" or hidden.dtype != torch.bfloat16:
            return module(hidden)
        conv = module.conv
        bias = None if conv.bias is None else conv.bias.float()
        x = F.conv1d(hidden.transpose(1, 2).float(), conv.weight.float(), bias, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups)  # [1, C, T(+1)]
        x = module.activation(module.padding(x))
        return x.transpose(1, 2).to(hidden.dtype)

    def features(self, wave_16k: torch.Tensor | np.ndarray, num_frames: int | None = None,
                 fps: float = FPS) -> torch.Tensor:
        """Windowed features of one track, as the reference's ``preprocess_audio``.

        Args:
            wave_16k: ``[S]`` mono 16 kHz waveform (not normalised).
            num_frames: ``T``; default ``ceil(S / 16000 * fps)``.
            fps: video frame rate, used only when ``num_frames`` is None.
        Returns:
            ``[T, 5, L, C]`` float32 on CPU.
        """
        values = self.normalize(wave_16k)
        if num_frames is None:
            num_frames = video_frames_for_samples(values.numel(), fps)
        return window_features(self.encode(values, num_frames)).cpu()



def _build_model(config_kwargs: dict[str, Any] | Any, sd: dict[str, torch.Tensor], source: str) -> Any:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = config_kwargs if isinstance(config_kwargs, Wav2Vec2Config) else Wav2Vec2Config(**config_kwargs)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = Wav2Vec2Model(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and k != "masked_spec_embed"]
    if missing:
        raise CheckpointError(
            f"wav2vec2 weights '{source}' do not fit the model: {len(missing)} tensors missing "
            f"(first: {missing[:4]}); expected a facebook/wav2vec2-style checkpoint"
        )
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"wav2vec2 weights '{source}' have unexpected shapes: {bad[:4]}")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        log.debug("wav2vec2 '%s': ignoring %d unused tensors (e.g. %s)", source, len(unexpected), unexpected[:3])
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False, assign=True)
    if "masked_spec_embed" not in sd:  # only used for training-time masking
        model.masked_spec_embed = torch.nn.Parameter(torch.zeros(config.hidden_size))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"wav2vec2 weights '{source}': tensors not set by the file: {left[:4]}")
    return model.float()


def load_wav2vec(
    path_or_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_heads: int | None = None,
) -> Wav2VecEncoder:
    """Load a wav2vec2 encoder from a Hugging Face folder or a single weights file.

    Args:
        path_or_dir: a folder with ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``)
            and optionally ``preprocessor_config.json``; or one ``.safetensors``/``.bin`` file (e.g.
            ComfyUI's ``models/audio_encoders/wav2vec2-base-960h.safetensors``). A single file uses
            a ``config.json`` beside it if present, else its embedded config, else one inferred from
            tensor shapes.
        device, dtype: where the model runs. Features are always returned as float32.
        num_heads: attention heads, only needed for single files with a non-standard head size.
    """
    from transformers import Wav2Vec2Config

    path = Path(path_or_dir)
    if not path.exists():
        raise MissingModelError(
            f"wav2vec2 model '{path}' not found; put facebook/wav2vec2-base-960h (Hugging Face folder) or its "
            "single .safetensors file under ComfyUI/models/audio_encoders/ (or pass the path)"
        )
    do_normalize = True
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise MissingModelError(f"wav2vec2 folder '{path}': no config.json (expected a Hugging Face model folder)")
        try:
            config: Any = Wav2Vec2Config.from_json_file(str(cfg_file))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"wav2vec2 config '{cfg_file}' is not valid ({exc})") from None
        sd = normalize_state_dict(_folder_weights(path))
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            pre_cfg = json.loads(pre.read_text())
            do_normalize = bool(pre_cfg.get("do_normalize", True))
            rate = pre_cfg.get("sampling_rate", SAMPLE_RATE)
            if rate != SAMPLE_RATE:
                raise CheckpointError(
                    f"wav2vec2 '{path}': sampling_rate {rate} in preprocessor_config.json, expected 16000")
    else:
        raw, meta = _read_weights(path)
        sd = normalize_state_dict(raw)
        side = path.parent / "config.json"
        if _CONFIG_METADATA_KEY in meta:
            config = json.loads(meta[_CONFIG_METADATA_KEY])
        elif side.is_file() and json.loads(side.read_text()).get("model_type") == "wav2vec2":
            config = Wav2Vec2Config.from_json_file(str(side))
        else:
            config = infer_wav2vec_config(sd, num_heads=num_heads)
            log.info("wav2vec2 '%s': inferred config hidden=%d layers=%d heads=%d norm=%s stable_ln=%s",
                     path.name, config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                     config["feat_extract_norm"], config["do_stable_layer_norm"])
        if isinstance(config, dict) and "do_normalize" in config:
            do_normalize = bool(config.pop("do_normalize"))
        if num_heads is not None and isinstance(config, dict):
            config["num_attention_heads"] = int(num_heads)
    model = _build_model(config, sd, str(path))
    model.to(device=device, dtype=dtype)
    return Wav2VecEncoder(model, do_normalize=do_normalize, source=str(path))


def wav2vec_from_state_dict(sd: dict[str, torch.Tensor], num_heads: int | None = None, source: str = "state dict",
                            device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Wav2VecEncoder:
    """A :class:`Wav2VecEncoder` from an in-memory wav2vec2 state dict (e.g. the weights of an encoder another
    program already loaded), with the reference's feature path: input normalisation on, as
    ``wav2vec2-base-960h``'s ``preprocessor_config.json`` asks. The config is inferred from the tensors.

    Raises :class:`CheckpointError` naming ``source`` when the tensors are not a wav2vec2 model.
    """
    sd = normalize_state_dict(sd)
    config = infer_wav2vec_config(sd, num_heads=num_heads)
    model = _build_model(config, sd, source)
    model.to(device=device, dtype=dtype)
    return Wav2VecEncoder(model, do_normalize=True, source=source)


# ----------------------------------------------------------------------------- tiny models
