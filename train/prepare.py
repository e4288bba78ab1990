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

The pieces live beside this driver: :mod:`train.clips` (finding the clips, this process's share),
:mod:`train.clip_windows` (re-timing, windows, sizes), :mod:`train.encode` (encoders, writing a sample),
:mod:`train.prepare_report` (the report, earlier drops); the filters are :mod:`train.filters` and its siblings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from anytalker_core.constants import SAMPLE_RATE
from anytalker_core.errors import InputError, Interrupted, MissingModelError

from .clip_windows import (clip_size, frames_for_training, probe_fps, probe_frames, resample_indices, resize_cover,
                           window_count, window_id)
from .clips import ClipSource, discover_clips, resolve_shard
from .config import PrepareConfig
from .encode import DTYPES, Encoders, encode_and_write, is_cached, shared_embeddings_current, write_shared_embeddings
from .filters import audio_rms_db, faces_per_frame
from .filters_motion import motion_stats
from .filters_speakers import VoiceCounter
from .filters_sync import SyncCheck, interpolate_boxes, pair_tracks_with_faces
from .prepare_report import earlier_drops, filter_fingerprint, write_report
from .shards import close_writers

log = logging.getLogger(__name__)

__all__ = ["prepare", "process_clip", "FilterModels", "Dropped"]


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


def _all_windows_cached(out: Path, src: ClipSource, cfg: PrepareConfig) -> bool:
    """Whether every window of ``src`` is cached, judged without decoding it: the container's frame count,
    taken two source frames long, so that a clip is never counted for fewer windows than it has."""
    if cfg.segments_per_clip == 1:
        return is_cached(out / "samples", src.sample_id)
    fps, frames = probe_fps(src.video), probe_frames(src.video)
    if not fps or not frames:
        return False
    count = window_count(len(resample_indices(frames + 2, fps, cfg.fps)), cfg)
    return count > 0 and all(is_cached(out / "samples", window_id(src.sample_id, k, cfg)) for k in range(count))


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
    fps = probe_fps(src.video)
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
    segments = window_count(len(index), cfg)  # every window (segments_per_clip = 0) or at most N
    for seg in range(segments):
        sample_id = window_id(src.sample_id, seg, cfg)
        if is_cached(out / "samples", sample_id):
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
    return encode_and_write(src, cfg, encoders, out, frames, audio, faces, boxes, checked, sample_id, metrics,
                             start_s)


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
    if cfg.storage_dtype not in DTYPES:
        raise InputError(f"prepare: storage_dtype must be one of {sorted(DTYPES)}, got {cfg.storage_dtype!r}")
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
    need_shared = shard == 0 and not shared_embeddings_current(out, cfg)
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
    fingerprint = filter_fingerprint(cfg)
    earlier = earlier_drops(results_path, fingerprint)
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
                write_report(report_path, report, started)
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
                write_report(report_path, report, started)
                last_write = time.time()
    close_writers()
    report["complete"] = True
    write_report(report_path, report, started)
    log.info("prepare shard %d/%d done: %s", shard, shards, report["summary"])
    return report
