"""Interactivity core: golden fixture parity and the reference rules on hand-built tracks (no detector)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anytalker_core.errors import InputError
from anytalker_core.metrics.interactivity import (
    EYE_BROW_INDICES,
    FaceObservation,
    compute_interactivity,
    make_square_box,
    unified_crop_size,
)
from anytalker_core.parity import run_fixture


def _face(cx: float, cy: float, size: float = 100.0, brow_dy: float = 0.0, seed: int = 0) -> FaceObservation:
    """A face box centred at (cx, cy) with 106 landmarks spread inside it; eye/brow points moved by brow_dy."""
    rng = np.random.default_rng(seed)
    lm = np.stack([cx + rng.uniform(-0.4, 0.4, 106) * size, cy + rng.uniform(-0.4, 0.4, 106) * size], axis=1)
    lm[list(EYE_BROW_INDICES), 1] += brow_dy
    box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    return FaceObservation(box=box, landmarks=lm)


def _track(num_frames: int, dy_left, dy_right, fps: float = 24.0):
    return [[_face(200, 200, brow_dy=dy_left(t), seed=1), _face(600, 200, brow_dy=dy_right(t), seed=2)]
            for t in range(num_frames)]


def test_fixture_parity(fixtures):
    comparisons = run_fixture(fixtures / "interactivity.json")
    assert [c.name for c in comparisons] == ["score", "per_face", "score_b"]
    for cmp in comparisons:
        assert cmp.passed, cmp.line()


def test_fixture_outlier_rules_matter(fixtures):
    """Disabling the 10 px outlier rules changes the fixture score: the parity above really tests them."""
    from safetensors.numpy import load_file

    meta = json.loads((fixtures / "interactivity.json").read_text())
    t = load_file(str(fixtures / "interactivity.safetensors"))
    frames = [[FaceObservation(t["bboxes_xyxy"][i, s], t["landmarks"][i, s]) for s in range(2)]
              for i in range(t["landmarks"].shape[0])]
    p = meta["params"]
    kw = dict(fps=p["fps"], intervals=p["speaker_intervals"], frame_size=(p["frame_height"], p["frame_width"]))
    ref = compute_interactivity(frames, **kw)
    loose = compute_interactivity(frames, outlier_px=1e9, **kw)
    assert ref.score == pytest.approx(float(t["score"][0]), rel=1e-5)
    assert abs(loose.score - ref.score) > 1e-3


def test_motion_only_counted_while_listening():
    fps = 10.0
    # left moves 1 px/frame in eye/brow points throughout; right never moves
    frames = _track(20, lambda t: float(t), lambda t: 0.0, fps)
    everyone_listens = compute_interactivity(frames, fps, None, (480, 832))
    assert everyone_listens.valid
    assert everyone_listens.per_face["left"] == pytest.approx(1.0, rel=1e-5)  # scale 224/224 = 1
    assert everyone_listens.per_face["right"] == pytest.approx(0.0, abs=1e-6)
    assert everyone_listens.score == pytest.approx(0.5, rel=1e-5)
    # left speaks for the whole clip: its motion is excluded, only the still right face counts
    left_speaks = compute_interactivity(frames, fps, {"left": [[0.0, 5.0]]}, (480, 832))
    assert left_speaks.score == pytest.approx(0.0, abs=1e-6)
    assert "left" not in left_speaks.per_face
    # inclusive ends: frames 0..10 (t/fps <= 1.0) speak, 11..19 count (9 frames)
    partial = compute_interactivity(frames, fps, {"left": [[0.0, 1.0]]}, (480, 832))
    assert partial.counted[:, 0].sum() == 9 and not partial.counted[10, 0] and partial.counted[11, 0]
    # frame 0 has no motion and no weight
    assert np.isnan(partial.motion[0]).all() and not partial.counted[0].any()


def test_crop_scaling_and_square_boxes():
    # a 448 px face doubles the crop, so 1 px image motion becomes 0.5 px in the 224 crop
    frames = [[_face(300, 300, size=448, brow_dy=float(t), seed=1), _face(900, 300, size=448, seed=2)]
              for t in range(6)]
    assert unified_crop_size(frames, (720, 1280)) == 448
    res = compute_interactivity(frames, 25.0, None, (720, 1280))
    assert res.per_face["left"] == pytest.approx(0.5, rel=1e-5)
    assert make_square_box(0, 10, 40, 30, 100, 100) == (0, 0.0, 40, 40.0)
    assert make_square_box(90, 10, 100, 60, 100, 100) == (50, 10, 100, 60)


def test_invalid_when_a_face_disappears():
    frames = _track(12, lambda t: 0.0, lambda t: 0.0)
    frames[7] = frames[7][:1]
    res = compute_interactivity(frames, 24.0, None, (480, 832))
    assert res.status == "invalid" and res.score is None and res.per_face == {}
    assert res.reason == "face count changed at frame 7: 1 face instead of 2"
    assert res.reference_score() == -1.0


def test_invalid_single_face_and_no_face():
    one = [[_face(200, 200)] for _ in range(5)]
    res = compute_interactivity(one, 24.0, None, (480, 832))
    assert not res.valid and "exactly 2" in res.reason
    # the extension: one face required -> valid
    assert compute_interactivity(one, 24.0, None, (480, 832), num_faces=1).valid
    res = compute_interactivity([[] for _ in range(5)], 24.0, None, (480, 832))
    assert not res.valid and "no face" in res.reason


def test_leading_empty_frames_and_extra_faces_follow_the_reference():
    frames = _track(8, lambda t: float(t), lambda t: 0.0)
    frames[0] = []  # before the first detection: tolerated
    frames[3] = frames[3] + [_face(400, 400, size=20, seed=5)]  # a small third face: the 2 largest are kept
    res = compute_interactivity(frames, 24.0, None, (480, 832))
    assert res.valid
    assert res.per_face["left"] == pytest.approx(1.0, rel=1e-5)


def test_bad_inputs_raise_clear_errors():
    frames = _track(4, lambda t: 0.0, lambda t: 0.0)
    with pytest.raises(InputError, match="unknown side 'middle'"):
        compute_interactivity(frames, 24.0, {"middle": [[0, 1]]}, (480, 832))
    with pytest.raises(InputError, match="ends before it starts"):
        compute_interactivity(frames, 24.0, {"left": [[2, 1]]}, (480, 832))
    with pytest.raises(InputError, match="fps"):
        compute_interactivity(frames, 0, None, (480, 832))
    with pytest.raises(InputError, match=r"\[106, 2\]"):
        FaceObservation(box=[0, 0, 1, 1], landmarks=np.zeros((68, 2)))


def test_interval_text_for_nodes():
    from anytalker_core.metrics.runner import parse_intervals_text

    assert parse_intervals_text("  ") is None
    assert parse_intervals_text('{"left": [[0, 1.5]], "right": []}') == {"left": [[0, 1.5]], "right": []}
    with pytest.raises(InputError, match="not valid JSON"):
        parse_intervals_text("{left: 1}")


def test_parity_runner_keeps_two_faces_like_the_reference(fixtures, tmp_path):
    """A fixture with a third, smaller identity: the reference keeps the two largest faces, so the stored
    results stay those of the two-face fixture and the runner must still pass."""
    from safetensors.numpy import load_file, save_file

    meta = json.loads((fixtures / "interactivity.json").read_text())
    t = load_file(str(fixtures / "interactivity.safetensors"))
    lm, boxes = t["landmarks"], t["bboxes_xyxy"]
    small_lm = (lm[:, :1] - lm[:, :1].mean(axis=2, keepdims=True)) * 0.2 + np.array([416.0, 400.0], np.float32)
    centre = np.array([416.0, 400.0, 416.0, 400.0], np.float32)
    small_box = (boxes[:, :1] - boxes[:, :1, [0, 1, 0, 1]].mean(axis=-1, keepdims=True)) * 0.2 + centre
    t3 = dict(t)
    t3["landmarks"] = np.ascontiguousarray(np.concatenate([lm, small_lm.astype(np.float32)], axis=1))
    t3["bboxes_xyxy"] = np.ascontiguousarray(np.concatenate([boxes, small_box.astype(np.float32)], axis=1))
    # scenario b: the third face leaves together with the dropped one (else it would stand in for it)
    t3["present_b"] = np.ascontiguousarray(np.concatenate([t["present_b"], t["present_b"].min(1, keepdims=True)], 1))
    save_file(t3, str(tmp_path / "interactivity3.safetensors"))
    meta["file"] = "interactivity3.safetensors"
    (tmp_path / "interactivity3.json").write_text(json.dumps(meta))
    for cmp in run_fixture(tmp_path / "interactivity3.json"):
        assert cmp.passed, cmp.line()
