"""Data preparation: talking clips → cached training samples (its own stage; encoders run only here).

For every clip (mp4/mov/mkv/webm with audio) of a folder or manifest:

1. read frames and audio, resample to 24 fps, cut the clip into consecutive windows of ``4n+1 ≤ 81`` frames
   (every window by default; at most ``segments_per_clip`` if that is > 0);
2. resize (cover) and centre-crop to the clip's 480p-area bucket (sides multiples of 32, aspect kept);
3. filters (docs/training.md, "Data filters") — audio present and not silent (RMS dBFS), voices per
   track (VAD + GE2E), scene cuts, camera jitter and motion (Farneback optical flow, histograms), the
   expected number of faces in most checked frames (the face detector), each speaker track paired with
   its face by SyncNet confidence (when ``syncnet`` weights are given);
4. encode with the frozen encoders — VAE latents of the clip and of (frame 0 + black frames), wav2vec2
   features per identity, CLIP tokens of frame 0 and of each face crop, UMT5 caption embedding, and
   frame 0's pixels (stage 1 encodes the CLIP tokens of its side-by-side first frames from them);
5. write ``samples/<id>.safetensors`` then ``samples/<id>.json`` atomically (temp file + rename; the
   json is the completion marker, so an interrupted run simply redoes that clip).

Re-running skips samples already cached (resumable); samples of an older format (e.g. without
``first_frame``) count as not cached and are redone. Several processes split the clips by
``shard_index/num_shards`` (or torchrun's ``RANK``/``WORLD_SIZE``) and never write the same file.
Each shard writes ``reports/prepare-shard-I-of-N.json`` listing every clip kept or dropped and why.

Captions: ``clip.txt`` beside ``clip.mp4`` (or the manifest's ``caption``), else ``default_prompt``.
Multi-person clips (stage 2, ``num_faces`` > 1) need one audio track per speaker, left to right:
``clip.speaker0.wav``, ``clip.speaker1.wav``, ... beside the video (any audio format), or the manifest's
``audio`` list; the clip's own mixed audio cannot be split into voices here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from anytalker_core.constants import SAMPLE_RATE
from anytalker_core.errors import InputError, Interrupted, MissingModelError
from anytalker_core.io.atomic import save_safetensors_atomic, write_json_atomic
from anytalker_core.sampling.sizes import target_size

from .config import PrepareConfig
from .data import FIRST_FRAME_KEY, SHARED_EMBEDDINGS_FILE
from .filters import audio_rms_db, faces_per_frame
from .filters_motion import motion_stats
from .filters_speakers import VoiceCounter
from .filters_sync import SyncCheck, interpolate_boxes, pair_tracks_with_faces
from .shards import close_writers, shard_meta, stored_tensors, writer_for

log = logging.getLogger(__name__)

__all__ = ["ClipSource", "discover_clips", "resolve_shard", "resample_indices", "frames_for_training",
           "resize_cover", "Encoders", "prepare", "write_sample", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: + first_frame (uint8 pixels of frame 0)
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ClipSource:
    """One input clip: the video, its caption, per-speaker audio tracks (optional) and face count."""

    video: Path
    sample_id: str
    caption: str | None = None
    audio_tracks: list[Path] = field(default_factory=list)
    num_faces: int = 1


def _sample_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(rel.with_suffix("")).replace(os.sep, "__"))


def _sidecar_caption(video: Path) -> str | None:
    txt = video.with_suffix(".txt")
    if txt.is_file():
        text = txt.read_text(encoding="utf-8").strip()
        return text or None
    return None


def _sidecar_tracks(video: Path) -> list[Path]:
    tracks = []
    for i in range(16):
        found = [video.with_name(f"{video.stem}.speaker{i}{ext}") for ext in AUDIO_EXTENSIONS]
        found = [p for p in found if p.is_file()]
        if not found:
            break
        tracks.append(found[0])
    return tracks


def discover_clips(source: str | Path, num_faces: int = 1) -> list[ClipSource]:
    """Clips of a folder (recursive) or a manifest: ``.jsonl`` (one object per line with ``video`` and
    optional ``caption``, ``audio`` [paths], ``num_faces``, ``id``) or ``.txt`` (one video path per line).
    Relative paths in a manifest are relative to the manifest's folder. Sorted, so shards agree.
    """
    source = Path(source)
    clips: list[ClipSource] = []
    if source.is_dir():
        for video in sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()):
            tracks = _sidecar_tracks(video)
            clips.append(ClipSource(video, _sample_id(video, source), _sidecar_caption(video), tracks,
                                    max(num_faces, len(tracks)) if tracks else num_faces))
    elif source.is_file() and source.suffix in (".jsonl", ".txt"):
        base = source.parent
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if source.suffix == ".txt":
                entry = {"video": line}
            else:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"manifest '{source}' line {n}: not valid JSON ({exc})") from None
                if not isinstance(entry, dict) or "video" not in entry:
                    raise InputError(f"manifest '{source}' line {n}: expected an object with a 'video' path")
            video = Path(entry["video"])
            video = video if video.is_absolute() else base / video
            tracks = [Path(a) if Path(a).is_absolute() else base / a for a in entry.get("audio", [])]
            clips.append(ClipSource(
                video=video,
                sample_id=re.sub(r"[^A-Za-z0-9._-]+", "_", str(entry.get("id") or _sample_id(video, base))),
                caption=entry.get("caption") or _sidecar_caption(video),
                audio_tracks=tracks,
                num_faces=int(entry.get("num_faces", len(tracks) or num_faces)),
            ))
        clips.sort(key=lambda c: c.sample_id)
    else:
        raise InputError(f"prepare input '{source}': expected a folder of clips or a .jsonl/.txt manifest")
    ids = [c.sample_id for c in clips]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"prepare input '{source}': duplicate sample ids {dup[:5]}; give manifest entries an 'id'")
    return clips


def resolve_shard(cfg: PrepareConfig) -> tuple[int, int]:
    """``(index, count)`` from the config, else torchrun's ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if cfg.num_shards > 0:
        index, count = cfg.shard_index, cfg.num_shards
    else:
        index, count = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= index < count:
        raise InputError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
    return index, count


# ----------------------------------------------------------------------------------- geometry


def clip_size(frame_hw, cfg: PrepareConfig) -> tuple[int, int]:
    """The training size ``(H, W)`` of a clip whose frames are ``frame_hw``: the size inference gives the same
    image (:func:`anytalker_core.sampling.target_size`: area <= ``max_area``, aspect kept, sides multiples of
    ``size_multiple``)."""
    return target_size(int(frame_hw[0]), int(frame_hw[1]), max_area=cfg.max_area, multiple=cfg.size_multiple)


def resample_indices(num_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source frame index shown at each output frame time (nearest earlier frame)."""
    if src_fps <= 0 or dst_fps <= 0:
        raise InputError(f"frame rates must be positive, got {src_fps} -> {dst_fps}")
    duration = num_frames / src_fps
    count = int(math.floor(duration * dst_fps + 1e-6))
    idx = np.floor(np.arange(count) * src_fps / dst_fps + 1e-6).astype(np.int64)
    return idx[idx < num_frames]


def frames_for_training(available: int, max_frames: int) -> int:
    """The largest ``4n + 1`` ≤ ``min(available, max_frames)`` (0 if fewer than 1 frame)."""
    n = min(available, max_frames)
    return 0 if n < 1 else (n - 1) // 4 * 4 + 1


def resize_cover(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` to cover ``size_hw`` and centre-crop to it exactly."""
    import cv2

    th, tw = size_hw
    h, w = frames.shape[1:3]
    scale = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    out = np.empty((frames.shape[0], th, tw, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (nw, nh), interpolation=interp)[y0:y0 + th, x0:x0 + tw]
    return out


# ----------------------------------------------------------------------------------- encoders


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
        dtype = _DTYPES.get(cfg.dtype)
        if dtype is None:
            raise InputError(f"prepare config: dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
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


# ----------------------------------------------------------------------------------- writing


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


def _is_cached(folder: Path, sample_id: str) -> bool:
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


def _shared_embeddings_current(out: Path, cfg: PrepareConfig) -> bool:
    path = out / SHARED_EMBEDDINGS_FILE
    meta_path = path.with_suffix(".json")
    try:
        return path.is_file() and json.loads(meta_path.read_text()) == _shared_meta(cfg)
    except (OSError, json.JSONDecodeError):
        return False


def write_shared_embeddings(out: Path, encoders: Encoders, cfg: PrepareConfig) -> None:
    """Empty-prompt and generic two-person prompt embeddings (once per cache folder and prompt set)."""
    if _shared_embeddings_current(out, cfg):
        return
    path = out / SHARED_EMBEDDINGS_FILE
    meta_path = path.with_suffix(".json")
    meta = _shared_meta(cfg)
    tensors = {"empty_text_embedding": encoders.text_embedding(cfg.empty_prompt)}
    for i, prompt in enumerate(cfg.two_person_prompts):
        tensors[f"two_person_text_embedding.{i}"] = encoders.text_embedding(prompt)
    save_safetensors_atomic(path, {k: v.float() for k, v in tensors.items()}, {"format": "anytalker-train-shared"})
    write_json_atomic(meta_path, meta)


# ----------------------------------------------------------------------------------- one clip


class Dropped(Exception):
    """A clip (segment) failed a filter: ``reason`` is a short key, ``detail`` the numbers."""

    def __init__(self, reason: str, detail: str, metrics: dict | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.metrics = reason, detail, metrics or {}


def _segment_audio(track: torch.Tensor, start_s: float, num_frames: int, fps: float, name: str = "audio") -> torch.Tensor:
    """The window's samples of ``track``; a track that ends more than one video frame before the window
    does is dropped (``short_audio_track``) rather than padded with silence the model would learn from."""
    start = int(round(start_s * SAMPLE_RATE))
    length = int(math.ceil(num_frames / fps * SAMPLE_RATE))
    seg = track[start:start + length]
    if length - seg.numel() > SAMPLE_RATE / fps:
        raise Dropped("short_audio_track", f"{name} has {max(0, track.numel() - start) / SAMPLE_RATE:.2f} s from "
                      f"{start_s:.2f} s, the window needs {length / SAMPLE_RATE:.2f} s")
    if seg.numel() < length:  # less than one frame short: rounding of the two streams' lengths
        seg = torch.nn.functional.pad(seg, (0, length - seg.numel()))
    return seg.float()


def _probe_fps(path: Path) -> float | None:
    """The video stream's frame rate without decoding (None if it cannot be read here)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return float(rate) if rate else None
    except (av.error.FFmpegError, IndexError, OSError, ValueError):
        return None  # read_video reports the problem with a clear message


def _probe_frames(path: Path) -> int | None:
    """The video stream's frame count from the container, without decoding (None if it does not say)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and stream.time_base and rate:
                return int(math.ceil(float(stream.duration * stream.time_base) * float(rate)))
    except (av.error.FFmpegError, IndexError, OSError, ValueError):
        pass
    return None


def _window_id(clip_id: str, seg: int, cfg: PrepareConfig) -> str:
    """Sample id of window ``seg`` of a clip. Window 0 keeps the clip's id when every window is taken (caches
    of the first-window-only default named it so: re-running prepare on them adds the other windows)."""
    plain = cfg.segments_per_clip == 1 or (cfg.segments_per_clip == 0 and seg == 0)
    return clip_id if plain else f"{clip_id}__s{seg:03d}"


def _window_count(frames: int, cfg: PrepareConfig) -> int:
    """Windows prepare cuts from ``frames`` frames at the training frame rate (0: too short)."""
    length = frames_for_training(frames, cfg.max_frames)
    if length < cfg.min_frames:
        return 0
    count = max(1, frames // length)
    return min(cfg.segments_per_clip, count) if cfg.segments_per_clip > 0 else count


def _all_windows_cached(out: Path, src: ClipSource, cfg: PrepareConfig) -> bool:
    """Whether every window of ``src`` is cached, judged without decoding it: the container's frame count,
    taken two source frames long, so that a clip is never counted for fewer windows than it has."""
    if cfg.segments_per_clip == 1:
        return _is_cached(out / "samples", src.sample_id)
    fps, frames = _probe_fps(src.video), _probe_frames(src.video)
    if not fps or not frames:
        return False
    count = _window_count(len(resample_indices(frames + 2, fps, cfg.fps)), cfg)
    return count > 0 and all(_is_cached(out / "samples", _window_id(src.sample_id, k, cfg)) for k in range(count))


def _has_audio_stream(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def _load_clip(src: ClipSource, cfg: PrepareConfig):
    from anytalker_core.io.media import load_audio, read_video

    # decode only what the segments need (long clips would not fit in memory)
    fps = _probe_fps(src.video)
    needed = None
    if fps and cfg.segments_per_clip > 0:  # 0 = every window: the whole clip
        needed = int(math.ceil(cfg.segments_per_clip * cfg.max_frames * fps / cfg.fps)) + 2
    clip = read_video(src.video, max_frames=needed, sample_rate=SAMPLE_RATE)
    if src.audio_tracks:
        tracks = [load_audio(p, SAMPLE_RATE) for p in src.audio_tracks]
        if len(tracks) != src.num_faces:
            raise Dropped("audio_tracks", f"{len(tracks)} audio track(s) for {src.num_faces} expected faces")
    elif clip.audio is None and _has_audio_stream(src.video):
        raise Dropped("audio_undecodable", "the file declares an audio stream that could not be decoded (a "
                      "truncated or corrupt file)")
    elif clip.audio is None:
        raise Dropped("no_audio", "the clip has no audio track")
    elif src.num_faces != 1:
        raise Dropped("audio_tracks", f"{src.num_faces}-person clip without one audio track per speaker "
                      f"({src.video.stem}.speaker0.wav, ...); the mixed track cannot be split here")
    else:
        tracks = [clip.audio]
    return clip, tracks


def process_clip(src: ClipSource, cfg: PrepareConfig, encoders: Encoders | None, models: "FilterModels", out: Path,
                 on_result: Callable[[dict], None]) -> None:
    """Filter and cache every segment of one clip, reporting each outcome through ``on_result``."""
    base = {"source": str(src.video), "clip": src.sample_id}
    try:
        clip, tracks = _load_clip(src, cfg)
    except Dropped as exc:
        on_result({**base, "id": src.sample_id, "status": "dropped", "reason": exc.reason, "detail": exc.detail})
        return
    index = resample_indices(clip.num_frames, clip.fps, cfg.fps)
    length = frames_for_training(len(index), cfg.max_frames)
    if length < cfg.min_frames:
        on_result({**base, "id": src.sample_id, "status": "dropped", "reason": "too_short",
                   "detail": f"{len(index)} frames at {cfg.fps:g} fps, need at least {cfg.min_frames}"})
        return
    size = clip_size(clip.frames.shape[1:3], cfg)
    segments = _window_count(len(index), cfg)  # every window (segments_per_clip = 0) or at most N
    for seg in range(segments):
        sample_id = _window_id(src.sample_id, seg, cfg)
        if _is_cached(out / "samples", sample_id):
            on_result({**base, "id": sample_id, "status": "cached"})
            continue
        start = seg * length
        try:
            result = _process_segment(src, cfg, encoders, models, out, clip, tracks, index[start:start + length],
                                      start / cfg.fps, size, sample_id)
            on_result({**base, "id": sample_id, "status": "kept", **result})
        except Dropped as exc:
            on_result({**base, "id": sample_id, "status": "dropped", "reason": exc.reason, "detail": exc.detail,
                       **exc.metrics})


class FilterModels:
    """The models the filters use, loaded once per process: face detector, voice counter, SyncNet."""

    def __init__(self, cfg: PrepareConfig, detector=None, syncnet=None):
        self.detector = detector
        self.voices = VoiceCounter(cfg.new_voice_distance, cfg.min_voice_seconds) if cfg.check_speakers else None
        self.syncnet = syncnet
        if self.syncnet is None and cfg.syncnet:
            from anytalker_core.metrics.syncnet import load_syncnet

            try:
                self.syncnet = load_syncnet(cfg.syncnet, device=_device_for_shard(cfg.device))
            except MissingModelError as exc:
                raise MissingModelError(f"prepare config 'syncnet': {exc} Leave 'syncnet' empty to prepare "
                                        "without the audio-face pairing filter.") from None
        self.sync_check = SyncCheck(cfg.min_sync_confidence, cfg.sync_margin, cfg.max_sync_offset,
                                    cfg.min_sync_speech_s)


def _process_segment(src, cfg, encoders, models: FilterModels, out, clip, tracks, frame_index, start_s, size,
                     sample_id) -> dict:
    num_frames = len(frame_index)
    names = ([f"speaker track {k} ({p.name})" for k, p in enumerate(src.audio_tracks)] if src.audio_tracks
             else ["the clip's audio track"])
    audio = [_segment_audio(t, start_s, num_frames, cfg.fps, name) for t, name in zip(tracks, names)]
    level = audio_rms_db(torch.stack(audio).sum(0))
    metrics = {"audio_rms_db": round(level, 2) if math.isfinite(level) else None}
    if level < cfg.min_audio_rms_db:
        raise Dropped("silent", f"audio RMS {level:.1f} dBFS < {cfg.min_audio_rms_db} dBFS", metrics)

    speech_s = [float("inf")] * len(audio)
    if models.voices is not None:  # one voice per speaker track; the clip's own audio: one per face
        counts = [models.voices.count(a) for a in audio]
        metrics["voices"] = [c.voices for c in counts]
        metrics["speech_s"] = [round(c.speech_s, 2) for c in counts]
        speech_s = [c.speech_s for c in counts]
        allowed = 1 if src.audio_tracks else src.num_faces
        for name, c in zip(names, counts):
            if c.voices > allowed:
                raise Dropped("speaker_count", f"{name} holds {c.voices} voices (speaking {c.speaking_s} s), expected "
                              f"at most {allowed} for {src.num_faces} face(s): an off-screen or leaking voice", metrics)

    frames = resize_cover(clip.frames[frame_index], size)
    # motion on the source frames the window spans: re-timing (30 -> 24 fps repeats no frame but skips
    # every 5th) would make a smooth pan judder, and the jitter filter would take it for a shaking camera
    motion = motion_stats(clip.frames[frame_index[0]:frame_index[-1] + 1], cfg.motion_check_stride)
    metrics.update({"motion": round(motion.motion, 3), "jitter": round(motion.jitter, 3), "cut": round(motion.cut, 3),
                    "cut_warp_error": round(motion.warp_error, 2)})
    # jitter first: random shifts also make every frame pair look like a small cut
    if motion.jitter > cfg.max_jitter:
        raise Dropped("camera_jitter", f"camera jitter {motion.jitter:.2f} px/frame > {cfg.max_jitter}", metrics)
    if motion.cut > cfg.max_cut or motion.warp_error > cfg.max_cut_warp_error:
        raise Dropped("scene_cut", f"scene cut near source frame {motion.cut_frame} of the window: histogram jump {motion.cut:.3f} "
                      f"(max {cfg.max_cut}), flow-warp residual {motion.warp_error:.1f} (max {cfg.max_cut_warp_error})",
                      metrics)
    if motion.motion > cfg.max_motion:
        raise Dropped("too_much_motion", f"optical-flow motion {motion.motion:.2f} px/frame > {cfg.max_motion}",
                      metrics)
    if motion.motion < cfg.min_motion:
        raise Dropped("too_little_motion", f"optical-flow motion {motion.motion:.2f} px/frame < {cfg.min_motion}",
                      metrics)

    checked = list(range(0, num_frames, max(1, cfg.face_check_stride)))
    faces = faces_per_frame(models.detector, frames, checked, cfg.min_face_fraction)
    counts = [len(f) for f in faces]
    good = [c == src.num_faces for c in counts]
    share = sum(good) / len(good)
    metrics.update({"faces_min": min(counts), "faces_max": max(counts), "face_frames": round(share, 3)})
    if share < cfg.min_face_frames:
        frame, count = next((i, c) for i, c in zip(checked, counts) if c != src.num_faces)
        raise Dropped("face_count", f"{sum(good)} of {len(checked)} checked frames hold {src.num_faces} face(s) "
                      f"({share:.0%} < {cfg.min_face_frames:.0%}); e.g. frame {frame} has {count}", metrics)
    faces = [f if ok else None for f, ok in zip(faces, good)]  # frames with another count: boxes unknown
    boxes = interpolate_boxes(checked, faces, src.num_faces, num_frames)

    if models.syncnet is not None:
        pairing = pair_tracks_with_faces(models.syncnet, frames, cfg.fps, boxes, audio, speech_s, models.sync_check,
                                         names)
        metrics.update(pairing.as_metrics())
        if pairing.reason is not None:
            raise Dropped(pairing.reason, pairing.detail, metrics)
    if encoders is None:
        raise InputError("prepare: encoders are required to cache a sample")
    return _encode_and_write(src, cfg, encoders, out, frames, audio, faces, boxes, checked, sample_id, metrics,
                             start_s)


def _encode_and_write(src, cfg, encoders: Encoders, out, frames, audio, faces, boxes, checked, sample_id, metrics,
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
    write_sample(out / "samples", sample_id, tensors, meta, _DTYPES[cfg.storage_dtype],
                 shard=resolve_shard(cfg) if cfg.cache_format == "shards" else None)
    return {"frames": num_frames, "size": [h, w], **metrics}


# ----------------------------------------------------------------------------------- the stage


def _load_detector(cfg: PrepareConfig):
    from anytalker_core.faces import load_detector

    if cfg.face_detector == "insightface":
        return load_detector("insightface", models_dir=cfg.insightface_root or None, device=cfg.device)
    return load_detector(cfg.face_detector)


def _device_for_shard(device: str) -> str:
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def prepare(cfg: PrepareConfig, encoders: Encoders | None = None, detector=None,
            progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None, syncnet=None) -> dict:
    """Run data preparation for this process's shard; returns the report (also written as json).

    ``encoders``/``detector``/``syncnet``: already loaded models (else loaded from the config when needed).
    """
    if not cfg.input or not cfg.output:
        raise InputError("prepare: set both 'input' (clips folder or manifest) and 'output' (cache folder)")
    if cfg.max_frames % 4 != 1 or cfg.min_frames % 4 != 1:
        raise InputError(f"prepare: max_frames ({cfg.max_frames}) and min_frames ({cfg.min_frames}) must be 4n+1")
    if cfg.segments_per_clip < 0:
        raise InputError(f"prepare: segments_per_clip must be >= 0 (0 = every window), got {cfg.segments_per_clip}")
    if cfg.cache_format not in ("folder", "shards"):
        raise InputError(f"prepare: cache_format must be 'folder' or 'shards', got {cfg.cache_format!r}")
    if cfg.storage_dtype not in _DTYPES:
        raise InputError(f"prepare: storage_dtype must be one of {sorted(_DTYPES)}, got {cfg.storage_dtype!r}")
    if not 0.0 <= cfg.min_face_frames <= 1.0:
        raise InputError(f"prepare: min_face_frames is a share of the checked frames in [0, 1], got {cfg.min_face_frames}")
    if cfg.syncnet and syncnet is None and not Path(cfg.syncnet).is_file():
        raise MissingModelError(f"prepare config 'syncnet': SyncNet weights not found at '{cfg.syncnet}'. Download "
                                "syncnet_v2.model (the syncnet_python project) and give its path, or leave 'syncnet' "
                                "empty to prepare without the audio-face pairing filter.")
    out = Path(cfg.output)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    shard, shards = resolve_shard(cfg)
    clips = discover_clips(cfg.input, cfg.num_faces)
    mine = clips[shard::shards]
    log.info("prepare shard %d/%d: %d of %d clips -> %s", shard, shards, len(mine), len(clips), out)
    todo = [c for c in mine if not _all_windows_cached(out, c, cfg)]
    need_shared = shard == 0 and not _shared_embeddings_current(out, cfg)
    if (todo or need_shared) and encoders is None:
        encoders = Encoders(cfg, _device_for_shard(cfg.device))
    if todo and detector is None:
        detector = _load_detector(cfg)
    models = FilterModels(cfg, detector, syncnet) if todo else None
    if todo and models.syncnet is None:
        log.warning("prepare: no 'syncnet' weights given, so audio tracks are not paired with faces by SyncNet "
                    "confidence (the paper's Sync-C filter is off)")
    if need_shared:
        write_shared_embeddings(out, encoders, cfg)

    report = {"shard": shard, "num_shards": shards, "config": asdict(cfg), "results": [], "complete": False}
    report_path = out / "reports" / f"prepare-shard-{shard}-of-{shards}.json"
    results_path = report_path.with_suffix(".jsonl")  # one line per window, appended as it is decided
    results_path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = _filter_fingerprint(cfg)
    earlier = _earlier_drops(results_path, fingerprint)
    started = last_write = time.time()
    with open(results_path, "a", encoding="utf-8") as results_file:

        def record(result: dict) -> None:
            report["results"].append(result)
            results_file.write(json.dumps({**result, "filters_fingerprint": fingerprint}) + "\n")
            results_file.flush()
            if result["status"] == "dropped":
                log.info("dropped %s: %s (%s)", result["id"], result["reason"], result["detail"])
            else:
                log.info("%s %s", result["status"], result["id"])

        for n, src in enumerate(mine):
            if should_stop is not None and should_stop():
                _write_report(report_path, report, started)
                close_writers()
                raise Interrupted(f"prepare stopped after {n} clips; run it again to continue")
            if src not in todo:
                record({"id": src.sample_id, "source": str(src.video), "status": "cached"})
            elif src.sample_id in earlier:  # dropped by the same filters before: not decoded again
                for result in earlier[src.sample_id]:
                    record({**result, "previously": True})
            else:
                try:
                    process_clip(src, cfg, encoders, models, out, record)
                except InputError as exc:  # unreadable file etc.: report and go on
                    record({"id": src.sample_id, "clip": src.sample_id, "source": str(src.video),
                            "status": "dropped", "reason": "unreadable", "detail": str(exc)})
            if progress is not None:
                progress(n + 1, len(mine))
            if time.time() - last_write > 30:  # the summary report too, so a kill leaves a recent one
                _write_report(report_path, report, started)
                last_write = time.time()
    close_writers()
    report["complete"] = True
    _write_report(report_path, report, started)
    log.info("prepare shard %d/%d done: %s", shard, shards, report["summary"])
    return report


def _write_report(path: Path, report: dict, started: float) -> None:
    summary: dict[str, int] = {}
    for r in report["results"]:
        key = r["status"] if r["status"] != "dropped" else f"dropped:{r['reason']}"
        summary[key] = summary.get(key, 0) + 1
    report["summary"] = summary
    report["seconds"] = round(time.time() - started, 2)
    write_json_atomic(path, report)


# filter settings that decide a drop: an earlier drop is reused only while they are unchanged
_FILTER_KEYS = ("fps", "max_frames", "min_frames", "segments_per_clip", "max_area", "size_multiple", "num_faces",
                "face_check_stride", "min_face_fraction", "min_face_frames", "max_motion", "min_motion",
                "motion_check_stride", "max_jitter", "max_cut", "max_cut_warp_error", "min_audio_rms_db",
                "face_detector", "check_speakers", "new_voice_distance", "min_voice_seconds", "syncnet",
                "min_sync_confidence", "sync_margin", "max_sync_offset", "min_sync_speech_s")
FILTERS_VERSION = 2  # 2: voices, cuts, jitter, faces in most frames, SyncNet pairing
_DETERMINISTIC_DROPS = {"no_audio", "audio_undecodable", "silent", "too_much_motion", "too_little_motion",
                        "face_count", "too_short", "audio_tracks", "short_audio_track", "speaker_count", "scene_cut",
                        "camera_jitter", "sync_swapped", "sync_low", "sync_offset"}


def _filter_fingerprint(cfg: PrepareConfig) -> str:
    import hashlib

    data = json.dumps({"version": FILTERS_VERSION, **{k: getattr(cfg, k) for k in _FILTER_KEYS}}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _earlier_drops(results_path: Path, fingerprint: str) -> dict[str, list[dict]]:
    """Clips every window of which an earlier run dropped with the same filter settings (by clip id)."""
    if not results_path.is_file():
        return {}
    by_clip: dict[str, list[dict]] = {}
    for line in results_path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut
            continue
        clip = r.get("clip", r.get("id"))
        if clip is not None and r.get("filters_fingerprint") == fingerprint:
            by_clip.setdefault(clip, []).append(r)
    drops = {}
    for clip, results in by_clip.items():
        latest = {r["id"]: r for r in results}  # the newest outcome of each window
        if latest and all(r["status"] == "dropped" and r.get("reason") in _DETERMINISTIC_DROPS
                          for r in latest.values()):
            drops[clip] = [{k: v for k, v in r.items() if k not in ("filters_fingerprint", "previously")}
                           for r in latest.values()]
    return drops
