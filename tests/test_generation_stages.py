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
