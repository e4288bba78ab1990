"""Face chain: reference rules, golden fixtures, manual boxes/masks, preview and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anytalker_core.errors import InputError
from anytalker_core.faces import (FaceBox, box_mask, build_face_masks, build_face_masks_from_masks, crop_box,
                                  crop_faces, draw_preview, expand_mask, locate_faces, prepare_faces, select_faces,
                                  square_box, y_mask_channels)
from anytalker_core.faces.preview import PALETTE


# ------------------------------------------------------------------------------------------
# golden fixtures


def test_verify_fixture_face_masks_passes(fixtures, capsys):
    from anytalker_core.cli import main

    rc = main(["verify-fixture", str(fixtures / "face_masks.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    names = ["face_bboxes_xywh", "face_masks_raw", "face_masks_expanded", "global_mask", "dit_mask",
             "token_masks", "inference_face_masks", "crop_boxes_xyxy"]
    for name in names:
        assert any(line.strip().startswith("PASS") and name in line for line in out.splitlines()), (name, out)
    assert "FAIL" not in out
    assert "8 passed, 0 failed" in out


def test_face_masks_fixture_is_bit_exact(fixtures):
    from anytalker_core.parity import run_fixture

    results = run_fixture(fixtures / "face_masks.json")
    assert len(results) == 8
    assert all(r.passed and r.max_abs == 0.0 for r in results), [r.line() for r in results]


def test_dit_inputs_face_chain_reproduced(fixtures):
    """The DiT fixtures' y[:4] and token masks come from the same chain on a tiny image."""
    from anytalker_core.parity import load_fixture

    fx = load_fixture(fixtures / "dit_inputs.json")
    p, t = fx.meta["params"], fx.tensors
    image_hw = tuple(p["tiny_image_hw"])
    n = int(p["n_identities"])
    chosen = select_faces(t["face_detections_xyxy"].numpy(), n)
    fm = build_face_masks(chosen, image_hw, (p["lat_h"], p["lat_w"]), p["latent_frames"])
    assert torch.equal(torch.from_numpy(fm.square_boxes_xywh), t["face_bboxes_xywh"])
    assert torch.equal(torch.from_numpy(fm.expanded_masks), t["face_masks_img"])
    assert torch.equal(fm.y_mask, t["y"][:4])
    assert torch.equal(fm.token_masks, t["face_token_mask_grid"])
    assert torch.equal(fm.token_masks.reshape(n, 1, 1, *fm.token_masks.shape[1:]), t["face_token_masks"])
    assert torch.equal(fm.token_masks.reshape(n, 1, -1, 1), t["face_token_mask_flat"])
    assert fm.token_mask(1).shape == (1, *t["face_token_mask_grid"].shape[1:])


# ------------------------------------------------------------------------------------------
# reference rules, with hand-computed expectations


def test_select_faces_keeps_largest_left_to_right():
    dets = [[300, 10, 340, 50],    # 40x40, right
            [10, 10, 20, 20],      # 10x10 distractor, leftmost
            [100, 10, 160, 70],    # 60x60, middle
            [200, 10, 250, 60]]    # 50x50
    kept = select_faces(dets, 3)
    assert [b[0] for b in kept] == [100, 200, 300]
    kept = select_faces([FaceBox(*d) for d in dets], 1)
    assert kept[0].tolist() == [100, 10, 160, 70]


def test_square_box_shifts_back_inside_and_clips():
    # wide box at the left edge: side 40, centre x 10 -> x1 -10 < 0 -> [0, 40]
    assert square_box([-10, 50, 30, 70], (100, 200)).tolist() == [0, 40, 40, 80]
    # tall box at the bottom right: side 30 about centre (190, 90) -> shifted to x [170, 200], y [70, 100]
    assert square_box([185, 75, 195, 105], (100, 200)).tolist() == [170, 70, 200, 100]
    # a box larger than the image ends up clipped to it
    assert square_box([0, 0, 300, 50], (100, 200)).tolist() == [0, 0, 200, 100]


def test_box_mask_truncates():
    m = box_mask([2.9, 1.5, 5.99, 4.2], (8, 8))
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 3, 2, 4)
    assert m.dtype == np.uint8 and m.sum() == 9


def test_expand_mask_rule():
    m = np.zeros((64, 64), np.uint8)
    m[10:20, 20:40] = 1  # rows 10..19, cols 20..39
    e = expand_mask(m)  # h: centre 14.5, new 11 -> rows 9..20; w: centre 29.5, new 24 -> cols 17..41
    rows, cols = np.nonzero(e)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 20, 17, 41)
    # bilinear resize of the all-ones content: ones up to float32 rounding of the weights
    assert np.allclose(e[9:21, 17:42], 1.0, atol=1e-6) and e.sum() == pytest.approx(12 * 25, abs=1e-3)
    # at the border the new box is clipped and the content squeezed into it
    m2 = np.zeros((16, 16), np.uint8)
    m2[0:4, 12:16] = 1
    e2 = expand_mask(m2, 2.0, 2.0)
    assert e2[:, :8].sum() == 0 and e2[:, 15].max() == pytest.approx(1.0) and e2.max() <= 1.0 + 1e-6
    # empty masks are returned unchanged
    assert expand_mask(np.zeros((5, 5))).sum() == 0


def test_y_mask_channels_first_frame_ones_then_resized_sum():
    g = np.zeros((16, 16), np.float32)
    g[:, :8] = 1.0
    g[4:8, 4:8] += 1.0  # overlap -> 2
    y = y_mask_channels(g, (4, 4), 3)
    assert y.shape == (4, 3, 4, 4) and y.dtype == torch.float32
    assert torch.all(y[:, 0] == 1)
    expected = F.interpolate(torch.from_numpy(g)[None, None], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(y[:, 1:], expected.expand(4, 2, 4, 4))
    assert y[0, 1, 0, :2].tolist() == [1.0, 1.0] and y[0, 1, 0, 2:].tolist() == [0.0, 0.0]
    assert y[0, 1, 1, 1] == 2.0


def test_build_face_masks_shapes_and_sum():
    fm = build_face_masks([[10, 10, 40, 40], [60, 20, 90, 50]], (64, 128), (8, 16), 5)
    assert fm.num_faces == 2 and fm.image_hw == (64, 128)
    assert fm.raw_masks.shape == (2, 64, 128) and fm.raw_masks.dtype == np.uint8
    assert fm.expanded_masks.shape == (2, 64, 128) and fm.expanded_masks.dtype == np.float32
    assert np.array_equal(fm.global_mask, fm.expanded_masks.sum(0))
    assert fm.y_mask.shape == (4, 5, 8, 16)
    assert fm.token_masks.shape == (2, 5, 4, 8)
    assert torch.equal(fm.token_masks[:, 0], fm.token_masks[:, 4])  # repeated over latent frames
    assert fm.crop_boxes.dtype == np.int64 and fm.crop_boxes.tolist() == [[10, 10, 40, 40], [60, 20, 90, 50]]
    # identity 0 sits left of identity 1 on the token grid
    cols = torch.arange(8, dtype=torch.float32)
    c0 = float((fm.token_masks[0, 0].sum(0) * cols).sum() / fm.token_masks[0, 0].sum())
    c1 = float((fm.token_masks[1, 0].sum(0) * cols).sum() / fm.token_masks[1, 0].sum())
    assert c0 < 4 <= c1


def test_crop_box_and_crop_faces():
    assert crop_box(np.float32([10.7, 3.2, 20.5, 20.5]), (40, 40)).tolist() == [10, 3, 31, 23]
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    crops = crop_faces(image, [[10, 3, 31, 23], [0, 0, 50, 40]])
    assert crops[0].shape == (20, 21, 3) and np.array_equal(crops[0], image[3:23, 10:31])
    assert crops[1].shape == (40, 50, 3)
    with pytest.raises(InputError, match=r"face crop box 1 \[40, 0, 60, 10\] lies outside the 50x40 image"):
        crop_faces(image, [[40, 0, 60, 10]])


# ------------------------------------------------------------------------------------------
# manual control


def _image(h=64, w=128):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_user_boxes_keep_given_order_and_order_permutes():
    img = _image()
    boxes = [[70, 10, 100, 40], [10, 10, 40, 40]]  # right face first: track 0 drives the right face
    fm = prepare_faces(img, 2, (8, 16), 3, boxes=boxes)
    assert fm.boxes_xyxy.tolist() == boxes
    fm2 = prepare_faces(img, 2, (8, 16), 3, boxes=boxes, order=[1, 0])
    assert fm2.boxes_xyxy.tolist() == boxes[::-1]
    assert torch.equal(fm2.token_masks[0], fm.token_masks[1])


def test_user_masks_override_boxes():
    img = _image()
    yy, xx = np.mgrid[:64, :128]
    left = ((yy - 30) ** 2 / 15 ** 2 + (xx - 30) ** 2 / 12 ** 2 <= 1).astype(np.float32)
    right = ((yy - 30) ** 2 / 15 ** 2 + (xx - 95) ** 2 / 12 ** 2 <= 1).astype(np.float32) * 0.9
    fm = prepare_faces(img, 2, (8, 16), 3, masks=np.stack([left, right]), boxes=[[0, 0, 5, 5], [6, 6, 9, 9]])
    assert np.array_equal(fm.raw_masks[0], left.astype(np.uint8))
    assert np.array_equal(fm.raw_masks[1], (right > 0.5).astype(np.uint8))
    assert fm.boxes_xyxy.tolist() == [[18, 15, 43, 46], [83, 15, 108, 46]]  # mask bounds, exclusive x2/y2
    assert fm.crop_boxes[0].tolist() == [15, 15, 46, 46]  # square of the bounds
    assert fm.expanded_masks[0].sum() > left.sum()  # enlarged like box masks
    assert fm.token_masks[0, 0, :, :4].sum() > 0 and fm.token_masks[0, 0, :, 4:].sum() == 0
    assert fm.token_masks[1, 0, :, :4].sum() == 0 and fm.token_masks[1, 0, :, 4:].sum() > 0
    # torch masks (a ComfyUI MASK batch) work the same
    fm_t = build_face_masks_from_masks(torch.from_numpy(np.stack([left, right])), (8, 16), 3)
    assert torch.equal(fm_t.token_masks, fm.token_masks)


def test_preview_numbers_faces():
    img = np.full((64, 128, 3), 128, np.uint8)
    fm = build_face_masks([[10, 20, 40, 50], [70, 20, 100, 50]], (64, 128), (8, 16), 3)
    out = draw_preview(img, fm.boxes_xyxy, fm.expanded_masks)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert tuple(out[35, 10]) == PALETTE[0] and tuple(out[35, 100]) == PALETTE[1]  # box outlines
    assert not np.array_equal(out[35, 25], img[35, 25])  # tinted inside the mask
    assert np.array_equal(out[60, 60], img[60, 60])  # untouched elsewhere
    assert np.array_equal(img, np.full((64, 128, 3), 128, np.uint8))  # input not modified
    with pytest.raises(InputError, match="expected 2 labels"):
        draw_preview(img, fm.boxes_xyxy, labels=["A"])


# ------------------------------------------------------------------------------------------
# errors


def test_error_no_face():
    with pytest.raises(InputError, match="no face found in the reference image"):
        select_faces([], 1)


def test_error_fewer_faces_than_voices():
    with pytest.raises(InputError) as err:
        select_faces([[10, 10, 50, 50]], 2)
    assert str(err.value) == "found 1 face but 2 audio tracks were given; pass boxes or masks (one per person)"
    with pytest.raises(InputError, match="found 2 faces but 3 audio tracks were given"):
        select_faces([[10, 10, 50, 50], [60, 10, 90, 50]], 3)


def test_error_box_outside_image():
    img = _image()
    with pytest.raises(InputError, match=r"face box 2 \(x1=130, y1=10, x2=160, y2=40\) lies outside the 128x64 image"):
        prepare_faces(img, 2, (8, 16), 3, boxes=[[10, 10, 40, 40], [130, 10, 160, 40]])
    with pytest.raises(InputError, match=r"face box 1 .*expected x2 > x1 and y2 > y1"):
        build_face_masks([[40, 10, 10, 40]], (64, 128), (8, 16), 3)
    with pytest.raises(InputError, match="must be finite"):
        build_face_masks([[np.nan, 10, 10, 40]], (64, 128), (8, 16), 3)


def test_error_box_and_mask_counts():
    img = _image()
    with pytest.raises(InputError, match="1 face box given for 2 audio tracks; give exactly one box per audio track"):
        prepare_faces(img, 2, (8, 16), 3, boxes=[[10, 10, 40, 40]])
    with pytest.raises(InputError, match="3 face masks given for 2 audio tracks"):
        prepare_faces(img, 2, (8, 16), 3, masks=np.ones((3, 64, 128), np.float32))
    with pytest.raises(InputError, match=r"face order \[0, 0\]: expected a permutation of 0..1"):
        prepare_faces(img, 2, (8, 16), 3, boxes=[[10, 10, 40, 40], [60, 10, 90, 40]], order=[0, 0])
    with pytest.raises(InputError, match="no detector, boxes or masks given"):
        locate_faces(img, 1)


def test_error_empty_or_misfit_masks():
    img = _image()
    masks = np.zeros((2, 64, 128), np.float32)
    masks[0, 10:20, 10:20] = 1
    with pytest.raises(InputError, match=r"face mask 2 is empty \(no pixel above 0.5\); paint over that person's face"):
        prepare_faces(img, 2, (8, 16), 3, masks=masks)
    with pytest.raises(InputError, match="face mask 1 has size 64x32 but the image is 128x64"):
        prepare_faces(img, 1, (8, 16), 3, masks=np.ones((1, 32, 64), np.float32))


def test_error_latent_and_image_inputs():
    with pytest.raises(InputError, match="latent size 7x16: expected even sizes"):
        build_face_masks([[10, 10, 40, 40]], (64, 128), (7, 16), 3)
    with pytest.raises(InputError, match=r"expected an RGB array \[H, W, 3\]"):
        prepare_faces(np.zeros((64, 128), np.uint8), 1, (8, 16), 3, boxes=[[1, 1, 9, 9]])
    with pytest.raises(InputError, match="expected dtype uint8"):
        prepare_faces(np.zeros((64, 128, 3), np.float32), 1, (8, 16), 3, boxes=[[1, 1, 9, 9]])
    with pytest.raises(InputError, match="number of audio tracks: expected at least 1"):
        prepare_faces(_image(), 0, (8, 16), 3, boxes=[])


class ListedBoxes:
    """A FaceDetector that returns a fixed list of boxes (the selection logic under test comes after it)."""

    name = "listed"

    def __init__(self, boxes):
        self.boxes = boxes
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        return [FaceBox(*b) for b in self.boxes]


def test_detections_are_filtered_selected_and_ordered():
    img = _image()
    det = ListedBoxes([[90, 5, 120, 35, 0.9],    # right face
                       [50, 50, 50, 60, 0.9],     # degenerate: dropped
                       [200, 10, 240, 40, 0.9],   # off the 128x64 image: dropped
                       [5, 5, 40, 40, 0.8],       # left face (largest)
                       [60, 50, 64, 54, 0.3]])    # tiny: not among the 2 largest
    chosen = locate_faces(img, 2, detector=det)
    assert [b.tolist() for b in chosen] == [[5, 5, 40, 40], [90, 5, 120, 35]]
    with pytest.raises(InputError, match=r"found 3 faces but 4 audio tracks were given"):
        locate_faces(img, 4, detector=det)
    with pytest.raises(InputError, match=r"no face found in the reference image \(detector 'listed'\)"):
        locate_faces(img, 1, detector=ListedBoxes([[300, 10, 340, 40]]))
    # boxes given: the detector is not consulted
    det.calls = 0
    prepare_faces(img, 1, (8, 16), 3, detector=det, boxes=[[10, 10, 30, 30]])
    assert det.calls == 0


def test_split_mask_one_region_per_person():
    from anytalker_core.faces import split_mask

    m = np.zeros((40, 100), np.float32)
    m[5:25, 60:90] = 1.0   # right person, painted first in memory order doesn't matter
    m[10:30, 5:30] = 1.0   # left person
    m[35:37, 45:47] = 1.0  # a stray dot: smallest, dropped for 2 people
    parts = split_mask(m, 2)
    assert parts.shape == (2, 40, 100)
    assert parts[0, 10:30, 5:30].all() and parts[0].sum() == 20 * 25
    assert parts[1, 5:25, 60:90].all() and parts[1].sum() == 20 * 30
    assert split_mask(torch.from_numpy(m)[None], 3).shape == (3, 40, 100)
    with pytest.raises(InputError, match="the face mask has 3 separate regions but 4 audio tracks were given"):
        split_mask(m, 4)
    with pytest.raises(InputError, match="has 0 separate regions but 1 audio track was given"):
        split_mask(np.zeros((8, 8)), 1)
