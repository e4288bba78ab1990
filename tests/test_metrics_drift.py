"""The drift report on real pixels: scikit-image's astronaut (two copies side by side) through the offline
MediaPipe landmarks, with a known colour cast, a known face-shape change and a mouth that opens with the
audio's loudness; and ``anytalker evaluate --drift`` on an mp4."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("mediapipe")
skdata = pytest.importorskip("skimage.data")

from anytalker_core.metrics.drift import drift_report, window_spans  # noqa: E402
from anytalker_core.metrics.landmarks import MediaPipeLandmarker, observe_frames  # noqa: E402

FPS = 24.0
SR = 16000
PER_WINDOW = 8


@pytest.fixture(scope="module")
def make_frame():
    img = skdata.astronaut()
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lower_lip = np.exp(-((yy - 160) ** 2) / (2 * 9 ** 2) - ((xx - 223) ** 2) / (2 * 30 ** 2)).astype(np.float32)

    def frame(mouth: float = 0.0, stretch: float = 1.0, cast: bool = False) -> np.ndarray:
        """mouth: lower-lip shift in px (opens the mouth); stretch: face widened about its centre."""
        mapx = ((xx - 225) / np.float32(stretch) + 225).astype(np.float32)
        mapy = (yy - np.float32(mouth) * lower_lip).astype(np.float32)
        half = cv2.remap(img, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if cast:  # warmer and darker, as a drifting VAE round trip does
            half = np.clip(half.astype(np.float64) * [1.15, 0.95, 0.78] + [8, 0, -8], 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.concatenate([half, half], axis=1)[::2, ::2])

    return frame


@pytest.fixture(scope="module")
def clip(make_frame):
    """3 windows of 8 frames: 1 talks, 2 talks with a colour cast, 3 has a wider face and a closed mouth."""
    opening = 10.0 * np.abs(np.sin(np.arange(PER_WINDOW) * np.pi / 4))  # px, per frame
    frames = [make_frame(mouth=m) for m in opening] + [make_frame(mouth=m, cast=True) for m in opening]
    frames += [make_frame(stretch=1.4) for _ in range(PER_WINDOW)]
    # audio: a 220 Hz tone whose loudness follows the lip opening in windows 1-2, silent in window 3
    hop = int(SR / FPS)
    loud = np.concatenate([opening, opening, np.zeros(PER_WINDOW)]) / 10.0
    t = np.arange(hop * len(frames)) / SR
    audio = (0.5 * np.repeat(loud, hop) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack(frames), audio, make_frame()


def test_drift_report_sees_colour_shape_mouth_and_audio(clip):
    frames, audio, start = clip
    landmarker = MediaPipeLandmarker()
    try:
        observations = observe_frames(frames, landmarker)
        start_faces = landmarker.detect(start)
    finally:
        landmarker.close()
    spans = [(0, 8), (8, 16), (16, 24)]
    report = drift_report(frames, FPS, start, observations, start_faces, spans, audio=audio, sample_rate=SR,
                          intervals={"left": [[0.0, 1.0]], "right": []})
    w1, w2, w3 = report.windows
    assert w1.delta_e < 1.5 and w3.delta_e < 4 and w2.delta_e > 8  # the cast window drifted in colour
    for side in ("left", "right"):
        assert w1.identity[side] > 0.97 and w2.identity[side] > 0.95
        assert w3.identity[side] < w1.identity[side] - 0.05  # the widened face
        assert w1.mouth[side] > 3 * w3.mouth[side]  # the mouth moves in window 1 and not in window 3
    assert w1.sync["left"] > 0.7 and w1.audio["left"] > 0.1  # lip opening follows the loudness
    assert w1.audio["right"] is None  # right never speaks
    assert w3.audio["left"] == pytest.approx(0.0, abs=1e-6)
    assert all(w.interactivity is not None and w.interactivity >= 0 for w in report.windows)  # right listens
    table = report.markdown()
    assert table.startswith("| window | frames | time_s | delta_e | identity_left |") and table.count("\n") == 5
    assert report.rows()[1]["frames"] == "8-15"


def test_window_spans_follow_the_generation_plan():
    assert window_spans(1441) == [(k * 72, (k + 1) * 72) for k in range(19)] + [(1368, 1441)]
    assert window_spans(24, 13, 5) == [(0, 8), (8, 16), (16, 24)]  # 24 frames: not 4n+1, last span cut
    assert window_spans(50, 81) == [(0, 50)]


def test_evaluate_cli_writes_the_drift_report(tmp_path, clip):
    from anytalker_core.cli import evaluate as command
    from anytalker_core.io.media import write_video
    from PIL import Image

    frames, audio, start = clip
    videos, starts, out = tmp_path / "videos", tmp_path / "starts", tmp_path / "eval"
    write_video(videos / "talk.mp4", frames, FPS, audio=audio)
    starts.mkdir()
    Image.fromarray(start).save(starts / "talk.png")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--videos", str(videos), "--out", str(out), "--drift", "--window-frames", "13",
                              "--overlap-frames", "5", "--start-images", str(starts), "--no-plots"])
    assert command.run(args) == 0
    rows = list(csv.DictReader((out / "drift" / "talk.csv").open()))
    assert [r["frames"] for r in rows] == ["0-7", "8-15", "16-23"]
    assert float(rows[1]["delta_e"]) > 6 > float(rows[0]["delta_e"])
    assert (out / "drift" / "talk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "drift" / "talk.md").read_text().startswith("| window |")
