"""One face-selection rule: the Face Masks node, the CLI preview and generation pick the same faces for the
same photo and the same detections (a detection one of them drops is dropped by all of them)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "comfy_stub"))  # ComfyUI's API stand-in, for nodes.inputs


class FixedDetections:
    """A detector that reports fixed boxes (x1, y1, x2, y2 pixels), as a real one may: unsorted, one
    degenerate, one off the image, one small face."""

    name = "fixed"

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        return [np.asarray(b, np.float32) for b in self.boxes]


@pytest.fixture
def photo():
    from anytalker_core.testing.demo import demo_image

    return demo_image(2, size=128)  # scikit-image's astronaut twice, side by side: 256 x 128


DETECTIONS = [
    [150, 20, 230, 110],   # right face
    [60, 40, 50, 90],      # degenerate (x2 < x1)
    [20, 25, 100, 115],    # left face
    [300, 10, 340, 60],    # entirely right of the 256-px-wide image
    [110, 5, 126, 21],     # a small face (the largest-n rule drops it for n = 2)
]


@pytest.mark.parametrize("people", [1, 2, 3])
def test_node_cli_and_generation_choose_the_same_faces(photo, monkeypatch, people):
    import anytalker_core.faces as faces
    from anytalker_core.generation.inputs import detect_faces_for_preview
    from anytalker_core.generation.stages import plan, prepare_faces
    from nodes.inputs import choose_faces

    detector = FixedDetections(DETECTIONS)
    monkeypatch.setattr(faces, "load_detector", lambda *a, **k: detector)  # what every route loads

    node = choose_faces(photo, people, "auto", None, None, None).boxes
    _, preview = detect_faces_for_preview(photo, people, backend="auto")  # CLI --preview-faces
    video = plan(photo.shape[:2], 5, 128 * 256)
    generation = prepare_faces(detector, photo, people, video).boxes_xyxy

    expected = {1: [DETECTIONS[0]], 2: [DETECTIONS[2], DETECTIONS[0]],
                3: [DETECTIONS[2], DETECTIONS[4], DETECTIONS[0]]}[people]  # largest n, then left to right
    for boxes in (node, np.stack(preview), generation):
        np.testing.assert_array_equal(np.asarray(boxes, np.float32), np.asarray(expected, np.float32))


def test_too_few_usable_faces_is_the_same_error_everywhere(photo, monkeypatch):
    import anytalker_core.faces as faces
    from anytalker_core.errors import InputError
    from anytalker_core.generation.inputs import detect_faces_for_preview
    from anytalker_core.generation.stages import plan, prepare_faces

    detector = FixedDetections(DETECTIONS[:2])  # one usable face, one degenerate
    monkeypatch.setattr(faces, "load_detector", lambda *a, **k: detector)
    with pytest.raises(InputError, match="found 1 face but 2 audio tracks") as a:
        detect_faces_for_preview(photo, 2)
    with pytest.raises(InputError, match="found 1 face but 2 audio tracks") as b:
        prepare_faces(detector, photo, 2, plan(photo.shape[:2], 5, 128 * 256))
    assert str(a.value) == str(b.value)
