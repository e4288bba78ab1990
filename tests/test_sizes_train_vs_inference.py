"""Training and inference pick the same video size for every area and aspect (one rule: sampling.sizes)."""

import pytest

from anytalker_core.generation.stages import plan
from anytalker_core.sampling import target_size
from train.config import PrepareConfig
from train.clip_windows import clip_size

AREAS = [832 * 480, 1280 * 720, 640 * 640, 96 * 160, 128 * 128]


def _sizes():
    """Every square side 32..2048, a grid of aspects from 1:32 to 32:1, and the common video/photo sizes."""
    shapes = {(s, s) for s in range(32, 2049)}
    shapes |= {(h, w) for h in range(64, 2049, 8) for w in range(64, 2049, 40)}
    shapes |= {(480, 832), (720, 1280), (1080, 1920), (1920, 1080), (512, 512), (1024, 768), (768, 1024)}
    return sorted(shapes)


@pytest.mark.parametrize("area", AREAS)
def test_training_and_inference_sizes_agree(area):
    cfg = PrepareConfig(max_area=area)
    differ = []
    for h, w in _sizes():
        video = plan((h, w), 1, area)  # the inference plan of an image of this size
        if clip_size((h, w), cfg) != (video.height, video.width):
            differ.append(((h, w), clip_size((h, w), cfg), (video.height, video.width)))
    assert not differ, f"{len(differ)} sizes differ, e.g. {differ[:5]}"


def test_square_clip_at_720p_area_trains_at_the_inference_size():
    """The issue's example: the old training rule (float sqrt, truncated) trained some square clips at 928²."""
    for side in (37, 44, 52):
        assert clip_size((side, side), PrepareConfig(max_area=1280 * 720)) == (960, 960) == target_size(side, side, 1280 * 720)
