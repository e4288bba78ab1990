"""Sequence parallelism (train/sequence_parallel.py) on CPU with ``torchrun --nproc_per_node 2`` (gloo).

* the tiny DiT (fused and legacy AFCA, 1 and 2 identities, an uneven 2 + 1 frame split, gradient
  checkpointing) gives the same output, loss and gradients with its tokens split over two processes as
  run whole;
* ``fit`` with ``sequence_parallel = 2`` on two processes gives the loss curve and the exported weights of
  the same run on one process (stage 1: single- and two-person batches; also with ``parallel = "fsdp2"``), reading tar shards whose index
  the main process read once; the run then resumes on one process with more data.
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
from train.shards import pack_folder


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


def _init_file(folder: Path) -> Path:
    import torch

    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    torch.manual_seed(0)
    return save_dit(AnyTalkerDiT(AnyTalkerConfig.tiny()), folder / "init.safetensors")


def _from(init: Path, config: Path) -> Path:
    config.write_text(config.read_text().replace("tiny = true", f'init_checkpoint = "{init}"'))
    return config


@pytest.mark.slow
def test_sequence_parallel_fit_matches_one_process(tmp_path: Path):
    data = make_cache(tmp_path / "cache", 4)
    pack_folder(data)  # train from tar shards
    common = dict(max_steps=4, save_every=2, export_at_end=True, two_person_prob=0.5, seed=5)
    init = _init_file(tmp_path)  # one set of initial weights for DDP and FSDP2 (which draws fresh ones per shard)
    whole = _from(init, write_config(tmp_path / "whole.toml", data, tmp_path / "whole", **common))
    split = _from(init, write_config(tmp_path / "split.toml", data, tmp_path / "split", sequence_parallel=2,
                                     **common))
    _torchrun(1, whole)
    result = _torchrun(2, split)
    assert "cache index: 4 samples read by the main process, sent to 2 processes" in result.stderr
    assert "memory model per GPU (estimate, ddp, 2 process(es), sequence_parallel 2, largest bucket 5x64x64)" in \
        result.stderr  # printed before the first step
    assert "part 1 of 2 of data-parallel rank 0 of 1" in result.stderr
    assert "part 2 of 2 of data-parallel rank 0 of 1" in result.stderr
    a, b = read_losses(tmp_path / "whole"), read_losses(tmp_path / "split")
    assert list(a) == list(b) == [1, 2, 3, 4]
    assert [b[s] for s in b] == pytest.approx([a[s] for s in a], rel=1e-5)
    # the same with the weights sharded by FSDP2 over the two processes of the sequence-parallel group
    sharded = _from(init, write_config(tmp_path / "fsdp2.toml", data, tmp_path / "fsdp2", sequence_parallel=2,
                                       parallel="fsdp2", **common))
    _torchrun(2, sharded)
    c = read_losses(tmp_path / "fsdp2")
    assert [c[s] for s in c] == pytest.approx([a[s] for s in a], rel=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert {r["two_person"] for r in rows} == {True, False}  # both kinds of batch were split
    # AdamW normalises each gradient entry: on the attention key biases, whose exact gradient is 0 (softmax
    # ignores a shift of all scores), rounding-level differences become steps of up to lr x 1e-2 (2e-5)
    assert _same_export(tmp_path / "whole" / "anytalker_dit.safetensors",
                        tmp_path / "split" / "anytalker_dit.safetensors") < 3e-4

    # resume the split run on ONE process without sequence parallelism and with two more samples
    more = make_cache(tmp_path / "more", 2, seed=1)
    text = split.read_text().replace(f'data = ["{data}"]', f'data = ["{data}", "{more}"]')
    split.write_text(text.replace("sequence_parallel = 2", "sequence_parallel = 1"))
    resumed = _torchrun(1, split, "--max-steps", "6")
    assert "resumed from" in resumed.stderr
    assert "the data changed since the checkpoint (4 -> 6 samples): continuing with epoch 1" in resumed.stderr
    b = read_losses(tmp_path / "split")
    assert list(b) == [1, 2, 3, 4, 5, 6] and all(0 < b[s] < 10 for s in (5, 6))
