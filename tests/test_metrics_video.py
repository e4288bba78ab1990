"""End to end on real pixels: a real face photo (scikit-image astronaut, two copies side by side) with known
synthetic eye/brow motion, through the offline MediaPipe landmark backend; SyncNet on a real mp4 with espeak
speech and random weights; the folder runner's CSV/Markdown/PNG output."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("mediapipe")
skdata = pytest.importorskip("skimage.data")

from anytalker_core.errors import MissingModelError  # noqa: E402
from anytalker_core.metrics.interactivity import EYE_BROW_INDICES  # noqa: E402
from anytalker_core.metrics.landmarks import MESH_FOR_106, MediaPipeLandmarker, make_landmarker  # noqa: E402
from anytalker_core.metrics.runner import score_video  # noqa: E402

FPS = 24.0


@pytest.fixture(scope="module")
def face_pair():
    """``(image 512x1024, warp(dl, dr) -> frame 256x512)``: eye/brow band shifted vertically by d px."""
    img = skdata.astronaut()
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # the astronaut's eyes and brows lie around y 97, x 185..265 (512 px image)
    band = np.exp(-((yy - 97) ** 2) / (2 * 14 ** 2) - ((xx - 225) ** 2) / (2 * 55 ** 2)).astype(np.float32)

    def warp(dl: float, dr: float) -> np.ndarray:
        halves = [cv2.remap(img, xx, (yy - np.float32(d) * band).astype(np.float32), cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT) for d in (dl, dr)]
        return np.ascontiguousarray(np.concatenate(halves, axis=1)[::2, ::2])

    return img, warp


def _clip(warp, amp: float, frames: int = 24, left_only_until: int | None = None) -> np.ndarray:
    out = []
    for t in range(frames):
        dl = amp * np.sin(2 * np.pi * t / 12)
        dr = amp * np.sin(2 * np.pi * t / 8 + 1.0)
        if left_only_until is not None:
            dl = dl if t <= left_only_until else 0.0
            dr = 0.0
        out.append(warp(dl, dr))
    return np.stack(out)


@pytest.fixture(scope="module")
def landmarker():
    lm = MediaPipeLandmarker()
    yield lm
    lm.close()


def test_mediapipe_runs_offline_on_a_real_photo(face_pair, landmarker):
    img, warp = face_pair
    faces = landmarker.detect(warp(0.0, 0.0))
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f.box[0])
    assert left.box[2] < 256 <= right.box[0]
    # mapped points are the same semantic points: brows above eyes, eye corners ordered outer -> inner
    lm = left.landmarks
    brows, eyes = lm[list(EYE_BROW_INDICES[:10])], lm[list(EYE_BROW_INDICES[10:])]
    assert brows[:, 1].mean() < eyes[:, 1].mean()
    assert lm[35, 0] < lm[39, 0] < lm[89, 0] < lm[93, 0]  # image-left eye outer < inner < right eye inner < outer
    assert lm[43, 0] < lm[50, 0] < lm[102, 0] < lm[101, 0]  # brow ends
    assert np.isfinite(lm).all(axis=1).sum() == len(MESH_FOR_106) == 68
    # the second copy is the same face shifted by half the width
    np.testing.assert_allclose(right.landmarks[list(EYE_BROW_INDICES)] - [256, 0],
                               lm[list(EYE_BROW_INDICES)], atol=1.5)


def test_more_motion_scores_higher(face_pair, landmarker):
    _, warp = face_pair
    scores = []
    for amp in (0.0, 2.0, 6.0):
        res = score_video(_clip(warp, amp), FPS, None, landmarker, make_plot=False).interactivity
        assert res.valid, res.reason
        scores.append(res.score)
    still, small, large = scores
    assert still < 0.05
    assert small > still + 0.1
    assert large > small * 1.3


def test_speaking_motion_is_excluded(face_pair, landmarker):
    _, warp = face_pair
    frames = _clip(warp, 6.0, left_only_until=12)  # left moves during frames 0..12 only, back at rest at 12
    listening = score_video(frames, FPS, None, landmarker, make_plot=False).interactivity
    speaking = score_video(frames, FPS, {"left": [[0.0, 12 / FPS]], "right": []}, landmarker,
                           make_plot=False).interactivity
    assert listening.per_face["left"] > 0.2
    assert speaking.valid and speaking.score < 0.1
    assert speaking.score < listening.per_face["left"] / 3


def test_face_disappearing_is_invalid(face_pair, landmarker):
    _, warp = face_pair
    frames = _clip(warp, 2.0, frames=16).copy()
    frames[9:12, :, 256:] = 128  # the right person leaves for three frames
    score = score_video(frames, FPS, None, landmarker)
    res = score.interactivity
    assert res.status == "invalid" and res.score is None
    assert res.reason == "face count changed at frame 9: 1 face instead of 2"
    assert score.plot is not None and score.plot.dtype == np.uint8 and score.plot.ndim == 3


def test_insightface_backend_names_the_missing_models(tmp_path):
    with pytest.raises(MissingModelError, match="models/insightface/models/buffalo_l"):
        make_landmarker("insightface", tmp_path)
    with pytest.raises(MissingModelError, match="needs the folder"):
        make_landmarker("insightface", None)


def test_insightface_pack_lookup(tmp_path):
    from anytalker_core.metrics.landmarks import find_insightface_pack

    pack = tmp_path / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"")
    with pytest.raises(MissingModelError, match="2d106det.onnx"):
        find_insightface_pack(tmp_path / "insightface")
    (pack / "2d106det.onnx").write_bytes(b"")
    root = tmp_path / "insightface"
    assert find_insightface_pack(root) == root  # ComfyUI's models/insightface
    assert find_insightface_pack(root / "models") == root
    assert find_insightface_pack(pack) == root  # the pack folder itself


def _speech(tmp_path, text: str, seconds: float):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from anytalker_core.io.media import load_audio

    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    audio = load_audio(wav, 16000).numpy()
    n = int(seconds * 16000)
    return np.pad(audio, (0, max(0, n - audio.size)))[:n]


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    import torch
    from anytalker_core.metrics.syncnet import SyncNet, save_syncnet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    return save_syncnet(SyncNet().eval(), path)


def test_syncnet_on_a_real_mp4_with_audio(tmp_path, face_pair, landmarker, syncnet_file):
    from anytalker_core.io.media import read_video, write_video

    _, warp = face_pair
    audio = _speech(tmp_path, "hello there, how are you", 1.0)
    path = write_video(tmp_path / "talk.mp4", _clip(warp, 2.0), FPS, audio=audio)
    clip = read_video(path)
    intervals = {"left": [[0.0, 0.5]], "right": [[0.52, 1.0]]}
    score = score_video(clip.frames, clip.fps, intervals, landmarker, audio=clip.audio,
                        sample_rate=clip.sample_rate, syncnet_path=syncnet_file, make_plot=False)
    sync = score.sync
    assert sync is not None and set(sync.per_face) == {"left", "right"}
    for value in (sync.sync_c, sync.sync_d, sync.sync_c_star, sync.sync_d_star):
        assert value is not None and np.isfinite(value)
    assert sync.sync_c >= 0 and sync.sync_d > 0  # median - min >= 0
    left = sync.per_face["left"]
    assert left.whole.dists.shape == (left.whole.num_windows, 31) and abs(left.whole.offset) <= 15
    assert len(left.segments) == 1 and len(sync.per_face["right"].segments) == 1
    row = score.row()
    assert row["sync_c_star"] == pytest.approx(sync.sync_c_star)
    text = score.summary()
    assert text.startswith("clip: Interactivity ") and f"Sync-C* {sync.sync_c_star:.3f}" in text


def test_folder_runner_writes_tables_and_plots(tmp_path, face_pair, syncnet_file):
    from anytalker_core.io.media import write_video
    from anytalker_core.cli import evaluate as command

    _, warp = face_pair
    audio = _speech(tmp_path, "one two three", 0.5)
    videos = tmp_path / "videos"
    write_video(videos / "calm.mp4", _clip(warp, 0.0, frames=12), FPS, audio=audio)
    write_video(videos / "lively.mp4", _clip(warp, 6.0, frames=12), FPS, audio=audio)
    broken = _clip(warp, 2.0, frames=12).copy()
    broken[5:, :, 256:] = 128
    write_video(videos / "broken.mp4", broken, FPS)  # no audio track: SyncNet columns stay empty
    intervals = tmp_path / "speaker_duration.json"
    intervals.write_text(json.dumps({"calm.mp4": {"left": [[0.0, 0.2]], "right": []},
                                     "lively.mp4": {"left": [], "right": [[0.3, 0.4]]}}))
    models = tmp_path / "models"
    (models / "syncnet").mkdir(parents=True)
    shutil.copy(syncnet_file, models / "syncnet" / "syncnet_v2.model")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "eval"
    args = parser.parse_args(["--videos", str(videos), "--intervals", str(intervals), "--out", str(out),
                              "--models-dir", str(models)])
    assert command.run(args) == 0

    import csv
    rows = list(csv.DictReader((out / "results.csv").open()))
    by_clip = {r["clip"]: r for r in rows}
    assert set(by_clip) == {"broken.mp4", "calm.mp4", "lively.mp4", "overall"}
    assert by_clip["broken.mp4"]["status"] == "invalid" and by_clip["broken.mp4"]["interactivity"] == ""
    assert "face count changed at frame 5" in by_clip["broken.mp4"]["note"]
    assert by_clip["broken.mp4"]["sync_c"] == ""
    calm, lively = float(by_clip["calm.mp4"]["interactivity"]), float(by_clip["lively.mp4"]["interactivity"])
    assert calm < lively
    assert float(by_clip["overall"]["interactivity"]) == pytest.approx((calm + lively) / 2, rel=1e-5)
    assert by_clip["overall"]["status"] == "2/3 valid"
    for clip in ("calm.mp4", "lively.mp4"):
        assert np.isfinite(float(by_clip[clip]["sync_c"])) and np.isfinite(float(by_clip[clip]["sync_d"]))
    assert np.isfinite(float(by_clip["calm.mp4"]["sync_c_star"]))  # left speaks 0.0-0.2 s: 6 frames at 25 fps
    assert by_clip["lively.mp4"]["sync_c_star"] == ""  # 0.3-0.4 s is too short to score
    md = (out / "results.md").read_text()
    assert md.startswith("| clip | status | interactivity |") and "**overall**" in md
    trace = list(csv.DictReader((out / "traces" / "calm.csv").open()))
    assert len(trace) == 12 and trace[0]["motion_left"] == "" and float(trace[1]["motion_left"]) < 0.05
    assert [r["speaking_left"] for r in trace[:6]] == ["1"] * 5 + ["0"]  # 0.0-0.2 s at 24 fps: frames 0..4
    assert trace[5]["counted_left"] == "1" and trace[4]["counted_left"] == "0"
    for stem in ("calm", "lively", "broken"):
        png = out / "plots" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comfyui_style_float_tensor_frames(face_pair, landmarker):
    import torch

    _, warp = face_pair
    frames = _clip(warp, 4.0, frames=8)
    as_uint8 = score_video(frames, FPS, None, landmarker, make_plot=False).interactivity
    as_tensor = score_video(torch.from_numpy(frames).float() / 255.0, FPS, None, landmarker,
                            make_plot=False).interactivity
    assert as_uint8.valid and as_tensor.score == as_uint8.score
