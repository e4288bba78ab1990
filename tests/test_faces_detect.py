"""Face detection on real photos (scikit-image) and the detector loading errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from anytalker_core.errors import InputError, MissingModelError
from anytalker_core.faces import (FaceBox, FaceDetector, crop_faces, draw_preview, find_insightface_pack, load_detector,
                                  locate_faces, prepare_faces)
from anytalker_core.faces.detect import _merge_boxes, _square_tiles

skimage_data = pytest.importorskip("skimage.data")
needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="mediapipe (optional face detector) not installed")


def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512x512 RGB, one face


def cameraman() -> np.ndarray:
    return np.repeat(skimage_data.camera()[..., None], 3, axis=2)  # 512x512 grey, one face in profile


def side_by_side(*images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(images, axis=1))


@pytest.fixture(scope="module")
def detector():
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe (optional face detector) not installed")
    det = load_detector("mediapipe")
    yield det
    det.close()


def centroid_x(mask: np.ndarray | torch.Tensor) -> float:
    m = np.asarray(mask, dtype=np.float64)
    return float((m.sum(axis=0) * np.arange(m.shape[1])).sum() / m.sum())


# ------------------------------------------------------------------------------------------
# mediapipe on real photos


@needs_mediapipe
def test_astronaut_face_box(detector):
    assert isinstance(detector, FaceDetector)
    boxes = detector.detect(astronaut())
    assert len(boxes) == 1
    box = boxes[0]
    # her face spans about x 175-278, y 68-175 in the 512x512 image (checked by eye on the preview)
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    assert 200 < cx < 250 and 100 < cy < 145, box
    assert 160 < box.x1 and box.x2 < 295 and 50 < box.y1 and box.y2 < 190, box
    assert 80 < box.width < 130 and 80 < box.height < 130 and box.score > 0.5


@needs_mediapipe
def test_two_people_left_to_right(detector):
    a = astronaut()
    image = side_by_side(a, a[:, ::-1])  # 512x1024: the astronaut and her mirror image
    fm = prepare_faces(image, 2, (64, 128), 21, detector=detector)
    assert fm.boxes_xyxy[0, 0] < fm.boxes_xyxy[1, 0]
    assert fm.boxes_xyxy[0, 2] < 512 < fm.boxes_xyxy[1, 0]  # one face per half
    assert fm.y_mask.shape == (4, 21, 64, 128) and fm.token_masks.shape == (2, 21, 32, 64)
    assert torch.all(fm.y_mask[:, 0] == 1)
    # mask placement: each identity's mask sits in its own half (image and token grid)
    assert centroid_x(fm.expanded_masks[0]) < 512 < centroid_x(fm.expanded_masks[1])
    assert centroid_x(fm.token_masks[0, 0]) < 32 < centroid_x(fm.token_masks[1, 0])
    # mirrored faces: mirrored boxes (the detector is not exactly mirror-symmetric; a few px)
    assert abs((1024 - fm.boxes_xyxy[1, 2]) - fm.boxes_xyxy[0, 0]) < 12


@needs_mediapipe
def test_three_people_left_to_right(detector):
    a = astronaut()
    image = side_by_side(a, a[:, ::-1], cameraman())  # 512x1536
    fm = prepare_faces(image, 3, (64, 192), 5, detector=detector)
    assert fm.token_masks.shape == (3, 5, 32, 96) and fm.y_mask.shape == (4, 5, 64, 192)
    for i in range(3):
        assert 512 * i < centroid_x(fm.expanded_masks[i]) < 512 * (i + 1), i
        assert 32 * i < centroid_x(fm.token_masks[i, 0]) < 32 * (i + 1), i
    crops = crop_faces(image, fm.crop_boxes)
    assert [c.shape[:2] for c in crops] == [(int(b[3] - b[1]), int(b[2] - b[0])) for b in fm.crop_boxes]
    assert all(abs(c.shape[0] - c.shape[1]) <= 1 and c.shape[0] > 60 for c in crops)  # square face crops
    preview = draw_preview(image, fm.boxes_xyxy, fm.expanded_masks)
    assert preview.shape == image.shape and preview.dtype == np.uint8


@needs_mediapipe
def test_more_faces_than_voices_keeps_largest(detector):
    a = astronaut()
    image = side_by_side(cameraman(), a, a[:, ::-1])  # the cameraman's face is the smallest
    fm = prepare_faces(image, 2, (64, 192), 3, detector=detector)
    assert 512 < fm.boxes_xyxy[0, 0] < 1024 < fm.boxes_xyxy[1, 0]


@needs_mediapipe
def test_detection_errors_on_real_photos(detector):
    with pytest.raises(InputError) as err:
        prepare_faces(astronaut(), 2, (64, 64), 3, detector=detector)
    assert str(err.value) == "found 1 face but 2 audio tracks were given; pass boxes or masks (one per person)"
    grey = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(InputError, match=r"no face found in the reference image \(detector 'mediapipe'\)"):
        prepare_faces(grey, 1, (32, 32), 3, detector=detector)
    with pytest.raises(InputError, match="no face found"):
        locate_faces(np.ascontiguousarray(skimage_data.coffee()), 1, detector=detector)


@needs_mediapipe
def test_manual_boxes_win_over_detection(detector):
    a = astronaut()
    image = side_by_side(a, a[:, ::-1])
    boxes = [[600, 300, 700, 400], [20, 300, 120, 400]]  # no faces there; right one first
    fm = prepare_faces(image, 2, (64, 128), 3, detector=detector, boxes=boxes)
    assert fm.boxes_xyxy.tolist() == boxes
    assert centroid_x(fm.token_masks[0, 0]) > 32 > centroid_x(fm.token_masks[1, 0])
    # an explicit order on detections: track 0 drives the right-hand face
    fm2 = prepare_faces(image, 2, (64, 128), 3, detector=detector, order=[1, 0])
    assert fm2.boxes_xyxy[0, 0] > 512 > fm2.boxes_xyxy[1, 0]


def test_square_tiles_and_merge():
    assert _square_tiles(512, 512) == []
    assert _square_tiles(512, 1536) == [(0, 0, 512, 512), (256, 0, 768, 512), (512, 0, 1024, 512),
                                        (768, 0, 1280, 512), (1024, 0, 1536, 512)]
    assert _square_tiles(700, 300)[-1] == (0, 400, 300, 700)
    merged = _merge_boxes([FaceBox(0, 0, 10, 10, 0.6), FaceBox(1, 1, 11, 11, 0.9), FaceBox(2, 2, 8, 8, 0.95),
                           FaceBox(50, 50, 60, 60, 0.5)])
    assert [b.score for b in merged] == [0.95, 0.5]


# ------------------------------------------------------------------------------------------
# loading errors


def test_unknown_backend():
    with pytest.raises(InputError, match="face detector 'dlib': expected one of auto, insightface, mediapipe"):
        load_detector("dlib")


@needs_mediapipe
def test_auto_backend_falls_back_to_mediapipe(tmp_path):
    det = load_detector("auto", models_dir=tmp_path)  # no InsightFace pack there
    try:
        assert det.name == "mediapipe"
        assert len(det.detect(astronaut())) == 1
    finally:
        det.close()


def test_insightface_needs_models_dir():
    with pytest.raises(MissingModelError, match="needs its models folder: pass models_dir"):
        load_detector("insightface")


def test_insightface_models_missing(tmp_path):
    with pytest.raises(MissingModelError) as err:
        load_detector("insightface", models_dir=tmp_path)
    msg = str(err.value)
    assert f"missing at {tmp_path / 'models' / 'antelopev2'}" in msg and "put the antelopev2 or buffalo_l pack" in msg


def test_insightface_pack_one_folder_too_deep(tmp_path):
    nested = tmp_path / "models" / "antelopev2" / "antelopev2"
    nested.mkdir(parents=True)
    (nested / "scrfd_10g_bnkps.onnx").write_bytes(b"\0")
    with pytest.raises(MissingModelError, match="one folder too deep .*move the .onnx files up"):
        find_insightface_pack(tmp_path)


def test_insightface_pack_layouts(tmp_path):
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"\0")
    # ComfyUI's models/insightface, its models/ subfolder, or the pack folder itself
    assert find_insightface_pack(tmp_path) == (tmp_path, "buffalo_l")
    assert find_insightface_pack(tmp_path / "models") == (tmp_path, "buffalo_l")
    assert find_insightface_pack(pack) == (tmp_path, "buffalo_l")
    with pytest.raises(MissingModelError, match="put the antelopev2 pack there"):
        find_insightface_pack(tmp_path, "antelopev2")


@pytest.mark.skipif(importlib.util.find_spec("insightface") is not None, reason="insightface is installed")
def test_insightface_not_installed(tmp_path):
    pack = tmp_path / "models" / "antelopev2"
    pack.mkdir(parents=True)
    (pack / "scrfd_10g_bnkps.onnx").write_bytes(b"\0")
    with pytest.raises(MissingModelError, match="needs the insightface package.*pip install insightface onnxruntime"):
        load_detector("insightface", models_dir=tmp_path)


def test_mediapipe_bad_model_name():
    from anytalker_core.faces import MediaPipeDetector

    with pytest.raises(InputError, match="mediapipe face model 'huge'"):
        MediaPipeDetector(model="huge")
