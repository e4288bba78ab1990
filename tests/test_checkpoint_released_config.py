"""The released folder layout: ``config_af2v_<size>.json`` files beside the ``.pth`` files are read."""

import shutil

import pytest
import torch

from anytalker_core.errors import CheckpointError
from anytalker_core.model.checkpoint import load_dit


@pytest.fixture
def released(tmp_path, fixtures):
    """The fixtures' tiny models laid out like the Hugging Face release (no <stem>.json beside them)."""
    shutil.copy(fixtures / "dit_af.pth", tmp_path / "1_3B-single-v1.pth")
    shutil.copy(fixtures / "dit_legacy.pth", tmp_path / "14B-multi-v1.pth")
    shutil.copy(fixtures / "dit_af.config.json", tmp_path / "config_af2v_1_3B.json")
    shutil.copy(fixtures / "dit_legacy.config.json", tmp_path / "config_af2v_14B.json")
    return tmp_path


def test_each_model_gets_the_released_config_that_fits_it(released, fixtures):
    # dim 64 is no multiple of Wan's head size 128: num_heads (2) can only come from the JSON
    fused = load_dit(released / "1_3B-single-v1.pth")
    legacy = load_dit(released / "14B-multi-v1.pth")
    assert (fused.config.afca, fused.config.num_heads) == ("fused", 2)
    assert (legacy.config.afca, legacy.config.num_heads) == ("legacy", 2)
    # the same model as with the fixture's own config file
    reference = load_dit(fixtures / "dit_af.pth", config_path=fixtures / "dit_af.config.json")
    assert fused.config == reference.config
    for k, v in reference.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k


def test_without_a_config_the_shapes_cannot_tell_the_heads(released):
    for p in released.glob("config_af2v_*.json"):
        p.unlink()
    with pytest.raises(CheckpointError, match="cannot infer num_heads"):
        load_dit(released / "1_3B-single-v1.pth")


def test_no_released_config_fits(released):
    (released / "config_af2v_1_3B.json").unlink()  # only the legacy (14B-style) config is left
    with pytest.raises(CheckpointError, match="none of the released configs.*config_af2v_14B.json"):
        load_dit(released / "1_3B-single-v1.pth")
