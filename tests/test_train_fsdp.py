"""Sharded training on CPU: ``torchrun --nproc_per_node 2`` (gloo), FSDP2 and DeepSpeed ZeRO-2/3 against DDP.

Every run starts from the same init file. FSDP2 must give the DDP loss curve, hold half the
parameters per rank, write sharded (DCP) checkpoints that export to the DDP run's ``.safetensors``,
and resume on a different number of processes exactly where the DDP run (also resumed on one
process) continues. DeepSpeed ZeRO-2 and ZeRO-3 (through accelerate, DeepSpeed's CPU accelerator)
must give the DDP loss curve and export the same weights.
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


def _config(tmp: Path, name: str, data: Path, init: Path, parallel: str, **extra) -> Path:
    # single-person batches: ZeRO-3 needs the same identity count on every rank (see the trainer's check);
    # two-person batches under several processes are trained in test_train_distributed.py
    settings = dict(max_steps=4, save_every=2, export_at_end=True, parallel=parallel, two_person_prob=0.0,
                    mixed_precision="no")
    settings.update(extra)
    path = write_config(tmp / f"{name}.toml", data, tmp / name, **settings)
    text = path.read_text().replace("tiny = true", f'init_checkpoint = "{init}"')
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, Path, int]:
    """(folder, cache, init file, parameter count) with a finished 2-process DDP run in folder/ddp."""
    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    tmp = tmp_path_factory.mktemp("sharded")
    torch.manual_seed(0)
    model = AnyTalkerDiT(AnyTalkerConfig.tiny())
    init = save_dit(model, tmp / "init.safetensors")
    data = make_cache(tmp / "cache", 8)
    _torchrun(2, _config(tmp, "ddp", data, init, "ddp"))
    return tmp, data, init, sum(p.numel() for p in model.parameters())


def _same_export(a_path: Path, b_path: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_fsdp2_shards_matches_ddp_and_resumes_on_another_world_size(reference):

    tmp_path, data, init, total = reference
    ddp_cfg, fsdp_cfg = tmp_path / "ddp.toml", _config(tmp_path, "fsdp2", data, init, "fsdp2")
    fsdp = _torchrun(2, fsdp_cfg)

    # really sharded: each rank holds about half the parameters, together all of them
    held = {int(r): (int(n), int(t)) for r, n, t in
            re.findall(r"FSDP2: rank (\d) of 2 holds (\d+) of (\d+) parameters", fsdp.stderr)}
    assert sorted(held) == [0, 1] and {t for _, t in held.values()} == {total}
    assert sum(n for n, _ in held.values()) == total
    assert all(0.4 * total < n < 0.6 * total for n, _ in held.values())
    assert held[0][0] == 45632 and held[1][0] == 45184  # torch.chunk of each tensor's rows (docs/training.md)
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "step-00000004"
    shards = sorted(p.name for p in (ckpt / "dcp").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard
    assert not (ckpt / "model.safetensors").exists()

    # the same loss curve and the same exported weights as DDP
    ddp_losses, fsdp_losses = read_losses(tmp_path / "ddp"), read_losses(tmp_path / "fsdp2")
    assert list(fsdp_losses) == [1, 2, 3, 4]
    assert [fsdp_losses[s] for s in fsdp_losses] == pytest.approx([ddp_losses[s] for s in fsdp_losses], rel=1e-5)
    assert _same_export(tmp_path / "ddp" / "anytalker_dit.safetensors", tmp_path / "fsdp2" / "anytalker_dit.safetensors") < 1e-4
    assert _same_export(tmp_path / "ddp" / "anytalker_dit.safetensors", init) > 1e-3  # training moved the weights

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


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_ddp(reference, stage: int):
    pytest.importorskip("deepspeed")
    tmp_path, data, init, _ = reference
    name = f"zero{stage}"
    config = _config(tmp_path, name, data, init, "deepspeed", zero_stage=stage)
    result = _torchrun(2, config)
    assert result.stderr.count("on 2 process(es)") == 2
    ckpt = tmp_path / name / "checkpoints" / "step-00000004"
    assert (ckpt / "pytorch_model").is_dir()  # DeepSpeed's own (partitioned) checkpoint
    ddp_losses, ds_losses = read_losses(tmp_path / "ddp"), read_losses(tmp_path / name)
    assert list(ds_losses) == [1, 2, 3, 4]
    assert [ds_losses[s] for s in ds_losses] == pytest.approx([ddp_losses[s] for s in ds_losses], rel=1e-4)
    from train.checkpointing import export_checkpoint

    ddp_step4 = export_checkpoint(tmp_path / "ddp" / "checkpoints" / "step-00000004", tmp_path / f"ddp4_{name}.safetensors")
    assert _same_export(ddp_step4, tmp_path / name / "anytalker_dit.safetensors") < 1e-4


def test_zero3_refuses_two_person_batches(tmp_path: Path):
    from anytalker_core.errors import InputError
    from train.config import load_toml

    data = make_cache(tmp_path / "cache", 2)
    with pytest.raises(InputError, match="zero_stage = 3 cannot train stage 1's two-person batches.*fsdp2"):
        load_toml(write_config(tmp_path / "z3.toml", data, tmp_path / "run", parallel="deepspeed", zero_stage=3,
                               two_person_prob=0.5), "fit")
