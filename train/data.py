"""Cached samples (:mod:`train.cache`) → model-ready batches, including stage 1's two-person concatenation.

Identity masks follow the reference (``utils/get_face_bbox.py``, ``wan/utils/infer_utils.py``):
binary box masks enlarged ×1.2 (width) × 1.1 (height) about their centre, bilinearly resized to the
token grid ``[F, h/2, w/2]`` (one per identity) and, summed, to the latent grid for the 4 mask
channels of ``y`` (frame 0 = 1). Training uses the clip's global face box, as the paper did.

Two-person mode (:func:`concat_side_by_side`) works on cached tensors: each sample's latents are
cropped to half width around its face (the whole face box inside; a face wider than half the frame
makes the sample :class:`Unpairable`) and the halves concatenated (left = identity 0 = sample k,
right = identity 1 = its partner k+1); boxes move with their crop and each identity's masks are
confined to its half.
The first frames' pixels are cropped to the same columns (latent column c = pixel columns 8c … 8c+7)
and concatenated; the trainer encodes that frame with the frozen CLIP vision model for ``clip_fea``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from anytalker_core.audio.windowed import window_features
from anytalker_core.errors import InputError

# the cache's names, re-exported: train.data was their home before train.cache
from .cache import (FIRST_FRAME_KEY, SAMPLE_KEYS, SHARED_EMBEDDINGS_FILE, VAE_STRIDE, CachedSample, CacheIndex,
                    SharedEmbeddings, load_sample)

log = logging.getLogger(__name__)

__all__ = ["CachedSample", "TrainBatch", "CacheIndex", "SharedEmbeddings", "load_sample", "identity_masks",
           "window_audio", "concat_side_by_side", "collate", "SAMPLE_KEYS", "FIRST_FRAME_KEY",
           "SHARED_EMBEDDINGS_FILE", "Unpairable", "half_crop_start", "pairing_problem"]


@dataclass
class TrainBatch:
    """Model-ready tensors for one step.

    Attributes:
        latents: ``[B, 16, F, h, w]`` clean latents x0.
        y: ``[B, 20, F, h, w]`` 4 mask channels + first-frame latent.
        context: ``[B, L, text_dim]`` text embeddings (zero-padded to the longest).
        clip_fea: ``[B, 257, D]`` cached CLIP tokens; None for two-person batches until the trainer
            encodes ``first_frames`` (:meth:`with_image_tokens`).
        audio: ``[N, B, T, 5, L, C]`` windowed audio per identity.
        face_clip: ``[N, B, 257, D]``.
        token_masks: ``[N, B, F, h/2, w/2]``.
        sample_ids: for logging.
        two_person: whether the batch was built by side-by-side concatenation.
        first_frames: ``[B, H, W, 3]`` uint8 side-by-side first frames whose CLIP tokens ``clip_fea``
            still needs (two-person batches only; None otherwise).
    """

    latents: torch.Tensor
    y: torch.Tensor
    context: torch.Tensor
    clip_fea: torch.Tensor | None
    audio: torch.Tensor
    face_clip: torch.Tensor
    token_masks: torch.Tensor
    sample_ids: list[str]
    two_person: bool = False
    first_frames: torch.Tensor | None = None
    data_position: tuple[int, int] = (0, 0)  # sampler (epoch, position) after this batch

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TrainBatch":
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
        return replace(self, latents=mv(self.latents), y=mv(self.y), context=mv(self.context),
                       clip_fea=mv(self.clip_fea), audio=mv(self.audio), face_clip=mv(self.face_clip),
                       token_masks=mv(self.token_masks), first_frames=mv(self.first_frames))

    def with_image_tokens(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> "TrainBatch":
        """Fill ``clip_fea`` of a two-person batch with ``encode(first_frames)`` (a CLIP vision
        encoder's ``encode``: uint8 ``[B, H, W, 3]`` → ``[B, 257, D]``); other batches are returned as they are."""
        if self.clip_fea is not None:
            return self
        if self.first_frames is None:
            raise InputError(f"batch {self.sample_ids} has neither CLIP tokens nor first frames to encode")
        # clone: the encoder runs under inference_mode, and its output must be usable in autograd
        return replace(self, clip_fea=encode(self.first_frames).clone(), first_frames=None)

    def speakers(self) -> list:
        """The per-identity ``Speaker`` inputs of :class:`anytalker_core.model.dit.AnyTalkerDiT`."""
        from anytalker_core.model.speaker import Speaker

        return [Speaker(audio=self.audio[i], face_clip=self.face_clip[i], token_mask=self.token_masks[i])
                for i in range(self.audio.shape[0])]


# ----------------------------------------------------------------------------------- masks


def identity_masks(
    boxes: torch.Tensor,
    image_hw: tuple[int, int],
    latent_hw: tuple[int, int],
    latent_frames: int,
    regions: Sequence[tuple[float, float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token masks ``[N, F, h/2, w/2]`` and ``y`` mask channels ``[4, F, h, w]`` from face boxes ``[N, 4]``.

    The reference chain of :func:`anytalker_core.faces.build_face_masks` (square box, ×1.2 × 1.1
    enlargement, bilinear resizes). ``regions[i] = (x_lo, x_hi)`` additionally confines identity i's
    enlarged mask to those pixel columns before resizing (the halves of a two-person sample).
    """
    from anytalker_core.faces import build_face_masks, token_mask_grid, y_mask_channels

    masks = build_face_masks(boxes.double().numpy(), image_hw, latent_hw, latent_frames)
    if regions is None:
        return masks.token_masks, masks.y_mask
    expanded = masks.expanded_masks.copy()
    columns = np.arange(image_hw[1])
    for i, (lo, hi) in enumerate(regions):
        expanded[i] *= ((columns >= lo) & (columns < hi)).astype(np.float32)[None, :]
    token_masks = torch.stack([token_mask_grid(m, latent_hw, latent_frames) for m in expanded])
    return token_masks, y_mask_channels(expanded.sum(0), latent_hw, latent_frames)


# ----------------------------------------------------------------------------------- audio


def window_audio(features: torch.Tensor, window: int = 5) -> torch.Tensor:
    """``[..., T, L, C]`` → ``[..., T, window, L, C]``: frame t takes frames t−2 … t+2, clamped at the ends
    (:func:`anytalker_core.audio.windowed.window_features`, the one windowing rule of inference)."""
    return window_features(features, radius=window // 2)


# ----------------------------------------------------------------------------------- two-person


class Unpairable(InputError):
    """A single-person sample that stage 1 cannot put in one half of a side-by-side frame."""


def half_crop_start(box: Sequence[float], image_width: int, latent_width: int) -> int:
    """First latent column of the half-width crop of a frame that keeps the face ``box`` inside.

    ``box`` is ``(x0, y0, x1, y1)`` in pixels of an ``image_width``-wide frame (latent width
    ``latent_width``, divisible by 4). The crop is ``latent_width/2`` latent columns, i.e. pixel
    columns ``8c … 8(c + latent_width/2)``; it is centred on the face as far as the frame allows, and
    always holds the whole box. Raises :class:`Unpairable` when the face is wider than half the frame.
    """
    if latent_width % 4:
        raise Unpairable(f"two-person concatenation needs a latent width divisible by 4, got {latent_width}")
    stride = image_width / latent_width
    half = latent_width // 2
    x0, x1 = max(0.0, float(box[0])), min(float(image_width), float(box[2]))
    if not x1 > x0:
        raise Unpairable(f"face box {list(map(float, box))} lies outside the {image_width}-pixel-wide frame")
    lo = max(0, math.ceil(x1 / stride - 1e-6) - half)  # the crop must reach past x1 ...
    hi = min(latent_width - half, math.floor(x0 / stride + 1e-6))  # ... and start before x0
    if lo > hi:
        raise Unpairable(f"face {x1 - x0:.0f} px wide does not fit in half of the {image_width}-pixel-wide "
                         f"frame ({half * stride:.0f} px at latent-column steps)")
    centred = round((x0 + x1) / 2 / stride - half / 2)
    return min(max(centred, lo), hi)


def pairing_problem(index: CacheIndex, i: int) -> str | None:
    """Why single-person sample ``i`` of ``index`` cannot be one half of a stage-1 side-by-side frame (None: it can)."""
    m = index.metas[i]
    try:
        half_crop_start(index.global_face_box(i)[0], int(m["width"]), int(m["latent_width"]))
    except Unpairable as exc:
        return str(exc)
    return None


def _first_frame_columns(sample: CachedSample, columns: slice) -> torch.Tensor:
    """``sample``'s first frame ``[H, W, 3]`` cropped to the pixel columns of latent ``columns`` (c → 8c … 8c+7)."""
    frame = sample.first_frame
    if frame is None:
        raise InputError(f"cached sample '{sample.sample_id}' has no '{FIRST_FRAME_KEY}' (written by an older "
                         "prepare); two-person mode encodes the side-by-side first frame from it: re-run "
                         "'anytalker-train prepare' on its data folder (older samples are re-encoded)")
    lat_h, lat_w = sample.latents.shape[-2:]
    if tuple(frame.shape) != (VAE_STRIDE * lat_h, VAE_STRIDE * lat_w, 3):
        raise InputError(f"cached sample '{sample.sample_id}': first frame {tuple(frame.shape)} does not match its "
                         f"latents {lat_h}x{lat_w} (expected {VAE_STRIDE * lat_h}x{VAE_STRIDE * lat_w}x3)")
    return frame[:, VAE_STRIDE * columns.start: VAE_STRIDE * columns.stop]


def concat_side_by_side(left: CachedSample, right: CachedSample, text_embedding: torch.Tensor | None) -> CachedSample:
    """Stage 1's two-person sample: ``left`` (identity 0) and ``right`` (identity 1) side by side.

    Each sample's latents and first-frame latents are cropped to half width around its face
    (:func:`half_crop_start`: the whole face box inside, centred where the frame allows) and
    concatenated along width, and so are the same columns of both first frames (pixels;
    ``clip_tokens`` is None until the trainer encodes that frame); face boxes move with their crop and
    each identity's masks are confined to its half; audio and face tokens keep their identity.
    ``text_embedding`` is a generic two-person prompt (None keeps ``left``'s caption). Raises
    :class:`Unpairable` (naming the sample) when a face does not fit in half the frame.
    """
    if left.num_identities != 1 or right.num_identities != 1:
        raise InputError(f"two-person concatenation needs single-person samples, got {left.sample_id} "
                         f"({left.num_identities} identities) and {right.sample_id} ({right.num_identities})")
    if left.latents.shape != right.latents.shape or left.image_hw != right.image_hw:
        raise InputError(f"cannot concatenate {left.sample_id} {tuple(left.latents.shape)} with "
                         f"{right.sample_id} {tuple(right.latents.shape)}: shapes differ")
    if left.audio_features.shape != right.audio_features.shape:
        raise InputError(f"cannot concatenate {left.sample_id} and {right.sample_id}: audio shapes "
                         f"{tuple(left.audio_features.shape)} vs {tuple(right.audio_features.shape)} differ")
    h_img, w_img = left.image_hw
    lat_w = left.latents.shape[-1]
    half_lat, half = lat_w // 2, w_img / 2
    crops, boxes = [], []
    for k, sample in enumerate((left, right)):
        box = sample.global_face_box[0].clone()
        try:
            start = half_crop_start(box.tolist(), w_img, lat_w)
        except Unpairable as exc:
            raise Unpairable(f"sample '{sample.sample_id}': {exc}") from None
        crops.append(slice(start, start + half_lat))
        box[[0, 2]] = (box[[0, 2]] - start * w_img / lat_w).clamp(0, half) + k * half
        boxes.append(box)
    (cl, cr) = crops
    first_frame = torch.cat([_first_frame_columns(left, cl), _first_frame_columns(right, cr)], dim=1)
    return CachedSample(
        sample_id=f"{left.sample_id}+{right.sample_id}",
        latents=torch.cat([left.latents[..., cl], right.latents[..., cr]], dim=-1),
        first_frame_latent=torch.cat([left.first_frame_latent[..., cl], right.first_frame_latent[..., cr]], dim=-1),
        audio_features=torch.cat([left.audio_features, right.audio_features], dim=0),
        global_face_box=torch.stack(boxes),
        face_clip_tokens=torch.cat([left.face_clip_tokens, right.face_clip_tokens], dim=0),
        clip_tokens=None,
        text_embedding=left.text_embedding if text_embedding is None else text_embedding,
        image_hw=left.image_hw,
        first_frame=first_frame,
        regions=[(0.0, half), (half, float(w_img))],
        meta={"two_person": True, "left": left.meta, "right": right.meta,
              "crop_columns": [[cl.start, cl.stop], [cr.start, cr.stop]]},
    )


# ----------------------------------------------------------------------------------- batching


def collate(samples: Sequence[CachedSample], two_person: bool = False, audio_window: int = 5) -> TrainBatch:
    """Stack samples of one bucket into a :class:`TrainBatch` (masks built here, text zero-padded).

    Samples without CLIP tokens (two-person pairs) contribute their first frames instead.
    """
    if not samples:
        raise InputError("collate: empty batch")
    shapes = {(tuple(s.latents.shape), s.num_identities, tuple(s.audio_features.shape[1:])) for s in samples}
    if len(shapes) != 1:
        raise InputError(f"collate: samples of different shapes in one batch: {sorted(shapes)}")
    token_masks, y = [], []
    for s in samples:
        _, f_lat, lat_h, lat_w = s.latents.shape
        tm, ym = identity_masks(s.global_face_box, s.image_hw, (lat_h, lat_w), f_lat, s.regions)
        token_masks.append(tm)
        y.append(torch.cat([ym, s.first_frame_latent], dim=0))
    text_len = max(s.text_embedding.shape[0] for s in samples)
    text_dim = samples[0].text_embedding.shape[1]
    context = torch.zeros(len(samples), text_len, text_dim)
    for b, s in enumerate(samples):
        context[b, : s.text_embedding.shape[0]] = s.text_embedding
    encoded = {s.clip_tokens is not None for s in samples}
    if len(encoded) != 1:
        raise InputError("collate: samples with and without CLIP tokens in one batch")
    return TrainBatch(
        latents=torch.stack([s.latents for s in samples]),
        y=torch.stack(y),
        context=context,
        clip_fea=torch.stack([s.clip_tokens for s in samples]) if encoded == {True} else None,
        first_frames=None if encoded == {True} else torch.stack([s.first_frame for s in samples]),
        audio=window_audio(torch.stack([s.audio_features for s in samples], dim=1), audio_window),
        face_clip=torch.stack([s.face_clip_tokens for s in samples], dim=1),
        token_masks=torch.stack(token_masks, dim=1),
        sample_ids=[s.sample_id for s in samples],
        two_person=two_person,
    )


class BatchBuilder:
    """Turns a sampler :class:`~train.buckets.Batch` into a :class:`TrainBatch` (used as a map dataset).

    Two-person batches join each sample ``indices[k]`` with its partner ``partners[k]`` (sample k+1 of
    the batch) side by side; the generic prompt of each pair is drawn from a generator seeded by
    ``(seed, epoch, position)``, so the choice is the same after resume and in any DataLoader worker.
    """

    def __init__(self, index: CacheIndex, shared: SharedEmbeddings, seed: int = 0, audio_window: int = 5):
        self.index = index
        self.shared = shared
        self.seed = seed
        self.audio_window = audio_window

    def __getitem__(self, batch) -> TrainBatch:
        loaded: dict[int, CachedSample] = {}

        def get(i: int) -> CachedSample:
            if i not in loaded:
                loaded[i] = self.index.load(i)
            return loaded[i]

        samples = [get(i) for i in batch.indices]
        if batch.two_person:
            rng = np.random.default_rng([self.seed, batch.epoch, batch.position, 2])
            pairs = []
            for sample, partner in zip(samples, batch.partners):
                prompt = (self.shared.two_person[int(rng.integers(len(self.shared.two_person)))]
                          if self.shared.two_person else None)
                pairs.append(concat_side_by_side(sample, get(partner), prompt))
            samples = pairs
        out = collate(samples, two_person=batch.two_person, audio_window=self.audio_window)
        out.data_position = (batch.epoch, batch.position + 1)
        return out


def passthrough(item):
    """DataLoader ``collate_fn`` for already-built batches (module level so workers can pickle it)."""
    return item
