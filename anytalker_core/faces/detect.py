"""Face detection behind one small interface, with two interchangeable backends.

* ``insightface`` — the reference's detector: ``FaceAnalysis(allowed_modules=['detection'])`` with
  ``det_size=(640, 640)`` and threshold 0.15. Optional package (``pip install insightface
  onnxruntime``); the model pack comes from a folder laid out like ComfyUI's ``models/insightface``:
  ``<root>/models/antelopev2/*.onnx`` (or ``buffalo_l``). Nothing is ever downloaded.
* ``mediapipe`` — offline: the BlazeFace models ship inside the mediapipe wheel. The full-range
  model (faces up to ~5 m away) is the default because group photos have small faces.

Both take an RGB ``uint8 [H, W, 3]`` image and return :class:`FaceBox` es in pixels, unsorted.
The heavy packages are imported when a detector is created.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, MissingModelError

log = logging.getLogger(__name__)

BACKENDS = ("insightface", "mediapipe")
INSIGHTFACE_THRESHOLD = 0.15  # the reference scripts' det_thresh
INSIGHTFACE_DET_SIZE = 640
INSIGHTFACE_PACKS = ("antelopev2", "buffalo_l")  # looked for in this order when no pack is named
MEDIAPIPE_THRESHOLD = 0.5


@dataclass(frozen=True)
class FaceBox:
    """A detected (or user-given) face: corners in pixels, ``x2 > x1``, ``y2 > y1``."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(image uint8 [H, W, 3] RGB) -> list[FaceBox]``."""

    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]: ...


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An RGB uint8 ``[H, W, 3]`` C-contiguous array, or a clear error."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what}: expected a numpy array [H, W, 3] uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what}: expected an RGB array [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"{what}: expected dtype uint8 (0..255), got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"{what}: image of size {image.shape[1]}x{image.shape[0]} is too small to hold a face")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------
# InsightFace


def find_insightface_pack(models_dir: str | Path, pack: str | None = None) -> tuple[Path, str]:
    """Locate an InsightFace model pack; returns ``(root, pack_name)`` for ``FaceAnalysis(name, root)``.

    ``models_dir`` may be ComfyUI's ``models/insightface`` (holding ``models/<pack>/``), its
    ``models`` subfolder, or the pack folder itself.
    """
    base = Path(models_dir).expanduser()
    names = (pack,) if pack else INSIGHTFACE_PACKS
    tried: list[Path] = []
    for name in names:
        for root in (base, base.parent, base.parent.parent):
            folder = root / "models" / name
            if folder in tried:
                continue
            tried.append(folder)
            if folder.is_dir():
                if any(folder.glob("*.onnx")):
                    return root, name
                nested = folder / name  # the antelopev2 zip unpacks into antelopev2/antelopev2/
                if any(nested.glob("*.onnx")):
                    raise MissingModelError(
                        f"InsightFace models found one folder too deep at {nested}: move the .onnx files "
                        f"up into {folder}"
                    )
    want = pack or " or ".join(INSIGHTFACE_PACKS)
    raise MissingModelError(
        f"InsightFace face detection models missing at {base / 'models' / (pack or INSIGHTFACE_PACKS[0])}: "
        f"put the {want} pack there (its .onnx files, e.g. scrfd_10g_bnkps.onnx for antelopev2 or "
        f"det_10g.onnx for buffalo_l), i.e. ComfyUI/models/insightface/models/<pack>/*.onnx"
    )


class InsightFaceDetector:
    """The reference detector (SCRFD via ``insightface.app.FaceAnalysis``)."""

    name = "insightface"

    def __init__(self, models_dir: str | Path, pack: str | None = None, threshold: float = INSIGHTFACE_THRESHOLD,
                 det_size: int = INSIGHTFACE_DET_SIZE, device: str = "cpu") -> None:
        root, pack_name = find_insightface_pack(models_dir, pack)
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise MissingModelError(
                f"the 'insightface' face detector needs the insightface package, which could not be imported "
                f"({exc}): pip install insightface onnxruntime (or onnxruntime-gpu), or use the 'mediapipe' detector"
            ) from None
        cuda = str(device).startswith("cuda")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        ctx_id = (int(str(device).split(":")[1]) if ":" in str(device) else 0) if cuda else -1
        log.info("loading InsightFace detector %s from %s (threshold %.2f)", pack_name, root, threshold)
        self._app = FaceAnalysis(name=pack_name, root=str(root), allowed_modules=["detection"], providers=providers)
        self._app.prepare(ctx_id=ctx_id, det_thresh=threshold, det_size=(det_size, det_size))
        self.threshold = threshold

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        image = check_image(image)
        faces = self._app.get(np.ascontiguousarray(image[..., ::-1]))  # SCRFD expects BGR like cv2.imread
        boxes = []
        for face in faces:
            x1, y1, x2, y2 = (float(v) for v in np.asarray(face["bbox"], dtype=np.float32)[:4])
            boxes.append(FaceBox(x1, y1, x2, y2, float(face.get("det_score", 1.0))))
        return boxes


# --------------------------------------------------------------------------------------------
# MediaPipe


def _square_tiles(height: int, width: int, min_aspect: float = 1.3) -> list[tuple[int, int, int, int]]:
    """Square windows ``(x0, y0, x1, y1)`` with 50 % overlap along the long side of a wide/tall image."""
    side, long = min(height, width), max(height, width)
    if long < min_aspect * side:
        return []
    stride = max(1, side // 2)
    starts = list(range(0, long - side + 1, stride))
    if starts[-1] != long - side:
        starts.append(long - side)
    if width >= height:
        return [(s, 0, s + side, height) for s in starts]
    return [(0, s, width, s + side) for s in starts]


def _merge_boxes(boxes: list[FaceBox], iou: float = 0.3, contain: float = 0.7) -> list[FaceBox]:
    """Greedy NMS: highest score first; drop boxes overlapping a kept one (IoU, or mostly inside it)."""
    kept: list[FaceBox] = []
    for box in sorted(boxes, key=lambda b: b.score, reverse=True):
        duplicate = False
        for other in kept:
            iw = min(box.x2, other.x2) - max(box.x1, other.x1)
            ih = min(box.y2, other.y2) - max(box.y1, other.y1)
            if iw <= 0 or ih <= 0:
                continue
            inter = iw * ih
            if inter / (box.area + other.area - inter) > iou or inter / min(box.area, other.area) > contain:
                duplicate = True
                break
        if not duplicate:
            kept.append(box)
    return kept


#: how to get the one mediapipe release whose wheel carries its face models (a plain
#: ``pip install mediapipe`` gives a newer one without them, plus jax and opencv-contrib)
MEDIAPIPE_INSTALL = ("run the pack's install.py with ComfyUI's python (ComfyUI-Manager does this), or: "
                     "pip install --no-deps mediapipe==0.10.21 && pip install absl-py attrs flatbuffers "
                     "'protobuf<5' matplotlib")


def _import_mediapipe_face_detection():
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError as exc:
        raise MissingModelError(
            f"the 'mediapipe' face detector needs the mediapipe package, which could not be imported ({exc}): "
            f"{MEDIAPIPE_INSTALL}"
        ) from None
    return face_detection


def mediapipe_model_path(model: str = "full") -> Path:
    """The BlazeFace model bundled in the installed mediapipe wheel."""
    from ..io.model_paths import packaged_file

    name = "face_detection_full_range_sparse.tflite" if model == "full" else "face_detection_short_range.tflite"
    return packaged_file(
        "mediapipe", f"modules/face_detection/{name}",
        f"the 'mediapipe' face detector needs the mediapipe package: {MEDIAPIPE_INSTALL}",
        f"mediapipe face detection model missing at {{path}} (only mediapipe 0.10.21's wheel ships it): "
        f"{MEDIAPIPE_INSTALL}")


class MediaPipeDetector:
    """BlazeFace through mediapipe's offline ``solutions.face_detection`` graph."""

    name = "mediapipe"

    def __init__(self, threshold: float = MEDIAPIPE_THRESHOLD, model: str = "full", tile: bool = True) -> None:
        if model not in ("full", "short"):
            raise InputError(f"mediapipe face model '{model}': expected 'full' (small/far faces) or 'short' (close-ups)")
        mediapipe_model_path(model)
        face_detection = _import_mediapipe_face_detection()
        self.threshold = threshold
        self.model = model
        self.tile = tile
        self._lock = threading.Lock()
        self._graph = face_detection.FaceDetection(
            model_selection=1 if model == "full" else 0, min_detection_confidence=threshold
        )

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in the whole image and, for wide or tall images, in overlapping square tiles.

        BlazeFace letterboxes its input to a small square, so in a wide group photo every face
        shrinks; square tiles along the long side keep them at a detectable size. Tile boxes cut by
        an inner tile edge are dropped, and overlapping boxes are merged (highest score wins).
        """
        image = check_image(image)
        height, width = image.shape[:2]
        found = self._detect_window(image, 0, 0, width, height, width, height)
        if self.tile:
            for x0, y0, x1, y1 in _square_tiles(height, width):
                found += self._detect_window(image, x0, y0, x1, y1, width, height)
        return _merge_boxes(found)

    def _detect_window(self, image: np.ndarray, x0: int, y0: int, x1: int, y1: int, width: int,
                       height: int) -> list[FaceBox]:
        window = np.ascontiguousarray(image[y0:y1, x0:x1])
        win_h, win_w = window.shape[:2]
        with self._lock:
            result = self._graph.process(window)
        boxes = []
        edge = 2.0  # px: a box this close to an inner tile edge is a cut face
        for det in result.detections or []:
            rel = det.location_data.relative_bounding_box
            bx1, by1 = rel.xmin * win_w, rel.ymin * win_h
            bx2, by2 = bx1 + rel.width * win_w, by1 + rel.height * win_h
            if (x0 > 0 and bx1 < edge) or (y0 > 0 and by1 < edge) or \
                    (x1 < width and bx2 > win_w - edge) or (y1 < height and by2 > win_h - edge):
                continue
            # BlazeFace boxes may stick out of the frame; clip to the image
            fx1, fy1 = max(0.0, bx1 + x0), max(0.0, by1 + y0)
            fx2, fy2 = min(float(width), bx2 + x0), min(float(height), by2 + y0)
            if fx2 > fx1 and fy2 > fy1:
                boxes.append(FaceBox(fx1, fy1, fx2, fy2, float(det.score[0]) if det.score else 1.0))
        return boxes

    def close(self) -> None:
        graph, self._graph = getattr(self, "_graph", None), None
        if graph is not None:
            graph.close()

    def __del__(self) -> None:  # release the mediapipe graph's threads
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# --------------------------------------------------------------------------------------------


def load_detector(backend: str = "auto", *, models_dir: str | Path | None = None, pack: str | None = None,
                  threshold: float | None = None, device: str = "cpu") -> FaceDetector:
    """Create a face detector by name.

    Args:
        backend: ``"insightface"`` (reference; needs ``models_dir``), ``"mediapipe"`` (offline), or
            ``"auto"``: insightface when it is installed and its models are in ``models_dir``,
            else mediapipe.
        models_dir: InsightFace models folder (ComfyUI ``models/insightface``).
        pack: InsightFace pack name (default: the first of antelopev2, buffalo_l that is present).
        threshold: detection score threshold (default 0.15 insightface, 0.5 mediapipe).
        device: ``"cpu"`` or ``"cuda[:i]"`` (insightface only; mediapipe runs on the CPU).
    """
    if backend == "auto":
        backend = _auto_backend(models_dir, pack)
    if backend == "insightface":
        if models_dir is None:
            raise MissingModelError(
                "the 'insightface' face detector needs its models folder: pass models_dir "
                "(ComfyUI/models/insightface, holding models/antelopev2/*.onnx or models/buffalo_l/*.onnx)"
            )
        return InsightFaceDetector(models_dir, pack, INSIGHTFACE_THRESHOLD if threshold is None else threshold,
                                   device=device)
    if backend == "mediapipe":
        return MediaPipeDetector(MEDIAPIPE_THRESHOLD if threshold is None else threshold)
    raise InputError(f"face detector '{backend}': expected one of auto, {', '.join(BACKENDS)}")


def _auto_backend(models_dir: str | Path | None, pack: str | None) -> str:
    import importlib.util

    if models_dir is None:
        reason = "no InsightFace models folder given"
    elif importlib.util.find_spec("insightface") is None:
        reason = "the insightface package is not installed"
    else:
        try:
            find_insightface_pack(models_dir, pack)
            return "insightface"
        except MissingModelError as exc:
            reason = str(exc)
    log.info("face detector: mediapipe (%s)", reason)
    return "mediapipe"
