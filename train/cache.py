"""Cached training samples on disk: the sample format, its two layouts, and the index training reads once.

A cached sample (written by :mod:`train.prepare`) is one safetensors file plus its JSON metadata:

==========================  ==========================  ===============================================
key                         shape                        meaning
==========================  ==========================  ===============================================
``latents``                 ``[16, F, h, w]``           VAE latents of the clip (the training target x0)
``first_frame_latent``      ``[16, F, h, w]``           VAE latents of (frame 0, then black frames): y's image part
``audio_features``          ``[N, T, L, C]``            wav2vec2 hidden states per video frame, one track per identity
                                                         (un-windowed; windowed ±2 here, as the encoder does)
``face_boxes``              ``[N, T, 4]``               per-frame square face boxes, xyxy pixels (NaN = not found)
``global_face_box``         ``[N, 4]``                  union of the clip's boxes (made square), xyxy pixels
``face_clip_tokens``        ``[N, 257, D]``             CLIP ViT-H/14 penultimate tokens of each face crop
``clip_tokens``             ``[257, D]``                CLIP tokens of frame 0
``first_frame``             ``[H, W, 3]`` uint8         frame 0's pixels (two-person mode encodes its CLIP tokens
                                                         from the side-by-side crops; prepare format ≥ 2)
``text_embedding``          ``[L_text, text_dim]``      UMT5 embedding of the caption (unpadded)
==========================  ==========================  ===============================================

with ``T = 4(F − 1) + 1`` video frames, identities ordered left to right, ``(H, W) = (8h, 8w)``.
``shared_embeddings.safetensors`` in the cache folder holds ``empty_text_embedding`` (the
unconditional prompt) and ``two_person_text_embedding.{i}`` (generic two-person prompts).

Two layouts of a cache folder, both read by :class:`CacheIndex` (a folder may hold both):

* ``samples/<id>.safetensors`` + ``samples/<id>.json`` (prepare's ``cache_format = "folder"``, the
  default; one file pair per sample, easy to inspect);
* ``shards/*.tar`` + ``shards/*.index.jsonl`` (``cache_format = "shards"``, :mod:`train.shards`): the
  same two files per sample packed into tar shards of ~1 GiB with one small index per shard, for
  datasets of many thousand samples. ``anytalker-train pack CACHE`` moves a folder cache into shards.

In training, :func:`read_index_once` lets the main process read the metadata (every ``.json`` or
every shard index) and hands it to the other processes, so N processes do not read every file N times.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from anytalker_core.constants import VAE_SPATIAL_STRIDE
from anytalker_core.errors import InputError

from .shards import ShardEntry, read_member, read_shard_entries

log = logging.getLogger(__name__)

__all__ = ["CachedSample", "CacheIndex", "SharedEmbeddings", "load_sample", "sample_from_tensors", "read_index_once",
           "SAMPLE_KEYS", "FIRST_FRAME_KEY", "SHARED_EMBEDDINGS_FILE"]

SAMPLE_KEYS = ("latents", "first_frame_latent", "audio_features", "face_boxes", "global_face_box",
               "face_clip_tokens", "clip_tokens", "text_embedding")
FIRST_FRAME_KEY = "first_frame"  # optional at load time; two-person mode needs it
SHARED_EMBEDDINGS_FILE = "shared_embeddings.safetensors"
VAE_STRIDE = VAE_SPATIAL_STRIDE


@dataclass
class CachedSample:
    """One cached clip (tensors as stored) plus its metadata. ``N`` identities, ``T`` video frames."""

    sample_id: str
    latents: torch.Tensor  # [16, F, h, w]
    first_frame_latent: torch.Tensor  # [16, F, h, w]
    audio_features: torch.Tensor  # [N, T, L, C]
    global_face_box: torch.Tensor  # [N, 4] xyxy pixels
    face_clip_tokens: torch.Tensor  # [N, 257, D]
    clip_tokens: torch.Tensor | None  # [257, D]; None for a two-person pair (encoded later from first_frame)
    text_embedding: torch.Tensor  # [L_text, text_dim]
    image_hw: tuple[int, int]
    first_frame: torch.Tensor | None = None  # uint8 [H, W, 3]; None in caches of prepare format 1
    # per-identity column ranges (pixels) the identity's masks are confined to; None = whole image
    regions: list[tuple[float, float]] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_identities(self) -> int:
        return int(self.audio_features.shape[0])


# ----------------------------------------------------------------------------------- loading


def _read_meta(json_path: Path) -> dict:
    try:
        return json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cached sample metadata '{json_path}' is unreadable ({exc}); re-run prepare") from None


def sample_from_tensors(tensors: dict[str, torch.Tensor], meta: dict, where: str) -> CachedSample:
    """A :class:`CachedSample` from the tensors and metadata prepare stored (``where`` names it in errors)."""
    missing = [k for k in SAMPLE_KEYS if k not in tensors]
    if missing:
        raise InputError(f"cached sample '{where}' lacks {missing}; it was not written by this version of prepare")
    lat = tensors["latents"]
    image_hw = (int(meta.get("height", lat.shape[-2] * VAE_STRIDE)), int(meta.get("width", lat.shape[-1] * VAE_STRIDE)))
    return CachedSample(
        sample_id=str(meta.get("id", Path(where).stem)),
        latents=lat.float(),
        first_frame_latent=tensors["first_frame_latent"].float(),
        audio_features=tensors["audio_features"].float(),
        global_face_box=tensors["global_face_box"].float(),
        face_clip_tokens=tensors["face_clip_tokens"].float(),
        clip_tokens=tensors["clip_tokens"].float(),
        text_embedding=tensors["text_embedding"].float(),
        image_hw=image_hw,
        first_frame=tensors.get(FIRST_FRAME_KEY),
        meta=meta,
    )


def load_sample(path: str | Path) -> CachedSample:
    """Read ``<id>.safetensors`` (+ ``<id>.json``) of the folder layout."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"cached sample '{path}' is unreadable ({exc}); delete it and re-run prepare") from None
    return sample_from_tensors(tensors, _read_meta(path.with_suffix(".json")), str(path))


def _load_member(entry: ShardEntry, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_member(entry.tar, entry.offset, entry.size))
    except SafetensorError as exc:
        raise InputError(f"cached sample '{where}' is unreadable ({exc}); delete its shard and re-run prepare") from None


@dataclass
class SharedEmbeddings:
    """Prompt embeddings every sample may need: the empty prompt and generic two-person prompts."""

    empty: torch.Tensor | None  # [L, text_dim]
    two_person: list[torch.Tensor]  # each [L, text_dim]
    two_person_prompts: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: str | Path) -> "SharedEmbeddings":
        from safetensors.torch import load_file

        path = Path(folder) / SHARED_EMBEDDINGS_FILE
        if not path.is_file():
            log.warning("%s not found: text dropout uses zeros and two-person batches keep the left sample's "
                        "caption (run prepare to create it)", path)
            return cls(empty=None, two_person=[])
        tensors = load_file(str(path))
        meta_path = path.with_suffix(".json")
        prompts = json.loads(meta_path.read_text()).get("two_person_prompts", []) if meta_path.is_file() else []
        count = sum(1 for k in tensors if k.startswith("two_person_text_embedding."))
        return cls(empty=tensors.get("empty_text_embedding", None) if "empty_text_embedding" in tensors else None,
                   two_person=[tensors[f"two_person_text_embedding.{i}"].float() for i in range(count)],
                   two_person_prompts=prompts)


class CacheIndex:
    """The cached samples of one or more prepare output folders (either layout): where each is, its
    metadata and bucket key. ``paths[i]`` is the sample's file, or ``<shard>.tar/<id>.safetensors`` for
    a sample inside a tar shard (``members[i]`` then holds where in the tar)."""

    def __init__(self, folders: Sequence[str | Path]):
        self.folders = [Path(f) for f in folders]
        self.paths: list[Path] = []
        self.metas: list[dict] = []
        self.members: list[ShardEntry | None] = []
        for folder in self.folders:
            samples = folder / "samples"
            entries = read_shard_entries(folder)
            if not samples.is_dir() and not entries:
                raise InputError(f"data folder '{folder}' has neither 'samples/' nor 'shards/' with cached samples; "
                                 "run 'anytalker-train prepare' to create them")
            for meta_path in sorted(samples.glob("*.json")) if samples.is_dir() else []:
                tensor_path = meta_path.with_suffix(".safetensors")
                if tensor_path.is_file():
                    self._add(tensor_path, _read_meta(meta_path), None)
            for entry in entries:
                self._add(entry.tar / f"{entry.meta.get('id')}.safetensors", entry.meta, entry)
        if not self.paths:
            raise InputError(f"no cached samples found in {[str(f) for f in self.folders]}; run prepare first")

    def _add(self, path: Path, meta: dict, member: ShardEntry | None) -> None:
        self.paths.append(path)
        self.metas.append(meta)
        self.members.append(member)

    def state(self) -> dict:
        """Everything the index read, as plain data (what the main process sends the others)."""
        return {"folders": [str(f) for f in self.folders], "paths": [str(p) for p in self.paths],
                "metas": self.metas,
                "members": [None if m is None else [str(m.tar), m.offset, m.size] for m in self.members]}

    @classmethod
    def from_state(cls, state: dict) -> "CacheIndex":
        index = cls.__new__(cls)
        index.folders = [Path(f) for f in state["folders"]]
        index.paths = [Path(p) for p in state["paths"]]
        index.metas = state["metas"]
        index.members = [None if m is None else ShardEntry(Path(m[0]), int(m[1]), int(m[2]), meta)
                         for m, meta in zip(state["members"], index.metas)]
        return index

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, i: int) -> tuple[int, int, int, int]:
        """Bucket key ``(identities, latent frames, latent h, latent w)``: equal keys batch together."""
        m = self.metas[i]
        return (int(m["num_identities"]), int(m["latent_frames"]), int(m["latent_height"]), int(m["latent_width"]))

    def keys(self) -> list[tuple[int, int, int, int]]:
        return [self.key(i) for i in range(len(self))]

    def load(self, i: int) -> CachedSample:
        member = self.members[i]
        if member is None:
            return load_sample(self.paths[i])
        return sample_from_tensors(_load_member(member, str(self.paths[i])), member.meta, str(self.paths[i]))

    def source(self, i: int) -> str:
        """The clip sample ``i`` was cut from (windows of one clip share it)."""
        return str(self.metas[i].get("source") or self.metas[i].get("id", self.paths[i].stem))

    def global_face_box(self, i: int) -> list[list[float]]:
        """``[N, 4]`` face boxes of sample ``i`` (from its metadata, else from the tensors)."""
        box = self.metas[i].get("global_face_box")
        if box is not None:
            return box
        if self.members[i] is not None:
            return self.load(i).global_face_box.tolist()
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.paths[i]), framework="pt") as fh:
                return fh.get_tensor("global_face_box").float().tolist()
        except (OSError, SafetensorError) as exc:
            raise InputError(f"cached sample '{self.paths[i]}' is unreadable ({exc}); delete it and re-run "
                             "prepare") from None

    def has_tensor(self, i: int, key: str) -> bool:
        """Whether sample ``i`` stores tensor ``key`` (reads the safetensors header only)."""
        member = self.members[i]
        if member is not None:
            size = int.from_bytes(read_member(member.tar, member.offset, 8), "little")
            header = json.loads(read_member(member.tar, member.offset, 8 + size)[8:])
            return key in header
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.paths[i]), framework="pt") as fh:
                return key in fh.keys()
        except (OSError, SafetensorError) as exc:
            raise InputError(f"cached sample '{self.paths[i]}' is unreadable ({exc}); delete it and re-run "
                             "prepare") from None


def read_index_once(folders: Sequence[str | Path]) -> CacheIndex:
    """The :class:`CacheIndex` of ``folders``, read by the main process only and broadcast to the others
    (every process gets the same index, or the same error); a single process just reads it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return CacheIndex(folders)
    payload: list = [None]
    if dist.get_rank() == 0:
        try:
            index = CacheIndex(folders)
            payload = [index.state()]
            log.info("cache index: %d samples read by the main process, sent to %d processes", len(index),
                     dist.get_world_size())
        except InputError as exc:
            payload = [{"error": str(exc)}]
    dist.broadcast_object_list(payload, src=0)
    if "error" in payload[0]:
        raise InputError(payload[0]["error"])
    return CacheIndex.from_state(payload[0])
