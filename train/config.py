"""TOML configs for ``anytalker-train prepare`` and ``anytalker-train fit``.

Each config is a dataclass; :func:`load_toml` reads a file, rejects unknown keys (typos fail loudly
instead of silently training with defaults) and resolves relative paths against the file's folder.
See ``train/configs/*.toml`` for commented examples of every key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from anytalker_core.constants import FPS, MAX_AREA, SIZE_MULTIPLE, WINDOW_FRAMES
from anytalker_core.errors import InputError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the 'tomli' package (the [train] extra)
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

log = logging.getLogger(__name__)

__all__ = ["PrepareConfig", "TrainConfig", "ModelSection", "load_toml", "from_mapping"]

DEFAULT_TWO_PERSON_PROMPTS = (
    "Two people are talking to each other, side by side, facing the camera.",
    "Two people sit next to each other and take turns speaking, with natural expressions.",
    "A conversation between two people shown side by side, each reacting while the other speaks.",
    "Two speakers in a video call, one on the left and one on the right, talking and listening.",
)
DEFAULT_PROMPT = "A person is talking to the camera with natural facial expressions and head movements."


@dataclass
class PrepareConfig:
    """Settings of the data preparation stage (clips → cached samples)."""

    input: str = ""  # a folder of clips (searched recursively) or a manifest .jsonl / .txt
    output: str = ""  # the cache folder (samples/, reports/, shared_embeddings.safetensors)
    # model files (frozen encoders); ComfyUI layout names are fine
    vae: str = ""
    clip_vision: str = ""
    text_encoder: str = ""
    wav2vec: str = ""
    face_detector: str = "mediapipe"  # "mediapipe" | "insightface"
    insightface_root: str = ""
    device: str = "cpu"
    dtype: str = "float32"  # encoder dtype: float32 | bfloat16 | float16
    storage_dtype: str = "bfloat16"  # dtype of the cached float tensors
    # "folder": samples/<id>.safetensors + .json; "shards": tar shards + one index per shard (train/shards.py)
    cache_format: str = "folder"
    # clip geometry
    fps: float = float(FPS)
    max_frames: int = WINDOW_FRAMES  # 4n+1
    min_frames: int = 17  # 4n+1; shorter clips are dropped
    segments_per_clip: int = 0  # consecutive non-overlapping windows taken from each clip; 0 = all of them
    max_area: int = MAX_AREA
    size_multiple: int = SIZE_MULTIPLE
    # filters (thresholds measured in docs/training.md, "Data filters")
    num_faces: int = 1  # expected faces per frame (per clip: manifest "num_faces" overrides)
    face_check_stride: int = 4  # detect faces on every k-th frame
    min_face_fraction: float = 0.02  # faces smaller than this fraction of the frame area do not count
    min_face_frames: float = 0.8  # share of the checked frames that must hold exactly the expected faces
    max_motion: float = 6.0  # mean Farneback flow magnitude, px/frame at 256 px width
    min_motion: float = 0.0
    motion_check_stride: int = 1  # flow between frames (i, i + stride)
    max_jitter: float = 1.0  # mean change of the camera's (median) flow between frame pairs, px/frame
    max_cut: float = 0.3  # largest hue-saturation histogram jump between consecutive frames (Bhattacharyya)
    max_cut_warp_error: float = 25.0  # largest mean grey-level residual after warping a frame onto the next
    min_audio_rms_db: float = -45.0  # below = silent
    check_speakers: bool = True  # count the voices in every track (Silero VAD + GE2E, shipped in the wheels)
    new_voice_distance: float = 0.3  # GE2E cosine distance between pieces of speech that makes a second voice
    min_voice_seconds: float = 0.5  # less speech than this is not a voice of its own
    syncnet: str = ""  # SyncNet weights (syncnet_v2.model) for the audio-face pairing filter; empty = off
    min_sync_confidence: float = 3.0  # Sync-C of each speaking track with its own face
    sync_margin: float = 1.0  # another face fitting a track better by more than this = swapped tracks
    max_sync_offset: int = 3  # frames at 25 fps
    min_sync_speech_s: float = 0.5  # tracks with less speech in the window are not judged (listening)
    # captions
    default_prompt: str = DEFAULT_PROMPT
    empty_prompt: str = ""
    two_person_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_TWO_PERSON_PROMPTS))
    # sharding (also taken from RANK/WORLD_SIZE when launched by torchrun)
    shard_index: int = -1
    num_shards: int = -1


@dataclass
class ModelSection:
    """Which DiT to train: a checkpoint to start from, or a fresh config (``tiny`` for tests/demos)."""

    init_checkpoint: str = ""  # released .pth, our .safetensors, or empty for random init
    config_json: str = ""  # config for random init (reference or our format)
    tiny: bool = False  # random init of AnyTalkerConfig.tiny(**tiny_overrides)
    tiny_overrides: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = True


@dataclass
class TrainConfig:
    """Settings of one training stage (``stage = 1`` or ``2``)."""

    stage: int = 1
    data: list[str] = field(default_factory=list)  # prepare output folders
    run_dir: str = "runs/stage1"
    model: ModelSection = field(default_factory=ModelSection)
    seed: int = 42
    # optimisation
    learning_rate: float = 2e-5
    warmup_steps: int = 250
    lr_schedule: str = "constant"  # after warm-up: "constant" | "cosine" | "linear"
    max_steps: int = 10000
    batch_size: int = 1  # per process (two-person batches hold batch_size pairs)
    gradient_accumulation_steps: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"  # "no" | "bf16" | "fp16"
    # "ddp": whole model on every process (accelerate); "fsdp2": torch.distributed fully_shard per block,
    # meta-device init, sharded (DCP) checkpoints; "deepspeed": ZeRO stage `zero_stage` through accelerate
    parallel: str = "ddp"
    zero_stage: int = 2  # parallel = "deepspeed": 2 (optimiser + gradients sharded) or 3 (parameters too)
    # processes that split each sample's video tokens (Ulysses sequence parallelism, train/sequence_parallel.py);
    # 1 = off. Must divide the process count and the model's attention heads; those processes train one batch
    sequence_parallel: int = 1
    # data
    two_person_prob: float = 0.5  # stage 1; stage 2 uses 0
    # frozen CLIP vision file (prepare's clip_vision): encodes the side-by-side first frame of two-person
    # batches; required when two-person mode can occur, unused otherwise
    clip_vision: str = ""
    text_dropout: float = 0.1
    audio_dropout: float = 0.1
    num_workers: int = 2
    # flow matching
    timestep_sampler: str = "uniform"  # "uniform" | "logit_normal" (both then shifted by `shift`)
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # bookkeeping
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3
    export_at_end: bool = True
    sample_every: int = 0  # 0 = off: validation samples every N steps (train/validation.py)
    sample_ids: list[str] = field(default_factory=list)  # cached sample ids to generate from (default: the first)
    sample_steps: int = 20
    sample_guidance: float = 4.5
    sample_vae: str = ""  # VAE file to decode validation latents to mp4 (empty: latents only)

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = from_mapping(ModelSection, self.model, "model")
        if self.stage not in (1, 2):
            raise InputError(f"config: stage must be 1 or 2, got {self.stage}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InputError(f"config: mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.parallel not in ("ddp", "fsdp2", "deepspeed"):
            raise InputError(f"config: parallel must be 'ddp', 'fsdp2' or 'deepspeed', got {self.parallel!r}")
        if self.zero_stage not in (2, 3):
            raise InputError(f"config: zero_stage must be 2 or 3 (parallel = 'deepspeed'), got {self.zero_stage}")
        if self.sequence_parallel < 1:
            raise InputError(f"config: sequence_parallel must be >= 1 (1 = off), got {self.sequence_parallel}")
        if self.sequence_parallel > 1 and self.parallel == "deepspeed":
            raise InputError("config: sequence_parallel > 1 runs with parallel = 'ddp' or 'fsdp2' (DeepSpeed's "
                             "engine is not set up for a sequence-parallel group here)")
        if self.parallel == "fsdp2" and self.mixed_precision == "fp16":
            raise InputError("config: parallel = 'fsdp2' trains in 'bf16' or 'no' mixed precision (fp16 needs a "
                             "sharded gradient scaler); set mixed_precision = 'bf16'")
        if self.parallel == "deepspeed" and self.zero_stage == 3 and self.effective_two_person_prob > 0:
            raise InputError(
                f"config: parallel = 'deepspeed' with zero_stage = 3 cannot train stage 1's two-person batches "
                f"(two_person_prob = {self.two_person_prob}): ZeRO-3 gathers each layer's weights on every call and "
                "the audio/face layers run once per identity, so processes with one- and two-person batches "
                "issue different collectives; use parallel = 'fsdp2' (gathers per block) or zero_stage = 2")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise InputError(f"config: lr_schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise InputError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("two_person_prob", "text_dropout", "audio_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"config: {name} must be in [0, 1], got {getattr(self, name)}")
        if not self.data:
            raise InputError("config: 'data' must list at least one prepared cache folder")
        if self.effective_two_person_prob > 0 and not self.clip_vision:
            raise InputError(f"config: two_person_prob = {self.two_person_prob} (stage 1's two-person mode) needs "
                             "'clip_vision' = the frozen CLIP vision file prepare used (e.g. "
                             "models/clip_vision/clip_vision_h.safetensors): the CLIP tokens of each side-by-side "
                             "first frame are encoded during training")

    @property
    def effective_two_person_prob(self) -> float:
        """Probability of a two-person batch: ``two_person_prob`` in stage 1, 0 in stage 2."""
        return self.two_person_prob if self.stage == 1 else 0.0


T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``, naming unknown keys in the error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {unknown}; valid keys are {sorted(names)}")
    try:
        return cls(**dict(data))
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None


def _resolve(base: Path, value: str) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else (base / p))


def load_toml(path: str | Path, kind: str, overrides: Mapping[str, Any] | None = None) -> PrepareConfig | TrainConfig:
    """Read a ``prepare`` or ``fit`` TOML config; relative paths are relative to the file."""
    path = Path(path)
    if tomllib is None:
        raise InputError(f"config file '{path}': reading TOML on Python < 3.11 needs the 'tomli' package "
                         "(pip install tomli, or pip install -e .[train])")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file '{path}' is not valid TOML: {exc}") from None
    data.update(overrides or {})
    base = path.resolve().parent
    if kind == "prepare":
        data = data.get("prepare", data)
        for key in ("input", "output", "vae", "clip_vision", "text_encoder", "wav2vec", "insightface_root",
                    "syncnet"):
            if key in data:
                data[key] = _resolve(base, data[key])
        return from_mapping(PrepareConfig, data, f"config '{path}'")
    if kind == "fit":
        if "data" in data:
            data["data"] = [_resolve(base, d) for d in ([data["data"]] if isinstance(data["data"], str) else data["data"])]
        if "run_dir" in data:
            data["run_dir"] = _resolve(base, data["run_dir"])
        model = dict(data.get("model", {}))
        for key in ("sample_vae", "clip_vision"):
            if data.get(key):
                data[key] = _resolve(base, data[key])
        for key in ("init_checkpoint", "config_json"):
            if model.get(key):
                model[key] = _resolve(base, model[key])
        data["model"] = from_mapping(ModelSection, model, f"config '{path}' [model]")
        return from_mapping(TrainConfig, data, f"config '{path}'")
    raise InputError(f"unknown config kind {kind!r}")
