"""Sequence parallelism (train/sequence_parallel.py) on CPU with ``torchrun --nproc_per_node 2`` (gloo).

* the tiny DiT (fused and legacy AFCA, 1 and 2 identities, an uneven 2 + 1 frame split, gradient
  checkpointing) gives the same output, loss and gradients with its tokens split over two processes as
  run whole;
* ``fit`` with ``sequence_parallel = 2`` on two processes gives the loss curve and the exported weights of
  the same run on one process (stage 1: single- and two-person batches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_train_fit import make_cache, read_losses, write_config
from test_train_fsdp import _free_port, _same_export, _torchrun

from anytalker_core.errors import InputError
from train.sequence_parallel import frame_shares, setup


def test_frames_are_dealt_evenly_and_too_few_are_named():
    assert frame_shares(21, 2) == [11, 10]
    assert frame_shares(21, 4) == [6, 5, 5, 5]
    assert frame_shares(2, 2) == [1, 1]
    with pytest.raises(InputError, match="sequence_parallel = 4 needs at least 4 latent frames.*got 3"):
        frame_shares(3, 4)
    with pytest.raises(InputError, match="sequence_parallel = 2 must divide the number of processes \\(3\\)"):
        setup(2, 0, 3)
    assert setup(1, 1, 3) == (None, 1, 3)


@pytest.mark.slow
def test_split_model_equals_the_whole_model():
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         str(REPO / "tests" / "distributed" / "sequence_parallel_model.py")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-4000:]
    cases = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(c["afca"], c["frames"], c["identities"]) for c in cases] == [("fused", 3, 2), ("fused", 2, 1),
                                                                          ("legacy", 3, 2)]
    for c in cases:
        per_frame = 2 * 3  # latent 4x6 -> 2x3 tokens per frame
        assert c["sizes"] == ([2 * per_frame, per_frame] if c["frames"] == 3 else [per_frame, per_frame])
        assert c["output"] < 1e-6 and c["loss"] < 1e-6 * c["loss_value"], c
        assert c["grad"] < 1e-5, c  # relative to the largest gradient entry
        assert c["before_reduction"] > 1e-3, c  # each process alone holds only its frames' share
        assert c["without_grad"] == []


@pytest.mark.slow
def test_sequence_parallel_fit_matches_one_process(tmp_path: Path):
    data = make_cache(tmp_path / "cache", 4)
    common = dict(max_steps=4, save_every=2, export_at_end=True, two_person_prob=0.5, seed=5)
    whole = write_config(tmp_path / "whole.toml", data, tmp_path / "whole", **common)
    split = write_config(tmp_path / "split.toml", data, tmp_path / "split", sequence_parallel=2, **common)
    _torchrun(1, whole)
    result = _torchrun(2, split)
    assert "part 1 of 2 of data-parallel rank 0 of 1" in result.stderr
    assert "part 2 of 2 of data-parallel rank 0 of 1" in result.stderr
    a, b = read_losses(tmp_path / "whole"), read_losses(tmp_path / "split")
    assert list(a) == list(b) == [1, 2, 3, 4]
    assert [b[s] for s in b] == pytest.approx([a[s] for s in a], rel=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert {r["two_person"] for r in rows} == {True, False}  # both kinds of batch were split
    # AdamW normalises each gradient entry: on the attention key biases, whose exact gradient is 0 (softmax
    # ignores a shift of all scores), rounding-level differences become steps of up to lr x 1e-2 (2e-5)
    assert _same_export(tmp_path / "whole" / "anytalker_dit.safetensors",
                        tmp_path / "split" / "anytalker_dit.safetensors") < 3e-4
