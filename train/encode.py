"""A kept window → a cached sample: the frozen encoders (used only at preparation time), the sample's
tensors and metadata, writing it (folder or tar shards) and telling whether it is already cached, and the
cache's shared prompt embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from anytalker_core.errors import InputError
from anytalker_core.io.atomic import save_safetensors_atomic, write_json_atomic

from .clips import resolve_shard
from .config import PrepareConfig
from .data import FIRST_FRAME_KEY, SHARED_EMBEDDINGS_FILE
from .shards import shard_meta, stored_tensors, writer_for

__all__ = ["Encoders", "write_sample", "is_cached", "write_shared_embeddings", "shared_embeddings_current",
           "encode_and_write", "FORMAT_VERSION", "DTYPES"]

FORMAT_VERSION = 2  # 2: + first_frame (uint8 pixels of frame 0)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Encoders:
    """The frozen encoders used only at preparation time."""

    def __init__(self, cfg: PrepareConfig, device: str):
        from anytalker_core.audio.wav2vec import load_wav2vec
        from anytalker_core.encoders.clip_vision import load_clip_vision
        from anytalker_core.encoders.text import load_text_encoder
        from anytalker_core.encoders.vae import load_vae

        missing = [k for k in ("vae", "clip_vision", "text_encoder", "wav2vec") if not getattr(cfg, k)]
        if missing:
            raise InputError(f"prepare config: set the model file(s) {missing} (see docs/training.md)")
        dtype = DTYPES.get(cfg.dtype)
        if dtype is None:
            raise InputError(f"prepare config: dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
        self.device = device
        self.vae = load_vae(cfg.vae, device=device, dtype=dtype)
        self.clip = load_clip_vision(cfg.clip_vision, device=device, dtype=dtype)
        self.text = load_text_encoder(cfg.text_encoder, device=device, dtype=dtype)
        self.wav2vec = load_wav2vec(cfg.wav2vec, device=device, dtype=dtype)

    @torch.inference_mode()
    def video_latents(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [T, H, W, 3]`` → latents and first-frame latents (frame 0 + black frames, Wan I2V's
        condition), each ``[16, F, h, w]`` float32."""
        from anytalker_core.encoders.vae import encode_first_frame_condition

        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None]  # [1,3,T,H,W]
        latents = self.vae.encode(video.to(self.device))[0].float().cpu()
        first = encode_first_frame_condition(self.vae, video[:, :, 0].to(self.device), frames.shape[0])
        return latents, first[0].float().cpu()

    @torch.inference_mode()
    def image_tokens(self, image: np.ndarray) -> torch.Tensor:
        """``uint8 [H, W, 3]`` → CLIP tokens ``[257, D]``."""
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)[None]
        return self.clip.encode(x.to(self.device))[0].float().cpu()

    @torch.inference_mode()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        return self.text.encode([prompt])[0].float().cpu()

    @torch.inference_mode()
    def audio_features(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        """16 kHz ``[S]`` → un-windowed wav2vec2 hidden states ``[T, L, C]``."""
        return self.wav2vec.encode(self.wav2vec.normalize(wave), num_frames).float().cpu()



def write_sample(folder: Path, sample_id: str, tensors: dict[str, torch.Tensor], meta: dict,
                 storage_dtype: torch.dtype = torch.bfloat16, shard: tuple[int, int] | None = None) -> Path:
    """Write one cached sample (floats in ``storage_dtype``, boxes float32, integer tensors such as the uint8
    ``first_frame`` unchanged): ``folder/<id>.safetensors`` then ``folder/<id>.json``, or with
    ``shard = (index, count)`` into prepare process ``index``'s tar shards of the cache ``folder.parent``
    (:mod:`train.shards`). Returns the file written."""
    stored = stored_tensors(tensors, storage_dtype)
    header = {"format": "anytalker-train-sample", "version": str(FORMAT_VERSION)}
    if shard is not None:
        writer = writer_for(folder.parent, *shard)
        writer.write(sample_id, stored, meta, header)
        return writer.current
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample_id}.safetensors"
    save_safetensors_atomic(path, stored, header)
    write_json_atomic(folder / f"{sample_id}.json", meta)
    return path


def is_cached(folder: Path, sample_id: str) -> bool:
    """A complete sample of the current format (older ones, e.g. without ``first_frame``, are redone)."""
    in_shard = shard_meta(folder.parent, sample_id)
    if in_shard is not None:
        return int(in_shard.get("format_version", 0)) >= FORMAT_VERSION
    meta_path = folder / f"{sample_id}.json"
    if not (meta_path.is_file() and (folder / f"{sample_id}.safetensors").is_file()):
        return False
    try:
        return int(json.loads(meta_path.read_text()).get("format_version", 0)) >= FORMAT_VERSION
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _shared_meta(cfg: PrepareConfig) -> dict:
    return {"empty_prompt": cfg.empty_prompt, "two_person_prompts": list(cfg.two_person_prompts)}


def shared_embeddings_current(out: Path, cfg: PrepareConfig) -> bool:
    path = out / SHARED_EMBEDDINGS_FILE
    meta_path = path.with_suffix(".json")
    try:
        return path.is_file() and json.loads(meta_path.read_text()) == _shared_meta(cfg)
    except (OSError, json.JSONDecodeError):
        return False


def write_shared_embeddings(out: Path, encoders: Encoders, cfg: PrepareConfig) -> None:
    """Empty-prompt and generic two-person prompt embeddings (once per cache folder and prompt set)."""
    if shared_embeddings_current(out, cfg):
        return
    path = out / SHARED_EMBEDDINGS_FILE
    meta_path = path.with_suffix(".json")
    meta = _shared_meta(cfg)
    tensors = {"empty_text_embedding": encoders.text_embedding(cfg.empty_prompt)}
    for i, prompt in enumerate(cfg.two_person_prompts):
        tensors[f"two_person_text_embedding.{i}"] = encoders.text_embedding(prompt)
    save_safetensors_atomic(path, {k: v.float() for k, v in tensors.items()}, {"format": "anytalker-train-shared"})
    write_json_atomic(meta_path, meta)


def encode_and_write(src, cfg, encoders: Encoders, out, frames, audio, faces, boxes, checked, sample_id, metrics,
                      start_s) -> dict:
    """``faces``: the boxes of each checked frame (``None`` where the count was wrong); ``boxes``: ``[N, T, 4]``
    interpolated between them (frame 0's face crops come from it when frame 0 itself missed a face)."""
    from anytalker_core.faces import build_face_masks, crop_faces

    n, num_frames = src.num_faces, frames.shape[0]
    h, w = frames.shape[1:3]
    face_boxes = torch.full((n, num_frames, 4), float("nan"))
    for i, found in zip(checked, faces):
        if found is not None:
            face_boxes[:, i] = torch.tensor(found, dtype=torch.float32)
    seen = face_boxes[:, [i for i, f in zip(checked, faces) if f is not None]]
    global_box = torch.stack([seen[..., 0].amin(1), seen[..., 1].amin(1), seen[..., 2].amax(1), seen[..., 3].amax(1)],
                             dim=-1)
    global_box[:, [0, 2]] = global_box[:, [0, 2]].clamp(0, w)
    global_box[:, [1, 3]] = global_box[:, [1, 3]].clamp(0, h)

    latents, first_latent = encoders.video_latents(frames)
    lat_f, lat_h, lat_w = latents.shape[1:]
    # the face crops for CLIP come from frame 0's square boxes, as at inference
    masks = build_face_masks(np.asarray(boxes[:, 0], dtype=np.float64), (h, w), (lat_h, lat_w), lat_f)
    face_tokens = torch.stack([encoders.image_tokens(c) for c in crop_faces(frames[0], masks.crop_boxes)])
    caption = src.caption or cfg.default_prompt
    tensors = {
        "latents": latents,
        "first_frame_latent": first_latent,
        "audio_features": torch.stack([encoders.audio_features(a, num_frames) for a in audio]),
        "face_boxes": face_boxes,
        "global_face_box": global_box,
        "face_clip_tokens": face_tokens,
        "clip_tokens": encoders.image_tokens(frames[0]),
        FIRST_FRAME_KEY: torch.from_numpy(np.ascontiguousarray(frames[0])),  # uint8 [H, W, 3]
        "text_embedding": encoders.text_embedding(caption),
    }
    meta = {
        "id": sample_id, "source": str(src.video), "start_seconds": round(start_s, 4), "fps": cfg.fps,
        "frames": num_frames, "height": h, "width": w, "latent_frames": lat_f, "latent_height": lat_h,
        "latent_width": lat_w, "num_identities": n, "caption": caption, "caption_source":
        "sidecar" if src.caption else "default", "format_version": FORMAT_VERSION, "filters": metrics,
        "global_face_box": [[round(float(v), 3) for v in b] for b in global_box],  # the sampler reads it here
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
    }
    write_sample(out / "samples", sample_id, tensors, meta, DTYPES[cfg.storage_dtype],
                 shard=resolve_shard(cfg) if cfg.cache_format == "shards" else None)
    return {"frames": num_frames, "size": [h, w], **metrics}

