"""SyncNet lip-sync scores: Sync-C (confidence), Sync-D (distance) and the per-speaker Sync-C*.

The network is the standard SyncNet of Chung & Zisserman ("Out of time", ACCV-W 2016) in the layout of
``syncnet_python`` (``SyncNetModel.S``): an audio stream on a ``13 x 20`` MFCC window (0.2 s) and a lip
stream on 5 face-crop frames (``224 x 224``, 0.2 s at 25 fps), each ending in a 1024-d embedding. The
released weights (``syncnet_v2.model``, a torch pickle of the state dict) load directly; put the file in
ComfyUI's ``models/syncnet/`` (or pass its path). ``.safetensors`` with the same keys works too.

Scoring follows ``SyncNetInstance.evaluate``:

* video re-timed to 25 fps (nearest frame, as ``ffmpeg -r 25``), audio 16 kHz mono on the int16 scale;
* MFCC (:mod:`.mfcc`) exactly as ``python_speech_features.mfcc`` with its defaults (25 ms rectangular window, 10 ms step,
  pre-emphasis 0.97, 512-point FFT, 26 mel filters 0-8 kHz, 13 ortho-DCT cepstra, lifter 22, c0 replaced
  by the log frame energy), implemented here with numpy; 4 MFCC frames per video frame;
* embeddings for every 5-frame window, Euclidean distances for offsets ``-vshift … +vshift`` (15 here,
  the value the talking-head literature uses), averaged over the clip;
  ``Sync-D = min distance``, ``Sync-C = median distance − min distance``, ``offset = vshift − argmin``.
  Frames go in as BGR 0..255 floats (``cv2.imread`` order), without normalisation, as the original tool.

Face crops follow ``syncnet_python``'s ``crop_video``: box half-size and centre median-filtered (kernel 13),
crop scale 0.4, padding value 110, resized to 224. The boxes come from the metric's landmark backend
(MediaPipe or InsightFace) instead of S3FD, so absolute numbers can differ slightly from the original
pipeline.

Sync-C* (AnyTalker): SyncNet confidence computed only inside each person's speaking intervals, on that
person's face crop. Every interval with at least 6 frames at 25 fps is scored on its own; the person's
value is the frame-weighted mean over their intervals, the overall value the frame-weighted mean over all
scored intervals of all people.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..constants import SAMPLE_RATE
from ..errors import CheckpointError, InputError, Interrupted, MissingModelError
from .mfcc import mfcc, to_int16_scale

log = logging.getLogger(__name__)

SYNCNET_FPS = 25
SYNCNET_SAMPLE_RATE = SAMPLE_RATE
SAMPLES_PER_FRAME = SYNCNET_SAMPLE_RATE // SYNCNET_FPS  # 640
MFCC_PER_FRAME = 4  # 100 MFCC frames per second / 25 video frames per second
WINDOW = 5  # video frames per SyncNet input (0.2 s)
CROP_SIZE = 224
DEFAULT_VSHIFT = 15
MIN_FRAMES = WINDOW + 1  # the reference scores min_length - 5 windows

StopFn = Callable[[], bool]


# ----------------------------------------------------------------------------------------------- model
class SyncNet(nn.Module):
    """SyncNet, ``syncnet_python`` layout (state-dict keys ``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``,
    ``netfclip.*``).

    ``forward_aud(mfcc [B, 1, 13, 20]) -> [B, D]``; ``forward_lip(frames [B, 3, 5, 224, 224]) -> [B, D]``.
    """

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()

        def conv2(cin, cout, k, pool=None, relu_inplace=True):
            layers = [nn.Conv2d(cin, cout, kernel_size=k, padding=(1, 1) if k == (3, 3) else (0, 0)),
                      nn.BatchNorm2d(cout), nn.ReLU(inplace=relu_inplace)]
            if pool is not None:
                layers.append(nn.MaxPool2d(kernel_size=pool[0], stride=pool[1]))
            return layers

        self.netcnnaud = nn.Sequential(
            *conv2(1, 64, (3, 3), pool=((1, 1), (1, 1))),        # 0-3   [B,64,13,20]
            *conv2(64, 192, (3, 3), pool=((3, 3), (1, 2))),      # 4-7   [B,192,11,9]
            *conv2(192, 384, (3, 3)),                            # 8-10
            *conv2(384, 256, (3, 3)),                            # 11-13
            *conv2(256, 256, (3, 3), pool=((3, 3), (2, 2))),     # 14-17 [B,256,5,4]
            *conv2(256, 512, (5, 4), relu_inplace=False),        # 18-20 [B,512,1,1]
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))

        def conv3(cin, cout, k, stride=(1, 1, 1), pad=(0, 0, 0), pool=None):
            layers = [nn.Conv3d(cin, cout, kernel_size=k, stride=stride, padding=pad), nn.BatchNorm3d(cout),
                      nn.ReLU(inplace=True)]
            if pool is not None:
                layers.append(nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=pool))
            return layers

        self.netcnnlip = nn.Sequential(
            *conv3(3, 96, (5, 7, 7), stride=(1, 2, 2), pool=(0, 0, 0)),                   # 0-3   [B,96,1,54,54]
            *conv3(96, 256, (1, 5, 5), stride=(1, 2, 2), pad=(0, 1, 1), pool=(0, 1, 1)),  # 4-7   [B,256,1,13,13]
            *conv3(256, 256, (1, 3, 3), pad=(0, 1, 1)),                                   # 8-10
            *conv3(256, 256, (1, 3, 3), pad=(0, 1, 1)),                                   # 11-13
            *conv3(256, 256, (1, 3, 3), pad=(0, 1, 1), pool=(0, 0, 0)),                   # 14-17 [B,256,1,6,6]
            *conv3(256, 512, (1, 6, 6)),                                                  # 18-20 [B,512,1,1,1]
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(mfcc)
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(frames)
        return self.netfclip(mid.flatten(1))


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in ("__S__.", "module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNet:
    """Load SyncNet weights (``syncnet_v2.model`` torch state dict, or ``.safetensors``) in eval mode.

    Raises:
        MissingModelError: the file does not exist (the message says where to put it).
        CheckpointError: unreadable file, or keys/shapes that are not SyncNet's.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelError(
            f"SyncNet weights not found at '{path}'. Download syncnet_v2.model (from the syncnet_python "
            "project) and put it in ComfyUI's models/syncnet/ folder, or pass its path with --syncnet.")
    from ..io.weights import read_weights

    state = _strip_prefix(read_weights(path, "SyncNet weights")[0])
    embed = state.get("netfcaud.3.weight")
    if embed is None:
        raise CheckpointError(f"SyncNet weights '{path}': key 'netfcaud.3.weight' missing, so this is not a "
                              f"syncnet_python SyncNet state dict (first keys: {list(state)[:5]})")
    model = SyncNet(embed_dim=int(embed.shape[0]))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"SyncNet weights '{path}' do not match the SyncNet layout: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(state)
    return model.to(device).eval()


def save_syncnet(model: SyncNet, path: str | Path) -> Path:
    """Write ``model``'s state dict as ``syncnet_v2.model``-style torch file, or ``.safetensors``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path



# --------------------------------------------------------------------------------------- video handling
def retime_indices(num_frames: int, fps: float, target_fps: float = SYNCNET_FPS) -> np.ndarray:
    """Source frame index of each output frame when re-timing to ``target_fps`` (nearest frame)."""
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    count = max(1, int(round(num_frames * target_fps / fps)))
    idx = np.floor(np.arange(count) * fps / target_fps + 0.5).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def _medfilt(x: np.ndarray, kernel: int) -> np.ndarray:
    """``scipy.signal.medfilt`` (zero-padded ends) without importing scipy."""
    kernel = min(kernel, len(x) if len(x) % 2 else len(x) - 1)
    if kernel <= 1:
        return x.copy()
    half = kernel // 2
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel)
    return np.median(windows, axis=1)


def crop_face_track(frames: np.ndarray, boxes: np.ndarray, crop_scale: float = 0.4, size: int = CROP_SIZE,
                    smooth: int = 13) -> np.ndarray:
    """SyncNet face crops as ``syncnet_python``'s ``crop_video``.

    Args:
        frames: ``uint8 [T, H, W, 3]``.
        boxes: ``[T, 4]`` face boxes ``x1, y1, x2, y2`` (one per frame).
    Returns:
        ``uint8 [T, size, size, 3]``.
    """
    import cv2

    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(frames), 4):
        raise InputError(f"crop_face_track: need one box per frame, got boxes {boxes.shape} for {len(frames)} frames")
    half = _medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, smooth)
    cy = _medfilt((boxes[:, 1] + boxes[:, 3]) / 2, smooth)
    cx = _medfilt((boxes[:, 0] + boxes[:, 2]) / 2, smooth)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        bs = half[t]
        bsi = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), mode="constant", constant_values=110)
        my, mx = cy[t] + bsi, cx[t] + bsi
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        if face.size == 0:
            raise InputError(f"crop_face_track: empty face crop at frame {t} (box {boxes[t].tolist()})")
        out[t] = cv2.resize(face, (size, size))
    return out


# -------------------------------------------------------------------------------------------- scoring
@dataclass
class SyncResult:
    """SyncNet scores of one face track against one audio track.

    Attributes:
        confidence: Sync-C (median − min of the offset-averaged distances).
        min_dist: Sync-D (the minimum distance).
        offset: audio-video offset in 25 fps frames (``vshift − argmin``).
        num_windows: 5-frame windows scored.
        dists: ``[num_windows, 2*vshift+1]`` distances per window and offset.
    """

    confidence: float
    min_dist: float
    offset: int
    num_windows: int
    dists: np.ndarray = field(repr=False)


def _check_faces(faces_25fps: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces_25fps)
    if faces.ndim != 4 or faces.shape[-1] != 3:
        raise InputError(f"sync_scores: faces must be [T, H, W, 3] uint8, got {faces.shape}")
    return faces


def _num_windows(num_faces: int, num_samples: int) -> int:
    min_length = min(num_faces, num_samples // SAMPLES_PER_FRAME)
    last = min_length - WINDOW
    if last <= 0:
        raise InputError(f"sync_scores: need at least {MIN_FRAMES} frames (0.24 s) of video and audio at 25 fps, "
                         f"got {num_faces} frames and {num_samples / SYNCNET_SAMPLE_RATE:.3f} s of audio")
    return last


def lip_embeddings(model: SyncNet, faces_25fps: np.ndarray, num_windows: int, batch_size: int = 20,
                   should_stop: StopFn | None = None) -> torch.Tensor:
    """SyncNet lip embeddings ``[num_windows, D]`` of the 5-frame windows starting at frames ``0..num_windows-1``
    of ``uint8 [T, 224, 224, 3]`` RGB crops at 25 fps (fed as BGR 0..255 floats, as ``SyncNetInstance``)."""
    faces = _check_faces(faces_25fps)
    device = next(model.parameters()).device
    video = torch.from_numpy(np.ascontiguousarray(faces[:num_windows + WINDOW - 1, :, :, ::-1])).permute(3, 0, 1, 2)
    video = video.float()
    feats = []
    with torch.no_grad():
        for start in range(0, num_windows, batch_size):
            if should_stop is not None and should_stop():
                raise Interrupted("SyncNet scoring stopped")
            lips = torch.stack([video[:, v:v + WINDOW] for v in range(start, min(num_windows, start + batch_size))])
            feats.append(model.forward_lip(lips.to(device)).cpu())
    return torch.cat(feats)


def audio_embeddings(model: SyncNet, audio_16k: np.ndarray | torch.Tensor, num_windows: int,
                     batch_size: int = 20) -> torch.Tensor:
    """SyncNet audio embeddings ``[num_windows, D]`` of the 0.2 s MFCC windows (20 MFCC frames) that start at
    each video frame (``[S]`` float mono in -1..1 at 16 kHz, aligned with frame 0)."""
    ceps = torch.from_numpy(mfcc(to_int16_scale(audio_16k)).T.copy()).float()  # [13, N]
    device = next(model.parameters()).device
    feats = []
    with torch.no_grad():
        for start in range(0, num_windows, batch_size):
            stop = min(num_windows, start + batch_size)
            auds = torch.stack([ceps[:, v * MFCC_PER_FRAME:v * MFCC_PER_FRAME + 20] for v in range(start, stop)])
            feats.append(model.forward_aud(auds.unsqueeze(1).to(device)).cpu())
    return torch.cat(feats)


def score_embeddings(lip: torch.Tensor, aud: torch.Tensor, vshift: int = DEFAULT_VSHIFT) -> SyncResult:
    """Sync-C / Sync-D / offset from lip and audio embeddings of the same windows (``[W, D]`` each)."""
    window = 2 * vshift + 1
    aud_padded = torch.nn.functional.pad(aud, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(lip[[i]].repeat(window, 1), aud_padded[i:i + window])
                         for i in range(len(lip))])  # [W, 2*vshift+1]
    mean = dists.mean(0)
    min_val, min_idx = torch.min(mean, 0)
    return SyncResult(confidence=float(torch.median(mean) - min_val), min_dist=float(min_val),
                      offset=int(vshift - min_idx), num_windows=int(len(lip)), dists=dists.numpy())


def sync_scores(model: SyncNet, faces_25fps: np.ndarray, audio_16k: np.ndarray | torch.Tensor,
                vshift: int = DEFAULT_VSHIFT, batch_size: int = 20, should_stop: StopFn | None = None
                ) -> SyncResult:
    """Sync-C / Sync-D of a face-crop clip at 25 fps against 16 kHz mono audio (``SyncNetInstance.evaluate``).

    Args:
        model: a :class:`SyncNet` (eval mode; see :func:`load_syncnet`).
        faces_25fps: ``uint8 [T, 224, 224, 3]`` RGB face crops at 25 fps.
        audio_16k: ``[S]`` float mono audio in -1..1 at 16 kHz, starting at frame 0.
    Raises:
        InputError: fewer than 6 usable frames (audio or video).
    """
    faces = _check_faces(faces_25fps)
    samples = to_int16_scale(audio_16k)
    last = _num_windows(len(faces), samples.size)
    if len(faces) * SAMPLES_PER_FRAME != samples.size:
        log.debug("SyncNet: audio %.3f s and video %.3f s differ; scoring the first %d frames",
                  samples.size / SYNCNET_SAMPLE_RATE, len(faces) / SYNCNET_FPS, last + WINDOW)
    lip = lip_embeddings(model, faces, last, batch_size, should_stop)
    aud = audio_embeddings(model, audio_16k, last, batch_size)
    return score_embeddings(lip, aud, vshift)


def sync_matrix(model: SyncNet, faces_25fps: Sequence[np.ndarray], audios_16k: Sequence[np.ndarray | torch.Tensor],
                vshift: int = DEFAULT_VSHIFT, batch_size: int = 20, should_stop: StopFn | None = None
                ) -> list[list[SyncResult]]:
    """``result[i][k]``: face track ``i`` scored against audio track ``k`` (each embedded once), over the
    windows all of them cover. Pairs audio with faces (data filters) without ``N²`` lip passes."""
    faces = [_check_faces(f) for f in faces_25fps]
    last = min(_num_windows(len(f), to_int16_scale(a).size) for f in faces for a in audios_16k)
    lips = [lip_embeddings(model, f, last, batch_size, should_stop) for f in faces]
    auds = [audio_embeddings(model, a, last, batch_size) for a in audios_16k]
    return [[score_embeddings(lip, aud, vshift) for aud in auds] for lip in lips]


@dataclass
class SpeakerSync:
    """Per-face SyncNet results.

    Attributes:
        whole: Sync-C/D over the whole clip on this face (``None`` if the clip is too short).
        segments: ``[(start_s, end_s, SyncResult)]`` for each scored speaking interval.
        skipped: intervals too short to score (``[(start_s, end_s)]``).
    """

    whole: SyncResult | None
    segments: list[tuple[float, float, SyncResult]] = field(default_factory=list)
    skipped: list[tuple[float, float]] = field(default_factory=list)

    def _weighted(self, attr: str) -> float | None:
        weight = sum(r.num_windows for _, _, r in self.segments)
        if weight == 0:
            return None
        return sum(getattr(r, attr) * r.num_windows for _, _, r in self.segments) / weight

    @property
    def sync_c_star(self) -> float | None:
        return self._weighted("confidence")

    @property
    def sync_d_star(self) -> float | None:
        return self._weighted("min_dist")


@dataclass
class SyncSummary:
    """SyncNet scores of a clip: per face and overall.

    ``sync_c`` / ``sync_d``: mean over faces of the whole-clip scores. ``sync_c_star`` / ``sync_d_star``:
    frame-weighted mean over every scored speaking interval of every face (``None`` when no interval was
    long enough).
    """

    per_face: dict[str, SpeakerSync]

    def _mean_whole(self, attr: str) -> float | None:
        vals = [getattr(s.whole, attr) for s in self.per_face.values() if s.whole is not None]
        return float(np.mean(vals)) if vals else None

    def _star(self, attr: str) -> float | None:
        pairs = [(getattr(r, attr), r.num_windows) for s in self.per_face.values() for _, _, r in s.segments]
        weight = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / weight if weight else None

    @property
    def sync_c(self) -> float | None:
        return self._mean_whole("confidence")

    @property
    def sync_d(self) -> float | None:
        return self._mean_whole("min_dist")

    @property
    def sync_c_star(self) -> float | None:
        return self._star("confidence")

    @property
    def sync_d_star(self) -> float | None:
        return self._star("min_dist")


def evaluate_sync(model: SyncNet, frames: np.ndarray, fps: float, audio_16k: np.ndarray | torch.Tensor,
                  face_boxes: Mapping[str, np.ndarray],
                  intervals: Mapping[str, Sequence[Sequence[float]]] | None = None,
                  vshift: int = DEFAULT_VSHIFT, should_stop: StopFn | None = None) -> SyncSummary:
    """Sync-C/D per face over the clip, and Sync-C*/D* inside each face's speaking intervals.

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB video at ``fps``.
        audio_16k: ``[S]`` mono audio at 16 kHz aligned with frame 0.
        face_boxes: side name -> ``[T, 4]`` box per frame of that face (``x1, y1, x2, y2``).
        intervals: ``{side: [[start_s, end_s], ...]}``; sides without intervals get no Sync-C*.
    """
    if isinstance(audio_16k, torch.Tensor):
        audio_16k = audio_16k.detach().cpu().float().numpy()
    audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    idx = retime_indices(len(frames), fps)
    frames_25 = np.asarray(frames)[idx]
    per_face: dict[str, SpeakerSync] = {}
    for side, boxes in face_boxes.items():
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (len(frames), 4):
            raise InputError(f"face boxes of '{side}': expected [{len(frames)}, 4], got {boxes.shape}")
        crops = crop_face_track(frames_25, boxes[idx])
        try:
            whole = sync_scores(model, crops, audio, vshift=vshift, should_stop=should_stop)
        except InputError as exc:
            log.warning("Sync-C for '%s' not computed: %s", side, exc)
            whole = None
        result = SpeakerSync(whole=whole)
        for seg in (intervals or {}).get(side, []) or []:
            start, end = float(seg[0]), float(seg[1])
            k0 = max(0, int(math.ceil(start * SYNCNET_FPS - 1e-9)))
            k1 = min(len(crops) - 1, int(math.floor(end * SYNCNET_FPS + 1e-9)))
            piece = audio[k0 * SAMPLES_PER_FRAME:(k1 + 1) * SAMPLES_PER_FRAME]
            if k1 - k0 + 1 < MIN_FRAMES or piece.size < MIN_FRAMES * SAMPLES_PER_FRAME:
                result.skipped.append((start, end))
                continue
            result.segments.append((start, end, sync_scores(model, crops[k0:k1 + 1], piece, vshift=vshift,
                                                             should_stop=should_stop)))
        if result.skipped:
            log.info("Sync-C*: %d interval(s) of '%s' shorter than %d frames at 25 fps were skipped",
                     len(result.skipped), side, MIN_FRAMES)
        per_face[side] = result
    return SyncSummary(per_face=per_face)


def default_syncnet_path(models_dir: str | Path | None) -> Path | None:
    """``<models>/syncnet/syncnet_v2.model`` (or ``.safetensors``) if present under ``models_dir``."""
    if models_dir is None:
        return None
    for name in ("syncnet_v2.model", "syncnet_v2.safetensors"):
        candidate = Path(models_dir) / "syncnet" / name
        if candidate.is_file():
            return candidate
    return None
