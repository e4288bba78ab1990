"""The clips of a prepare run: found in a folder or a manifest (with sidecar captions and per-speaker audio
tracks), and the share of them this process handles (``shard_index/num_shards`` or torchrun's ranks)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from anytalker_core.errors import InputError

from .config import PrepareConfig

__all__ = ["ClipSource", "discover_clips", "resolve_shard", "VIDEO_EXTENSIONS", "AUDIO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")


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
