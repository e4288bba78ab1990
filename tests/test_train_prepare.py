"""Data preparation on real clips made here: scikit-image's astronaut (a real face) animated with known
motion, espeak-ng speech, muxed to mp4. Filters must drop the face-less, silent and shaky clips, keep
the good ones, shard without overlap, resume, and produce samples the trainer consumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anytalker_core.io.media import write_video
import train.prepare  # noqa: F401,E402  (import this checkout's train package before any test changes paths)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

SIZE = 96
FRAMES = 17  # 4n+1 video frames per sample (5 latent frames)


def _frames(image: np.ndarray, offsets: list[int], y0: int = 20, crop: int = 300) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(image[y0:y0 + crop, x:x + crop], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                     for x in offsets])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from skimage import data

    from anytalker_core.testing.speech import synthesize_speech

    root = tmp_path_factory.mktemp("clips")
    speech = synthesize_speech("Hello there, this clip is used to test the training data preparation.")
    face, scene = data.astronaut(), data.coffee()
    rng = np.random.default_rng(0)
    n30 = 24  # 24 frames at 30 fps = 0.8 s -> 19 frames at 24 fps -> 17 (4n+1) kept

    def audio(frames: int, fps: float) -> torch.Tensor:
        return speech[: int(frames / fps * 16000)]

    # good: slow pan (about 0.3 px/frame at 96 px), source at 30 fps (resampled to 24), with a caption
    write_video(root / "good_pan.mp4", _frames(face, [40 + 2 * i for i in range(n30)]), 30, audio(n30, 30))
    (root / "good_pan.txt").write_text("An astronaut talks to the camera.")
    # good: still camera, 24 fps, no caption (generic prompt)
    write_video(root / "good_still.mp4", _frames(face, [60] * FRAMES), 24, audio(FRAMES, 24))
    # no face: a cup of coffee with speech
    write_video(root / "noface.mp4", _frames(scene, [40 + i for i in range(FRAMES)], y0=0), 24, audio(FRAMES, 24))
    # silent: the face, but digital silence on the audio track
    write_video(root / "silent.mp4", _frames(face, [60] * FRAMES), 24, torch.zeros(int(FRAMES / 24 * 16000)))
    # shaky: the face stays in view but the camera jumps around (tens of px per frame)
    write_video(root / "shaky.mp4", _frames(face, list(rng.integers(20, 100, FRAMES))), 24, audio(FRAMES, 24))
    # too short: 8 frames
    write_video(root / "short.mp4", _frames(face, [60] * 8), 24, audio(8, 24))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from anytalker_core.testing.tiny_wav2vec import make_tiny_wav2vec
    from anytalker_core.encoders import make_tiny_clip_vision, make_tiny_text_encoder, make_tiny_vae

    root = tmp_path_factory.mktemp("models")
    return {
        "vae": str(make_tiny_vae(root / "wan_2.1_vae.safetensors")),
        "clip_vision": str(make_tiny_clip_vision(root / "clip_vision_h.safetensors", hidden_size=32)),
        "text_encoder": str(make_tiny_text_encoder(root / "text", d_model=32)),
        "wav2vec": str(make_tiny_wav2vec(root / "wav2vec2", hidden_size=32, num_layers=2)),
    }


def _config(clips: Path, out: Path, models: dict, **kw):
    from train.config import PrepareConfig

    settings = dict(input=str(clips), output=str(out), max_area=SIZE * SIZE, max_frames=FRAMES, min_frames=FRAMES,
                    face_check_stride=8, max_motion=4.0, min_audio_rms_db=-45.0, **models)
    settings.update(kw)
    return PrepareConfig(**settings)


@pytest.fixture(scope="module")
def prepared(clips: Path, models: dict, tmp_path_factory) -> tuple[Path, dict]:
    from train.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "cache"
    return out, prepare(_config(clips, out, models))


def test_prepare_filters_and_caches(prepared, models: dict):
    from safetensors.torch import load_file

    from anytalker_core.encoders import load_clip_vision

    from train.data import CacheIndex, SharedEmbeddings, load_sample

    out, report = prepared
    by_id = {r["id"]: r for r in report["results"]}
    assert by_id["good_pan"]["status"] == "kept" and by_id["good_still"]["status"] == "kept"
    assert by_id["noface"]["reason"] == "face_count"
    assert by_id["silent"]["reason"] == "silent"
    assert by_id["shaky"]["reason"] == "camera_jitter" and by_id["shaky"]["jitter"] > 1.0
    assert by_id["short"]["reason"] == "too_short"
    assert by_id["good_pan"]["motion"] < 2.0 < by_id["shaky"]["motion"]
    assert report["summary"] == {"kept": 2, "dropped:face_count": 1, "dropped:silent": 1,
                                 "dropped:camera_jitter": 1, "dropped:too_short": 1}
    on_disk = json.loads((out / "reports" / "prepare-shard-0-of-1.json").read_text())
    assert on_disk["summary"] == report["summary"]

    index = CacheIndex([out])
    assert sorted(m["id"] for m in index.metas) == ["good_pan", "good_still"]
    pan = load_sample(out / "samples" / "good_pan.safetensors")
    meta = pan.meta
    assert (meta["frames"], meta["height"], meta["width"], meta["fps"]) == (FRAMES, SIZE, SIZE, 24.0)
    assert meta["caption"] == "An astronaut talks to the camera." and meta["caption_source"] == "sidecar"
    assert json.loads((out / "samples" / "good_still.json").read_text())["caption_source"] == "default"
    lat_f = (FRAMES - 1) // 4 + 1
    assert pan.latents.shape == (16, lat_f, SIZE // 8, SIZE // 8) == pan.first_frame_latent.shape
    assert not torch.allclose(pan.latents, pan.first_frame_latent, atol=1e-2)
    assert pan.audio_features.shape == (1, FRAMES, 2, 32)
    assert pan.face_clip_tokens.shape == (1, 257, 32) and pan.clip_tokens.shape == (257, 32)
    assert pan.text_embedding.shape[1] == 32
    # frame 0's pixels at the bucket size (two-person mode encodes side-by-side crops of them)
    assert pan.first_frame.dtype == torch.uint8 and pan.first_frame.shape == (SIZE, SIZE, 3)
    assert meta["shapes"]["first_frame"] == [SIZE, SIZE, 3] and meta["format_version"] == 2
    clip = load_clip_vision(models["clip_vision"])
    assert torch.allclose(clip.encode(pan.first_frame[None])[0], pan.clip_tokens, atol=0.05, rtol=0.02)
    # the face moves left as the crop window pans right: frame-0 box right of the last checked box
    boxes = load_file(str(out / "samples" / "good_pan.safetensors"))["face_boxes"][0]
    checked = boxes[~torch.isnan(boxes[:, 0])]
    assert len(checked) == 3 and checked[0, 0] > checked[-1, 0] + 2
    g = pan.global_face_box[0]
    assert g[0] <= checked[:, 0].min() and g[2] >= checked[:, 2].max()
    shared = SharedEmbeddings.load(out)
    assert shared.empty is not None and len(shared.two_person) == 4


def test_prepare_resumes_without_reencoding(prepared, clips: Path, models: dict):
    from train.prepare import prepare

    out, _ = prepared
    mtime = (out / "samples" / "good_pan.safetensors").stat().st_mtime_ns
    again = prepare(_config(clips, out, models))
    assert again["summary"]["cached"] == 2
    assert (out / "samples" / "good_pan.safetensors").stat().st_mtime_ns == mtime
    # a sample of the older format (no first_frame) is not "cached": the re-run re-encodes it
    meta_path = out / "samples" / "good_still.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 1}))
    again = prepare(_config(clips, out, models))
    by_id = {r["id"]: r["status"] for r in again["results"]}
    assert by_id == {"good_pan": "cached", "good_still": "kept", "noface": "dropped", "silent": "dropped",
                     "shaky": "dropped", "short": "dropped"}
    assert json.loads(meta_path.read_text())["format_version"] == 2


def test_prepare_reports_every_window_as_it_goes_and_skips_earlier_drops(prepared, clips: Path, models: dict,
                                                                        monkeypatch):
    """The per-window results are appended to reports/*.jsonl as they are decided (a kill keeps them);
    a re-run with the same filters does not decode the clips it dropped before."""
    import train.prepare as prep

    out, first = prepared
    lines = [json.loads(l) for l in (out / "reports" / "prepare-shard-0-of-1.jsonl").read_text().splitlines()]
    assert {r["id"] for r in lines} >= {"good_pan", "good_still", "noface", "silent", "shaky", "short"}
    assert json.loads((out / "reports" / "prepare-shard-0-of-1.json").read_text())["complete"] is True
    decoded = []
    real = prep._load_clip
    monkeypatch.setattr(prep, "_load_clip", lambda src, cfg: decoded.append(src.sample_id) or real(src, cfg))
    again = prep.prepare(_config(clips, out, models))
    by_id = {r["id"]: r for r in again["results"]}
    assert decoded == []  # kept clips are cached, dropped ones come from the earlier results
    assert by_id["shaky"]["reason"] == "camera_jitter" and by_id["shaky"]["previously"] is True
    assert again["summary"] == {k: v for k, v in {**first["summary"], "cached": 2}.items() if k != "kept"}
    # other filter settings: the drops are decided again
    again = prep.prepare(_config(clips, out, models, max_motion=100.0, max_jitter=100.0, max_cut=1.0,
                                 max_cut_warp_error=255.0))
    assert "shaky" in decoded and {r["id"]: r["status"] for r in again["results"]}["shaky"] == "kept"
    for suffix in (".safetensors", ".json"):  # leave the module's cache as the other tests expect it
        (out / "samples" / f"shaky{suffix}").unlink()


def test_truncated_mp4_and_short_speaker_track_are_named(clips: Path, models: dict, tmp_path: Path):
    from train.prepare import prepare

    folder = tmp_path / "in"
    folder.mkdir()
    data = (clips / "good_still.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])  # a download that stopped
    shutil.copy(clips / "good_still.mp4", folder / "voice.mp4")
    from anytalker_core.testing.speech import synthesize_speech

    track = synthesize_speech("Hi.", speed=350, path=folder / "voice.speaker0.wav")  # < the 0.71 s window
    seconds = track.numel() / 16000
    assert seconds < FRAMES / 24 - 2 / 24  # more than the one frame of rounding that is padded
    report = prepare(_config(folder, tmp_path / "out", models))
    by_id = {r["id"]: r for r in report["results"]}
    assert by_id["cut"]["status"] == "dropped" and by_id["cut"]["reason"] in ("audio_undecodable", "unreadable")
    assert by_id["cut"]["reason"] != "no_audio"
    assert by_id["voice"]["reason"] == "short_audio_track"
    assert f"speaker track 0 (voice.speaker0.wav) has {seconds:.2f} s" in by_id["voice"]["detail"]


def test_prepare_shards_split_the_clips(clips: Path, models: dict, tmp_path: Path):
    """Two shards of a manifest see disjoint clips whose union is the whole manifest."""
    from train.clips import discover_clips
    from train.prepare import prepare

    manifest = tmp_path / "clips.jsonl"
    names = ["noface", "silent", "shaky", "short"]  # all dropped by filters: no encoding needed here
    manifest.write_text("".join(json.dumps({"video": str(clips / f"{n}.mp4")}) + "\n" for n in names))
    assert [c.sample_id for c in discover_clips(manifest)] == sorted(names)
    seen = []
    for shard in range(2):
        report = prepare(_config(manifest, tmp_path / "cache", models, shard_index=shard, num_shards=2))
        seen.append({r["id"] for r in report["results"]})
        assert all(r["status"] == "dropped" for r in report["results"])
        assert (tmp_path / "cache" / "reports" / f"prepare-shard-{shard}-of-2.json").is_file()
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(names)


def test_prepared_cache_trains(prepared, models: dict, tmp_path: Path):
    """The cached format is what the DiT consumes: two steps of stage 1 on freshly prepared samples."""
    from train.config import ModelSection, TrainConfig
    from train.trainer import Trainer

    out, _ = prepared
    cfg = TrainConfig(stage=1, data=[str(out)], run_dir=str(tmp_path / "run"), max_steps=2, batch_size=1,
                      mixed_precision="no", num_workers=0, two_person_prob=1.0, warmup_steps=1, save_every=2,
                      clip_vision=models["clip_vision"],
                      model=ModelSection(tiny=True, gradient_checkpointing=True), export_at_end=False)
    losses = Trainer(cfg).run()
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The panning close-up's face (union over frames: 49 px) does not fit in half of the 96 px frame, so
    # stage 1 never pairs it and names it; with one pairable clip left there is no partner, so both
    # steps train single-person batches instead of cropping a face.
    report = json.loads((tmp_path / "run" / "pairing_report.json").read_text())
    assert [(s["id"], s["reason"]) for s in report["skipped"]] == [("good_pan", "face_wider_than_half")]
    assert "49 px wide does not fit in half of the 96-pixel-wide frame" in report["skipped"][0]["detail"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any(r["two_person"] for r in rows)


def test_cli_prepare_reports_bad_input(tmp_path: Path, capsys):
    from train.cli import main

    assert main(["prepare", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('input = "x"\noutput = "y"\nmax_frame = 81\n')
    assert main(["prepare", str(bad)]) == 2


def test_prepare_two_person_clip_with_speaker_tracks(models: dict, tmp_path: Path):
    """Stage-2 data: two faces side by side, one audio track per speaker (left to right) as sidecars."""
    from skimage import data

    from anytalker_core.testing.speech import synthesize_speech
    from train.data import load_sample
    from train.prepare import prepare

    clips = tmp_path / "duo"
    clips.mkdir()
    face = data.astronaut()
    left = _frames(face, [60] * FRAMES)
    right = _frames(face[:, ::-1], [150] * FRAMES)  # the mirrored astronaut: a second person
    frames = np.concatenate([left, right], axis=2)  # [T, 96, 192, 3]
    speech = synthesize_speech("Hello, I am on the left.", path=clips / "duo.speaker0.wav")
    synthesize_speech("And I answer from the right.", path=clips / "duo.speaker1.wav")
    write_video(clips / "duo.mp4", frames, 24, speech[: int(FRAMES / 24 * 16000)])
    write_video(clips / "mixed_only.mp4", frames, 24, speech[: int(FRAMES / 24 * 16000)])

    out = tmp_path / "cache"
    report = prepare(_config(clips, out, models, num_faces=2, max_area=SIZE * 2 * SIZE))
    by_id = {r["id"]: r for r in report["results"]}
    assert by_id["mixed_only"]["reason"] == "audio_tracks"  # a mixed track cannot be split per speaker
    assert by_id["duo"]["status"] == "kept", by_id["duo"]
    duo = load_sample(out / "samples" / "duo.safetensors")
    assert duo.meta["num_identities"] == 2 and (duo.meta["height"], duo.meta["width"]) == (SIZE, 2 * SIZE)
    assert duo.audio_features.shape == (2, FRAMES, 2, 32) and duo.face_clip_tokens.shape == (2, 257, 32)
    assert not torch.allclose(duo.audio_features[0], duo.audio_features[1])  # two different voices
    boxes = duo.global_face_box
    assert boxes[0, 2] <= SIZE + 4 and boxes[1, 0] >= SIZE - 4  # identity 0 on the left half, 1 on the right
