"""Landmark sources for the Interactivity metric: video frames -> :class:`FaceObservation` lists.

Two backends, both returning InsightFace-106-layout landmarks in image pixels plus a detection box:

``insightface`` (the reference's source)
    InsightFace ``buffalo_l`` (RetinaFace detector + ``2d106det`` landmarks). Optional dependency
    (``pip install insightface onnxruntime``); the model files are the user's, in ComfyUI's
    ``models/insightface/models/buffalo_l/`` (``det_10g.onnx``, ``2d106det.onnx``, ...). Like the
    reference benchmark it runs the landmark model on the RGB frame (det size 640) and takes the boxes from
    a second detection pass on the BGR frame (det size 224), both with threshold 0.2.

``mediapipe`` (offline, ships in the ``mediapipe`` wheel)
    MediaPipe full-range face detection (BlazeFace, ``model_selection=1``) gives the boxes; a square crop
    of twice the box side around each box goes through MediaPipe Face Mesh (468 points, static mode),
    and the mesh points are mapped back to the image. The 22 InsightFace eye/brow points the metric uses
    are filled from the mesh by :data:`MESH_FOR_106` (same semantic points: brow upper contours from the
    outer to the inner end, eye corners and lids as in the 68-point layout); 68 of the 106 rows are
    filled in total (jaw, nose and mouth too, via the standard 68-point correspondence), the other 38 are
    NaN, and the metric then averages its outlier test over the filled rows. Scores from the two backends
    are comparable in kind but not identical (different detectors, landmark definitions and box sizes).

Faces are assigned to sides (left/right) by position in every frame, as in the reference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import InputError, Interrupted, MissingModelError
from ..faces.detect import MEDIAPIPE_INSTALL
from .interactivity import NUM_LANDMARKS, FaceObservation

log = logging.getLogger(__name__)

# InsightFace 106-point index of each 68-point (dlib/iBUG) landmark.
INSIGHTFACE_106_FOR_68: tuple[int, ...] = (
    1, 10, 12, 14, 16, 3, 5, 7, 0, 23, 21, 19, 32, 30, 28, 26, 17,  # jaw 0-16
    43, 48, 49, 51, 50,  # brow 17-21 (image-left)
    102, 103, 104, 105, 101,  # brow 22-26 (image-right)
    72, 73, 74, 86, 78, 79, 80, 85, 84,  # nose 27-35
    35, 41, 42, 39, 37, 36,  # eye 36-41 (image-left)
    89, 95, 96, 93, 91, 90,  # eye 42-47 (image-right)
    52, 64, 63, 71, 67, 68, 61, 58, 59, 53, 56, 55, 65, 66, 62, 70, 69, 57, 60, 54,  # mouth 48-67
)

# MediaPipe Face Mesh index of each 68-point landmark (the widely used mesh->iBUG-68 correspondence).
MESH_FOR_68: tuple[int, ...] = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107,  # brow 17-21: image-left brow, outer -> inner end
    336, 296, 334, 293, 300,  # brow 22-26: image-right brow, inner -> outer end
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose
    33, 160, 158, 133, 153, 144,  # eye 36-41: outer corner, upper lid x2, inner corner, lower lid x2
    362, 385, 387, 263, 373, 380,  # eye 42-47: inner corner, upper lid x2, outer corner, lower lid x2
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,  # mouth
)

# InsightFace 106 index -> MediaPipe mesh index, for every 106 point with a 68-point counterpart.
MESH_FOR_106: dict[int, int] = dict(zip(INSIGHTFACE_106_FOR_68, MESH_FOR_68))

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class Landmarker(Protocol):
    """A landmark source: ``detect(RGB uint8 [H, W, 3]) -> faces`` in image pixels."""

    name: str

    def detect(self, image: np.ndarray) -> list[FaceObservation]: ...

    def close(self) -> None: ...


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"frame must be an RGB uint8 array [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return np.ascontiguousarray(image)


def mesh_to_106(mesh_xy: np.ndarray) -> np.ndarray:
    """``[468+, 2]`` mesh points -> ``float32 [106, 2]`` InsightFace layout (unmapped rows NaN)."""
    out = np.full((NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    idx106 = np.fromiter(MESH_FOR_106.keys(), dtype=np.int64)
    idx_mesh = np.fromiter(MESH_FOR_106.values(), dtype=np.int64)
    out[idx106] = mesh_xy[idx_mesh]
    return out


class MediaPipeLandmarker:
    """Offline landmarks: MediaPipe face detection + Face Mesh on a crop around each detected face.

    Args:
        max_faces: most faces to return per frame (the largest boxes).
        min_confidence: detection and mesh confidence threshold.
        crop_scale: side of the mesh crop relative to the detection box side.
        crop_px: the crop is resampled to this many pixels before meshing.
    """

    name = "mediapipe"

    def __init__(self, max_faces: int = 4, min_confidence: float = 0.5, crop_scale: float = 2.0,
                 crop_px: int = 256) -> None:
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingModelError(
                "the 'mediapipe' landmark backend needs the mediapipe package "
                f"(import failed: {exc}): {MEDIAPIPE_INSTALL}") from None
        self.max_faces = int(max_faces)
        self.crop_scale = float(crop_scale)
        self.crop_px = int(crop_px)
        self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                                        min_detection_confidence=min_confidence)

    def detect(self, image: np.ndarray) -> list[FaceObservation]:
        import cv2

        image = _check_image(image)
        height, width = image.shape[:2]
        result = self._detector.process(image)
        boxes = []
        for det in result.detections or []:
            rel = det.location_data.relative_bounding_box
            x1, y1 = rel.xmin * width, rel.ymin * height
            boxes.append((x1, y1, x1 + rel.width * width, y1 + rel.height * height))
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        faces = []
        for box in boxes[: self.max_faces]:
            side = self.crop_scale * max(box[2] - box[0], box[3] - box[1])
            if side < 8:
                continue
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0, y0 = cx - side / 2, cy - side / 2
            s = self.crop_px / side
            affine = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], dtype=np.float64)
            crop = cv2.warpAffine(image, affine, (self.crop_px, self.crop_px), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
            mesh = self._mesh.process(crop)
            if not mesh.multi_face_landmarks:
                log.debug("mediapipe: no mesh for the face at %s", [round(v, 1) for v in box])
                continue
            pts = np.array([(p.x, p.y) for p in mesh.multi_face_landmarks[0].landmark], dtype=np.float64)
            xy = pts * self.crop_px / s + np.array([x0, y0])
            faces.append(FaceObservation(box=np.array(box), landmarks=mesh_to_106(xy)))
        return faces

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()


def find_insightface_pack(model_dir: str | Path, pack: str = "buffalo_l") -> Path:
    """The insightface root folder holding ``models/<pack>/*.onnx`` (a clear error when absent).

    ``model_dir`` may be ComfyUI's ``models/insightface`` (the usual place), its ``models`` subfolder,
    or the pack folder itself.
    """
    model_dir = Path(model_dir)
    for root, folder in ((model_dir, model_dir / "models" / pack), (model_dir.parent, model_dir / pack),
                         (model_dir.parent.parent, model_dir)):
        if folder.is_dir() and folder.name == pack and any(folder.glob("*.onnx")):
            names = {p.name for p in folder.glob("*.onnx")}
            if not any(n.startswith("2d106") for n in names):
                raise MissingModelError(f"InsightFace pack '{folder}' has no 106-point landmark model "
                                        f"(2d106det.onnx); found {sorted(names)}. Use the buffalo_l pack.")
            return root
    raise MissingModelError(
        f"InsightFace models not found: expected '{model_dir / 'models' / pack}' with det_10g.onnx and "
        f"2d106det.onnx (the '{pack}' pack). Put the pack in ComfyUI's models/insightface/models/{pack}/, "
        "or use the offline 'mediapipe' landmark backend.")


class InsightFaceLandmarker:
    """The reference's landmark source: InsightFace ``buffalo_l`` detection + 106-point landmarks.

    Args:
        model_dir: ComfyUI's ``models/insightface`` (holding ``models/buffalo_l/``), or the pack folder.
        pack: model pack name.
        providers: onnxruntime execution providers (default CPU).
    """

    name = "insightface"

    def __init__(self, model_dir: str | Path, pack: str = "buffalo_l", providers: Sequence[str] | None = None,
                 det_thresh: float = 0.2) -> None:
        root = find_insightface_pack(model_dir, pack)
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise MissingModelError("the 'insightface' landmark backend needs the insightface and onnxruntime "
                                    f"packages (pip install insightface onnxruntime; import failed: {exc})") from None
        providers = list(providers or ["CPUExecutionProvider"])
        self._landmarks = FaceAnalysis(name=pack, root=str(root), providers=providers,
                                       allowed_modules=["detection", "landmark_2d_106"])
        self._landmarks.prepare(ctx_id=-1, det_thresh=det_thresh, det_size=(640, 640))
        self._boxes = FaceAnalysis(name=pack, root=str(root), providers=providers, allowed_modules=["detection"])
        self._boxes.prepare(ctx_id=-1, det_thresh=det_thresh, det_size=(224, 224))

    def detect(self, image: np.ndarray) -> list[FaceObservation]:
        image = _check_image(image)
        lm_faces = [f for f in self._landmarks.get(image) if getattr(f, "landmark_2d_106", None) is not None]
        det_boxes = [np.asarray(f.bbox, dtype=np.float64) for f in self._boxes.get(np.ascontiguousarray(image[..., ::-1]))]
        # the reference pairs the landmark faces (by mean x) with the separate detections (by x1) by rank
        lm_faces.sort(key=lambda f: float(np.asarray(f.landmark_2d_106, dtype=np.float32)[:, 0].mean()))
        det_boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        det_boxes = sorted(det_boxes[: max(len(lm_faces), 2)], key=lambda b: b[0])
        faces = []
        for i, face in enumerate(lm_faces):
            box = det_boxes[i] if i < len(det_boxes) else np.asarray(face.bbox, dtype=np.float64)
            faces.append(FaceObservation(box=box, landmarks=np.asarray(face.landmark_2d_106, dtype=np.float32)))
        return faces

    def close(self) -> None:
        pass


def make_landmarker(backend: str = "mediapipe", model_dir: str | Path | None = None, **kwargs) -> Landmarker:
    """Build a landmark source by name: ``"mediapipe"`` (offline) or ``"insightface"`` (needs ``model_dir``)."""
    if backend == "mediapipe":
        return MediaPipeLandmarker(**kwargs)
    if backend == "insightface":
        if model_dir is None:
            raise MissingModelError("the 'insightface' landmark backend needs the folder of your InsightFace "
                                    "models (ComfyUI's models/insightface, holding models/buffalo_l/)")
        return InsightFaceLandmarker(model_dir, **kwargs)
    raise InputError(f"unknown landmark backend '{backend}' (expected 'mediapipe' or 'insightface')")


def observe_frames(frames: np.ndarray | Sequence[np.ndarray], landmarker: Landmarker,
                   progress: ProgressFn | None = None, should_stop: StopFn | None = None
                   ) -> list[list[FaceObservation]]:
    """Run ``landmarker`` on every frame (``uint8 [T, H, W, 3]`` RGB) -> per-frame observations."""
    total = len(frames)
    out = []
    for t in range(total):
        if should_stop is not None and should_stop():
            raise Interrupted(f"landmark extraction stopped at frame {t} of {total}")
        out.append(landmarker.detect(frames[t]))
        if progress is not None:
            progress(t + 1, total)
    return out
