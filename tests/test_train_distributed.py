"""A real two-process run: ``torchrun --nproc_per_node 2`` (gloo on CPU), then a distributed resume.

(``accelerate launch --cpu --num_processes 2`` would silently run a single process here, so the
launcher is torchrun; the trainer asks accelerate for its CPU multi-process mode when no GPU exists.)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from test_train_fit import make_cache, write_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config: Path, *extra: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "train.cli", "fit", str(config), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_two_process_training_and_resume(tmp_path: Path):
    from anytalker_core.model.checkpoint import load_dit
    from train.checkpointing import find_latest

    data = make_cache(tmp_path / "cache", 6)
    run = tmp_path / "run"
    config = write_config(tmp_path / "ddp.toml", data, run, max_steps=4, save_every=2, export_at_end=True,
                          mixed_precision="bf16")
    result = _torchrun(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("on 2 process(es)") == 2  # both ranks joined one process group
    ckpt = find_latest(run)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 2
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    model = load_dit(run / "anytalker_dit.safetensors")  # rank 0 exported the DDP-trained weights
    assert model.config.num_layers == 2

    # a second launch resumes both ranks from step 4 and trains to 6
    result = _torchrun(config, "--max-steps", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "step 4" in result.stderr
    assert json.loads((find_latest(run) / "trainer_state.json").read_text())["step"] == 6
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
