"""The pipeline only composes loaded models; the stages run without it."""

import pytest
import torch

from anytalker_core.generation.pipeline import AnyTalkerPipeline
from anytalker_core.generation.stages import Placement


def test_the_pipeline_refuses_missing_models_and_points_to_the_stages():
    with pytest.raises(TypeError, match="text_encoder, wav2vec missing.*generation.stages"):
        AnyTalkerPipeline(torch.nn.Linear(1, 1), None, object(), object(), None)


class Recorder:
    """Stands for a model: records where it is moved."""

    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(torch.device(device).type)
        return self


def test_placement_offloads_a_model_only_while_its_stage_runs():
    model = Recorder()
    with Placement(device="meta", dtype=torch.float16, offload=True).use(model):
        assert model.moves == ["meta"]
    assert model.moves == ["meta", "cpu"]
    still = Recorder()
    with Placement(device="meta").use(still):  # no offloading: nothing moves
        pass
    assert still.moves == []
    assert Placement(dtype=torch.float16).dit_tensor(torch.ones(2)).dtype == torch.float16


@pytest.mark.parametrize("shape", [(1, 3, 81, 16, 24), (3, 17, 6, 10), (1, 3, 1, 4, 4)])
def test_uint8_frames_are_numpys_rounding_of_the_whole_clip(shape):
    """Converted a few frames at a time, the frames equal numpy's conversion of the whole clip at once
    (clip to -1..1, (x + 1) · 127.5, round half to even), past the chunk boundaries too."""
    import numpy as np

    from anytalker_core.generation.inputs import UINT8_CHUNK_FRAMES, to_uint8_frames

    video = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.8
    video[..., 0, 0] = 1.7  # out of range: clipped
    video[..., 1, 1] = 0.5 / 127.5 - 1  # exactly halfway between two levels: rounds to even (0)
    array = (video[0] if video.ndim == 5 else video).numpy()
    expected = np.round((np.clip(array, -1, 1) + 1) * np.float32(127.5)).astype(np.uint8).transpose(1, 2, 3, 0)
    got = to_uint8_frames(video)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # 81 and 17 frames: several chunks of UINT8_CHUNK_FRAMES
    assert UINT8_CHUNK_FRAMES < 17
