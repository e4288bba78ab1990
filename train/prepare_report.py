"""prepare's report per shard (``reports/prepare-shard-I-of-N.json``, its summary) and the reuse of earlier
drops: a clip every window of which an earlier run dropped with the same filter settings (the per-window
``.jsonl`` results, keyed by a fingerprint of those settings) is not decoded again."""

from __future__ import annotations

import json
import time
from pathlib import Path

from anytalker_core.io.atomic import write_json_atomic

from .config import PrepareConfig

__all__ = ["write_report", "filter_fingerprint", "earlier_drops", "FILTERS_VERSION", "FILTER_KEYS",
           "DETERMINISTIC_DROPS"]


def write_report(path: Path, report: dict, started: float) -> None:
    summary: dict[str, int] = {}
    for r in report["results"]:
        key = r["status"] if r["status"] != "dropped" else f"dropped:{r['reason']}"
        summary[key] = summary.get(key, 0) + 1
    report["summary"] = summary
    report["seconds"] = round(time.time() - started, 2)
    write_json_atomic(path, report)


# filter settings that decide a drop: an earlier drop is reused only while they are unchanged
FILTER_KEYS = ("fps", "max_frames", "min_frames", "segments_per_clip", "max_area", "size_multiple", "num_faces",
                "face_check_stride", "min_face_fraction", "min_face_frames", "max_motion", "min_motion",
                "motion_check_stride", "max_jitter", "max_cut", "max_cut_warp_error", "min_audio_rms_db",
                "face_detector", "check_speakers", "new_voice_distance", "min_voice_seconds", "syncnet",
                "min_sync_confidence", "sync_margin", "max_sync_offset", "min_sync_speech_s")
FILTERS_VERSION = 2  # 2: voices, cuts, jitter, faces in most frames, SyncNet pairing
DETERMINISTIC_DROPS = {"no_audio", "audio_undecodable", "silent", "too_much_motion", "too_little_motion",
                        "face_count", "too_short", "audio_tracks", "short_audio_track", "speaker_count", "scene_cut",
                        "camera_jitter", "sync_swapped", "sync_low", "sync_offset"}


def filter_fingerprint(cfg: PrepareConfig) -> str:
    import hashlib

    data = json.dumps({"version": FILTERS_VERSION, **{k: getattr(cfg, k) for k in FILTER_KEYS}}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def earlier_drops(results_path: Path, fingerprint: str) -> dict[str, list[dict]]:
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
        if latest and all(r["status"] == "dropped" and r.get("reason") in DETERMINISTIC_DROPS
                          for r in latest.values()):
            drops[clip] = [{k: v for k, v in r.items() if k not in ("filters_fingerprint", "previously")}
                           for r in latest.values()]
    return drops
