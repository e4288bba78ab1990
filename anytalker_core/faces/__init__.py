"""Faces: detection, identity order and the masks that bind each audio track to a face.

Light to import (numpy, torch, PIL only when drawing); detector packages load on first use.

    from anytalker_core.faces import load_detector, prepare_faces, crop_faces, draw_preview
    masks = prepare_faces(image, num_speakers=2, latent_hw=(60, 104), latent_frames=21,
                          detector=load_detector("mediapipe"))
    crops = crop_faces(image, masks.crop_boxes)           # -> CLIP face tokens
    preview = draw_preview(image, masks.boxes_xyxy, masks.expanded_masks)
"""

from __future__ import annotations

from .detect import (BACKENDS, FaceBox, FaceDetector, InsightFaceDetector, MediaPipeDetector,
                     find_insightface_pack, load_detector)
from .masks import (HEIGHT_SCALE, WIDTH_SCALE, FaceMasks, box_mask, build_face_masks, build_face_masks_from_masks,
                    crop_box, crop_faces, expand_mask, select_faces, split_mask, square_box, token_mask_grid,
                    validate_boxes, y_mask_channels)
from .prepare import detect_and_select, locate_faces, prepare_faces
from .preview import draw_preview

__all__ = [
    "BACKENDS", "FaceBox", "FaceDetector", "InsightFaceDetector", "MediaPipeDetector", "find_insightface_pack",
    "load_detector", "HEIGHT_SCALE", "WIDTH_SCALE", "FaceMasks", "box_mask", "build_face_masks",
    "build_face_masks_from_masks", "crop_box", "crop_faces", "expand_mask", "select_faces", "split_mask", "square_box",
    "token_mask_grid", "validate_boxes", "y_mask_channels", "detect_and_select", "locate_faces", "prepare_faces",
    "draw_preview",
]
