"""The sharded cache (train/shards.py, train/cache.py) and every window of a clip (train/prepare.py, train/clip_windows.py).

* tar shards hold the same samples as the folder layout (read back through CacheIndex and, independently,
  with Python's ``tarfile``), close at their size limit, survive an interrupted write, and ``pack`` moves a
  folder cache into them;
* prepare cuts every window of a clip by default and writes the same samples in either layout.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train_fit import make_cache

from anytalker_core.errors import InputError
from train.cache import CacheIndex, read_index_once
from train.shards import ShardWriter, pack_folder, read_shard_entries, stored_tensors


def _same_samples(a: CacheIndex, b: CacheIndex) -> None:
    ids_a = [m["id"] for m in a.metas]
    ids_b = [m["id"] for m in b.metas]
    assert sorted(ids_a) == sorted(ids_b)
    for i, sample_id in enumerate(ids_a):
        j = ids_b.index(sample_id)
        sa, sb = a.load(i), b.load(j)
        for name in ("latents", "first_frame_latent", "audio_features", "global_face_box", "face_clip_tokens",
                     "clip_tokens", "text_embedding", "first_frame"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), (sample_id, name)
        assert a.key(i) == b.key(j) and sa.meta == sb.meta


def test_pack_moves_a_folder_cache_into_tar_shards(tmp_path: Path):
    folder = make_cache(tmp_path / "folder", 5)
    shutil.copytree(folder, tmp_path / "packed")
    sample_bytes = (folder / "samples" / "s0.safetensors").stat().st_size
    assert pack_folder(tmp_path / "packed", max_bytes=2 * sample_bytes) == 5
    assert not list((tmp_path / "packed" / "samples").iterdir())  # the originals are gone
    tars = sorted((tmp_path / "packed" / "shards").glob("*.tar"))
    assert len(tars) == 3  # closed after two samples each (2 + 2 + 1)
    members = []
    for tar in tars:  # plain tars: the standard library lists webdataset-style pairs
        with tarfile.open(tar) as tf:
            members += tf.getnames()
    assert members == [f"s{k}.{ext}" for k in range(5) for ext in ("safetensors", "json")]
    with tarfile.open(tars[0]) as tf:
        assert json.load(tf.extractfile("s1.json"))["id"] == "s1"
    _same_samples(CacheIndex([folder]), CacheIndex([tmp_path / "packed"]))
    index = CacheIndex([tmp_path / "packed"])
    assert index.has_tensor(0, "first_frame") and not index.has_tensor(0, "nothing")
    assert index.global_face_box(0) == CacheIndex([folder]).global_face_box(0)
    # what the main process sends the others rebuilds the same index
    _same_samples(CacheIndex.from_state(json.loads(json.dumps(index.state()))), index)
    _same_samples(read_index_once([tmp_path / "packed"]), index)  # one process: read directly
    with pytest.raises(InputError, match="no cached samples in samples/ to pack"):
        pack_folder(tmp_path / "packed")


def test_an_interrupted_shard_keeps_its_indexed_samples(tmp_path: Path):
    source = CacheIndex([make_cache(tmp_path / "folder", 3)])
    tensors = [stored_tensors(dict(_raw(source, i)), torch.bfloat16) for i in range(3)]
    writer = ShardWriter(tmp_path / "cache", 2, 4)
    for i in range(2):
        writer.write(f"s{i}", tensors[i], source.metas[i], {"format": "anytalker-train-sample"})
    tar = writer.current
    writer._tar.fileobj.write(b"\x01" * 700)  # a kill in the middle of the third sample: half a member ...
    writer._tar.fileobj.flush()
    with open(tar.with_name(tar.name.replace(".tar", ".index.jsonl")), "a") as fh:
        fh.write('{"id": "s2", "offs')  # ... and a cut index line
    writer._index.flush()  # (the process dies here: nothing is closed)

    again = ShardWriter(tmp_path / "cache", 2, 4)  # the next run of the same prepare shard
    assert set(again.ids) == {"s0", "s1"}
    with tarfile.open(tar) as tf:  # the open tar was cut after its last indexed sample and closed
        assert tf.getnames() == ["s0.safetensors", "s0.json", "s1.safetensors", "s1.json"]
    again.write("s2", tensors[2], source.metas[2], {"format": "anytalker-train-sample"})
    again.close()
    assert again.current != tar and again.current.name.startswith("p00002-of-00004-")
    assert [e.meta["id"] for e in read_shard_entries(tmp_path / "cache")] == ["s0", "s1", "s2"]
    _same_samples(CacheIndex([tmp_path / "cache"]), source)


def _raw(index: CacheIndex, i: int):
    from safetensors.torch import load_file

    return load_file(str(index.paths[i]))


def test_a_folder_without_samples_or_shards_is_named(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="'.*empty' has neither 'samples/' nor 'shards/'"):
        CacheIndex([tmp_path / "empty"])


# ----------------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """A real face (scikit-image's astronaut) talking (espeak-ng) for 40 frames at 24 fps: two 17-frame windows."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    import cv2
    from skimage import data

    from anytalker_core.io.media import write_video
    from anytalker_core.testing.speech import synthesize_speech

    root = tmp_path_factory.mktemp("long")
    face = cv2.resize(data.astronaut()[20:320, 60:360], (96, 96), interpolation=cv2.INTER_AREA)
    speech = synthesize_speech("Every window of this clip is a training sample, not only the first one.")
    frames = np.stack([face] * 40)
    write_video(root / "talk.mp4", frames, 24, speech[: int(40 / 24 * 16000)])
    return root


def _prepare(clips: Path, out: Path, models: dict, **kw) -> dict:
    from train.config import PrepareConfig
    from train.prepare import prepare

    cfg = PrepareConfig(input=str(clips), output=str(out), max_area=96 * 96, max_frames=17, min_frames=17,
                        face_check_stride=8, max_motion=4.0, **models, **kw)
    return prepare(cfg)


@pytest.mark.slow
def test_prepare_uses_every_window_and_writes_either_layout(long_clip: Path, tmp_path: Path):
    models = _tiny_models(tmp_path / "models")
    report = _prepare(long_clip, tmp_path / "folder", models)
    kept = {r["id"]: r for r in report["results"] if r["status"] == "kept"}
    assert sorted(kept) == ["talk", "talk__s001"]  # 40 frames = two 17-frame windows (the rest is cut)
    folder = CacheIndex([tmp_path / "folder"])
    starts = sorted(m["start_seconds"] for m in folder.metas)
    assert starts == pytest.approx([0.0, 17 / 24], abs=1e-3)
    assert {folder.source(i) for i in range(len(folder))} == {str(long_clip / "talk.mp4")}  # never paired together

    # the old default (first window only), then the new one on the same cache: the second window is added
    first_only = _prepare(long_clip, tmp_path / "first", models, segments_per_clip=1)
    assert [r["id"] for r in first_only["results"] if r["status"] == "kept"] == ["talk"]
    extended = _prepare(long_clip, tmp_path / "first", models)
    assert {r["id"]: r["status"] for r in extended["results"]} == {"talk": "cached", "talk__s001": "kept"}

    report = _prepare(long_clip, tmp_path / "shards", models, cache_format="shards")
    assert sorted(r["id"] for r in report["results"] if r["status"] == "kept") == sorted(kept)
    assert not list((tmp_path / "shards" / "samples").glob("*.safetensors"))
    sharded = CacheIndex([tmp_path / "shards"])
    _same_samples(folder, sharded)
    again = _prepare(long_clip, tmp_path / "shards", models, cache_format="shards")  # resumes: nothing redone
    assert {r["status"] for r in again["results"]} == {"cached"}
    assert len(CacheIndex([tmp_path / "shards"])) == 2


def _tiny_models(root: Path) -> dict[str, str]:
    from anytalker_core.encoders import make_tiny_clip_vision, make_tiny_text_encoder, make_tiny_vae
    from anytalker_core.testing.tiny_wav2vec import make_tiny_wav2vec

    return {
        "vae": str(make_tiny_vae(root / "wan_2.1_vae.safetensors")),
        "clip_vision": str(make_tiny_clip_vision(root / "clip_vision_h.safetensors", hidden_size=32)),
        "text_encoder": str(make_tiny_text_encoder(root / "text", d_model=32)),
        "wav2vec": str(make_tiny_wav2vec(root / "wav2vec2", hidden_size=32, num_layers=2)),
    }
