"""anytalker_core.io.weights: the one weight reader trusts the safetensors header, not the file name or
its first byte (a header length whose low byte is 0x50 'P' or 0x80 once sent valid files down the pickle path)."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from anytalker_core.errors import CheckpointError, MissingModelError
from anytalker_core.io.weights import LazyStateDict, read_weights, weight_format
from anytalker_core.model.checkpoint import CONFIG_METADATA_KEY, load_dit
from anytalker_core.model.config import AnyTalkerConfig
from anytalker_core.model.dit import AnyTalkerDiT


def save_with_first_byte(path, tensors, first_byte: int, metadata=None):
    """Write a valid safetensors file whose 8-byte header length starts with ``first_byte``, by padding
    the metadata; return the header length."""
    metadata = dict(metadata or {})
    for pad in range(0, 4096):
        save_file(tensors, str(path), metadata={**metadata, "pad": "x" * pad})
        raw = path.read_bytes()
        if raw[0] == first_byte:
            (n,) = struct.unpack("<Q", raw[:8])
            assert isinstance(json.loads(raw[8:8 + n]), dict)
            return n
    raise AssertionError(f"no padding gives first byte {first_byte:#x}")


@pytest.mark.parametrize("first_byte", [0x50, 0x80, 0x00])
@pytest.mark.parametrize("suffix", [".safetensors", ".sft", ".bin", ".pth", ""])
def test_every_valid_safetensors_file_loads_whatever_its_name(tmp_path, first_byte, suffix):
    tensors = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / f"w{suffix}"
    n = save_with_first_byte(path, tensors, first_byte)
    assert n & 0xFF == first_byte
    assert weight_format(path) == "safetensors"
    sd, meta = read_weights(path)
    assert sd.keys() == tensors.keys() and all(torch.equal(sd[k], tensors[k]) for k in tensors)
    assert meta["pad"].startswith("x") or meta["pad"] == ""
    lazy = LazyStateDict(path, "test model")
    assert torch.equal(lazy["a.weight"], tensors["a.weight"]) and len(lazy) == 2


@pytest.mark.parametrize("first_byte", [0x50, 0x80])
@pytest.mark.parametrize("suffix", [".sft", ".pth"])
def test_dit_checkpoint_with_such_a_header_loads(tmp_path, first_byte, suffix):
    torch.manual_seed(0)
    config = AnyTalkerConfig.tiny("fused")
    model = AnyTalkerDiT(config)
    path = tmp_path / f"dit{suffix}"
    save_with_first_byte(path, {k: v.contiguous() for k, v in model.state_dict().items()}, first_byte,
                         {CONFIG_METADATA_KEY: json.dumps(config.to_dict())})
    loaded = load_dit(path)
    assert loaded.config == config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_torch_files_are_told_from_their_bytes(tmp_path):
    sd = {"w": torch.randn(2, 2)}
    torch.save({"model": sd}, tmp_path / "zip.safetensors")  # a misnamed torch.save archive
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert weight_format(tmp_path / "zip.safetensors") == "torch-zip"
    assert weight_format(tmp_path / "legacy.pth") == "torch-pickle"
    for name in ("zip.safetensors", "legacy.pth"):
        got, meta = read_weights(tmp_path / name)
        assert torch.equal(got["w"], sd["w"]) and meta == {}


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(MissingModelError, match="nope.sft': no such file"):
        read_weights(tmp_path / "nope.sft")
    (tmp_path / "notes.sft").write_text("these are notes, not weights")
    with pytest.raises(CheckpointError, match="notes.sft': not a PyTorch checkpoint or safetensors file"):
        read_weights(tmp_path / "notes.sft")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_weights(tmp_path / "empty.pth")
    save_file({"w": torch.randn(64, 64)}, str(tmp_path / "cut.sft"))
    data = (tmp_path / "cut.sft").read_bytes()
    (tmp_path / "cut.sft").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.sft'.*truncated or corrupt"):
        read_weights(tmp_path / "cut.sft")
