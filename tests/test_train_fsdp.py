"""FSDP2 that really shards, on CPU: ``torchrun --nproc_per_node 2`` (gloo) against the DDP run.

Both runs start from the same init file; FSDP2 must give the DDP loss curve, hold half the parameters
per rank, write sharded (DCP) checkpoints that export to the DDP run's ``.safetensors``, and resume on
a different number of processes exactly where the DDP run (also resumed on one process) continues.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from test_train_fit import make_cache, read_losses, write_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, config: Path, *extra: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), "-m", "train.cli", "fit", str(config), *extra]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _config(tmp: Path, name: str, data: Path, init: Path, parallel: str) -> Path:
    path = write_config(tmp / f"{name}.toml", data, tmp / name, max_steps=4, save_every=2, export_at_end=True,
                        parallel=parallel, two_person_prob=0.5, mixed_precision="no")
    text = path.read_text().replace("tiny = true", f'init_checkpoint = "{init}"')
    path.write_text(text)
    return path


def test_fsdp2_shards_matches_ddp_and_resumes_on_another_world_size(tmp_path: Path):
    from safetensors.torch import load_file

    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    torch.manual_seed(0)
    init = save_dit(AnyTalkerDiT(AnyTalkerConfig.tiny()), tmp_path / "init.safetensors")
    total = sum(p.numel() for p in AnyTalkerDiT(AnyTalkerConfig.tiny()).parameters())
    data = make_cache(tmp_path / "cache", 8)
    ddp_cfg, fsdp_cfg = (_config(tmp_path, n, data, init, n) for n in ("ddp", "fsdp2"))

    _torchrun(2, ddp_cfg)
    fsdp = _torchrun(2, fsdp_cfg)

    # really sharded: each rank holds about half the parameters, together all of them
    held = {int(r): (int(n), int(t)) for r, n, t in
            re.findall(r"FSDP2: rank (\d) of 2 holds (\d+) of (\d+) parameters", fsdp.stderr)}
    assert sorted(held) == [0, 1] and {t for _, t in held.values()} == {total}
    assert sum(n for n, _ in held.values()) == total
    assert all(0.4 * total < n < 0.6 * total for n, _ in held.values())
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "step-00000004"
    shards = sorted(p.name for p in (ckpt / "dcp").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard
    assert not (ckpt / "model.safetensors").exists()

    # the same loss curve and the same exported weights as DDP
    ddp_losses, fsdp_losses = read_losses(tmp_path / "ddp"), read_losses(tmp_path / "fsdp2")
    assert list(fsdp_losses) == [1, 2, 3, 4]
    assert [fsdp_losses[s] for s in fsdp_losses] == pytest.approx([ddp_losses[s] for s in fsdp_losses], rel=1e-5)
    a, b = load_file(tmp_path / "ddp" / "anytalker_dit.safetensors"), load_file(tmp_path / "fsdp2" / "anytalker_dit.safetensors")
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert max((a[k] - load_file(init)[k]).abs().max().item() for k in a) > 1e-3  # training moved the weights

    # resume both runs on ONE process: DCP reshards the FSDP2 state, the sampler maps the data position;
    # the continued curves agree
    fsdp_resumed = _torchrun(1, fsdp_cfg, "--max-steps", "6")
    assert "resumed from" in fsdp_resumed.stderr and "process count changed 2 -> 1" in fsdp_resumed.stderr
    assert "FSDP2: rank 0 of 1 holds %d of %d parameters" % (total, total) in fsdp_resumed.stderr
    _torchrun(1, ddp_cfg, "--max-steps", "6")
    ddp_losses, fsdp_losses = read_losses(tmp_path / "ddp"), read_losses(tmp_path / "fsdp2")
    assert list(fsdp_losses) == [1, 2, 3, 4, 5, 6]
    assert [fsdp_losses[s] for s in (5, 6)] == pytest.approx([ddp_losses[s] for s in (5, 6)], rel=1e-5)
    state = json.loads((tmp_path / "fsdp2" / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["step"] == 6
