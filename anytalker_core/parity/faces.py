"""Parity runner for the ``face_masks`` fixture group: detections → every stored mask tensor."""

from __future__ import annotations

import numpy as np
import torch

from . import Comparison, Fixture, compare, compare_exact
from ..faces.masks import build_face_masks, select_faces

#: golden tensors read as inputs (the detector's boxes)
INPUTS = ("detections_xyxy",)

MASK_ATOL = 1e-6  # the fixture allows 1e-6 for resize summation order; we aim for exact


def run(fixture: Fixture) -> list[Comparison]:
    p = fixture.meta["params"]
    t = fixture.tensors
    image_hw = (int(p["H_img"]), int(p["W_img"]))
    latent_hw = (int(p["lat_h"]), int(p["lat_w"]))
    latent_frames = int(p["latent_frames"]) if "latent_frames" in p else (int(p["video_frames"]) - 1) // 4 + 1
    # the reference silently returns fewer faces than requested when fewer were detected (this project
    # raises instead); reproduce its output with the count it actually returned
    n = int(p.get("n_faces_returned", p["n_faces_requested"]))

    chosen = select_faces(t["detections_xyxy"].numpy(), n, source="the fixture detections")
    fm = build_face_masks(chosen, image_hw, latent_hw, latent_frames)
    n_tok = fm.token_masks.shape[0]
    inference = fm.token_masks.reshape(n_tok, 1, 1, *fm.token_masks.shape[1:])  # [N,1,1,F,h,w] as passed to the DiT

    def approx(name: str, actual, expected) -> Comparison:
        return compare(name, torch.as_tensor(np.asarray(actual)) if not torch.is_tensor(actual) else actual,
                       expected, MASK_ATOL, 0.0)

    return [
        compare_exact("face_bboxes_xywh", torch.from_numpy(fm.square_boxes_xywh), t["face_bboxes_xywh"]),
        compare_exact("face_masks_raw", torch.from_numpy(fm.raw_masks), t["face_masks_raw"]),
        approx("face_masks_expanded", fm.expanded_masks, t["face_masks_expanded"]),
        approx("global_mask", fm.global_mask, t["global_mask"]),
        approx("dit_mask", fm.y_mask, t["dit_mask"]),
        approx("token_masks", fm.token_masks[:, 0], t["token_masks"]),
        approx("inference_face_masks", inference, t["inference_face_masks"]),
        compare_exact("crop_boxes_xyxy", torch.from_numpy(fm.crop_boxes), t["crop_boxes_xyxy"]),
    ]
