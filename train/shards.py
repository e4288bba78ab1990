"""The sharded cache format: cached samples packed into tar shards with an index (prepare's ``cache_format = "shards"``).

Layout of a cache folder in this format::

    CACHE/
      shards/
        p00000-of-00001-000000.tar          <id>.safetensors + <id>.json per sample (webdataset naming:
                                             one key, two extensions), plain POSIX tar
        p00000-of-00001-000000.index.jsonl  one line per complete sample: id, byte offset and size of
                                             its .safetensors member, the end of its .json member, meta;
                                             ``{"complete": true}`` closes a finished shard

A sample counts once its index line is written (tensors and metadata are in the tar and fsync'ed
before it), so an interrupted prepare loses nothing already indexed: the next run of the same prepare
shard truncates the open tar after its last indexed sample, closes it and starts a new tar. Each
prepare process writes only its own shards (``p<index>-of-<count>``), so processes never share a file.
A shard is closed after ``max_bytes`` (default 1 GiB, ~80 samples of 480p × 81 frames).

Readers use the index (one small file per shard, read once by rank 0 in training) and read a sample's
tensors with one seek and one read; the tars also stream sequentially (``tar tf``, webdataset).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from anytalker_core.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["SHARDS_FOLDER", "ShardWriter", "ShardEntry", "read_shard_entries", "read_member", "stored_tensors",
           "writer_for", "close_writers", "sample_bytes", "shard_meta", "pack_folder"]

SHARDS_FOLDER = "shards"
MAX_SHARD_BYTES = 1 << 30
_NAME = re.compile(r"^p(\d{5})-of-(\d{5})-(\d{6})\.index\.jsonl$")
_KEEP_FP32 = {"face_boxes", "global_face_box"}


def stored_tensors(tensors: dict[str, torch.Tensor], storage_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors as the cache stores them: floats in ``storage_dtype``, boxes float32, integers unchanged."""
    return {k: (v.float() if k in _KEEP_FP32 else v.to(storage_dtype) if v.is_floating_point() else v).contiguous()
            for k, v in tensors.items()}


def sample_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """One sample's ``.safetensors`` file as bytes."""
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


@dataclass(frozen=True)
class ShardEntry:
    """One sample of a tar shard: where its ``.safetensors`` member lies and its metadata."""

    tar: Path
    offset: int
    size: int
    meta: dict


def read_member(tar: Path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of ``tar`` (a member's data)."""
    try:
        with open(tar, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
    except OSError as exc:
        raise InputError(f"cache shard '{tar}' is unreadable ({exc}); re-run prepare") from None
    if len(data) != size:
        raise InputError(f"cache shard '{tar}' is shorter than its index says (a sample at byte {offset}); "
                         "delete the shard and its .index.jsonl and re-run prepare")
    return data


def _index_lines(index: Path) -> list[dict]:
    rows = []
    for line in index.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut: that sample is not complete
            continue
    return rows


def read_shard_entries(folder: str | Path) -> list[ShardEntry]:
    """Every indexed sample of ``folder/shards`` (sorted by shard name, then in writing order)."""
    root = Path(folder) / SHARDS_FOLDER
    entries = []
    for index in sorted(root.glob("*.index.jsonl")) if root.is_dir() else []:
        tar = index.with_name(index.name[: -len(".index.jsonl")] + ".tar")
        for row in _index_lines(index):
            if "id" in row:
                entries.append(ShardEntry(tar, int(row["offset"]), int(row["size"]), row["meta"]))
    return entries


class ShardWriter:
    """Appends samples to this prepare process's tar shards (see the module docstring)."""

    def __init__(self, folder: str | Path, shard: int = 0, shards: int = 1, max_bytes: int = MAX_SHARD_BYTES):
        self.root = Path(folder) / SHARDS_FOLDER
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = f"p{shard:05d}-of-{shards:05d}"
        self.max_bytes = max_bytes
        self._tar: tarfile.TarFile | None = None
        self._index = None
        self._count = 0
        self.current: Path | None = None  # the tar written last
        self.ids: dict[str, dict] = {}  # sample id -> meta, over all shards of the folder
        numbers = []
        for index in sorted(self.root.glob("*.index.jsonl")):
            m = _NAME.match(index.name)
            rows = _index_lines(index)
            self.ids.update({r["id"]: r["meta"] for r in rows if "id" in r})
            if m and index.name.startswith(self.prefix):
                numbers.append(int(m.group(3)))
                if not any(r.get("complete") for r in rows):
                    self._repair(index, rows)
        self._next = max(numbers, default=-1) + 1

    def _repair(self, index: Path, rows: list[dict]) -> None:
        """Close a shard an interrupted run left open: cut the tar after its last indexed sample."""
        tar = index.with_name(index.name[: -len(".index.jsonl")] + ".tar")
        end = max((int(r["end"]) for r in rows if "id" in r), default=0)
        with open(tar, "r+b" if tar.exists() else "w+b") as fh:
            fh.truncate(end)
            fh.seek(end)
            fh.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
        with open(index, "a", encoding="utf-8") as fh:
            fh.write("\n" + json.dumps({"complete": True, "repaired": True}) + "\n")
        log.info("closed cache shard %s left open by an interrupted run (%d samples kept)", tar.name,
                 sum(1 for r in rows if "id" in r))

    def _open(self) -> None:
        name = f"{self.prefix}-{self._next:06d}"
        self._next += 1
        self.current = self.root / f"{name}.tar"
        self._tar = tarfile.open(self.current, "w", format=tarfile.USTAR_FORMAT)
        self._index = open(self.root / f"{name}.index.jsonl", "a", encoding="utf-8")
        self._count = 0

    def _add(self, name: str, data: bytes) -> int:
        """Add one member; returns the byte offset of its data."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data is padded to whole blocks
        return self._tar.offset - padded

    def write(self, sample_id: str, tensors: dict[str, torch.Tensor], meta: dict, metadata: dict[str, str]) -> None:
        """Add one sample (``tensors`` already in their storage dtype) and index it."""
        self.write_bytes(sample_id, sample_bytes(tensors, metadata), meta)

    def write_bytes(self, sample_id: str, data: bytes, meta: dict) -> None:
        """Add one sample given as its ``.safetensors`` bytes and index it."""
        if len(f"{sample_id}.safetensors") > 100:
            raise InputError(f"sample id '{sample_id}' is longer than a tar member name allows (95 characters); "
                             "give the clip a shorter 'id' in the manifest")
        if self._tar is None:
            self._open()
        offset = self._add(f"{sample_id}.safetensors", data)
        self._add(f"{sample_id}.json", json.dumps(meta).encode())
        self._tar.fileobj.flush()
        os.fsync(self._tar.fileobj.fileno())
        self._index.write(json.dumps({"id": sample_id, "offset": offset, "size": len(data), "end": self._tar.offset,
                                      "meta": meta}) + "\n")
        self._index.flush()
        os.fsync(self._index.fileno())
        self.ids[sample_id] = meta
        _known.setdefault(_folder_key(self.root.parent), {})[sample_id] = meta
        self._count += 1
        if self._tar.offset >= self.max_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._index.write(json.dumps({"complete": True, "samples": self._count}) + "\n")
        self._index.close()
        self._tar = self._index = None

    def close(self) -> None:
        self._close_shard()


_writers: dict[tuple[str, int, int], ShardWriter] = {}
_known: dict[str, dict[str, dict]] = {}  # cache folder -> {sample id: meta} of its shards (read once per process)


def _folder_key(folder: str | Path) -> str:
    return str(Path(folder).resolve())


def shard_meta(folder: str | Path, sample_id: str) -> dict | None:
    """The metadata of ``sample_id`` if a tar shard of cache ``folder`` holds it (None otherwise)."""
    key = _folder_key(folder)
    if key not in _known:
        _known[key] = {e.meta.get("id"): e.meta for e in read_shard_entries(folder)}
    return _known[key].get(sample_id)


def writer_for(folder: str | Path, shard: int, shards: int) -> ShardWriter:
    """This process's writer for cache ``folder`` as prepare shard ``shard`` of ``shards`` (opened once)."""
    key = (_folder_key(folder), shard, shards)
    if key not in _writers:
        _writers[key] = ShardWriter(folder, shard, shards)
    return _writers[key]


def close_writers() -> None:
    """Close every open shard of this process (prepare does at its end; an interrupted run is repaired later)."""
    while _writers:
        _writers.popitem()[1].close()
    _known.clear()


def pack_folder(folder: str | Path, max_bytes: int = MAX_SHARD_BYTES) -> int:
    """Move the samples of cache ``folder``'s folder layout (``samples/``) into tar shards; returns how many.

    Each original pair is deleted only after every sample is indexed, so an interrupted pack is simply run
    again (samples already in a shard are not packed twice)."""
    samples = Path(folder) / "samples"
    pairs = [(m, m.with_suffix(".safetensors")) for m in sorted(samples.glob("*.json"))
             if m.with_suffix(".safetensors").is_file()] if samples.is_dir() else []
    if not pairs:
        raise InputError(f"pack: '{folder}' has no cached samples in samples/ to pack")
    writer = ShardWriter(folder, 0, 1, max_bytes)
    try:
        for meta_path, tensor_path in pairs:
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"pack: sample metadata '{meta_path}' is unreadable ({exc})") from None
            sample_id = str(meta.get("id", tensor_path.stem))
            if sample_id not in writer.ids:
                writer.write_bytes(sample_id, tensor_path.read_bytes(), meta)
    finally:
        writer.close()
    for meta_path, tensor_path in pairs:
        tensor_path.unlink()
        meta_path.unlink()
    log.info("packed %d samples of %s into %s", len(pairs), samples, writer.root)
    return len(pairs)
