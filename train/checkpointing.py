"""Run checkpoints: atomic saves, exact resume, and export to the inference format.

Layout of a run folder::

    RUN/
      model_config.json           AnyTalkerConfig of the trained DiT
      train_config.json           the resolved TrainConfig (for the record)
      metrics.jsonl               one line per optimiser step (loss, lr, ...)
      checkpoints/
        step-00000500/            accelerate state (model, optimiser, LR scheduler, RNG of every rank),
                                  or under FSDP2 dcp/ (sharded model + optimiser) and scheduler.pt
          trainer_state.json      step, data position (epoch, batch), sampler seed; written LAST
          model_config.json
        latest                    name of the newest complete checkpoint

A checkpoint is written into ``checkpoints/.tmp-step-…`` by every process and renamed into place by
the main process only after all of them finished, and ``latest`` is replaced atomically afterwards, so
a crash at any moment leaves either the old or the new checkpoint — never a half-written one.
:func:`find_latest` also refuses folders without ``trainer_state.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

from anytalker_core.errors import CheckpointError
from anytalker_core.io.atomic import write_json_atomic, write_text_atomic
from anytalker_core.io.weights import read_weights

log = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "find_latest", "load_trainer_state", "read_model_state_dict", "export_checkpoint",
           "write_json_atomic", "CHECKPOINTS", "STATE_FILE", "MODEL_CONFIG_FILE"]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_CONFIG_FILE = "model_config.json"
LATEST = "latest"
_STEP_RE = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(accelerator, run_dir: Path, step: int, trainer_state: dict, model_config: dict,
                    keep: int = 3, save_state: Callable[[Path], None] | None = None) -> Path:
    """Save the full training state of every process for ``step``; returns the checkpoint folder.

    Must be called by all processes. ``save_state(folder)`` writes the model/optimiser state (every
    process; default: accelerate's ``save_state``, which gathers or shards inside).
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    if save_state is None:
        accelerator.save_state(str(tmp))
    else:
        save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / MODEL_CONFIG_FILE, model_config)
        write_json_atomic(tmp / STATE_FILE, trainer_state)  # the completion marker, written last
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
            old = root / f".old-{checkpoint_name(step)}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        write_text_atomic(root / LATEST, final.name + "\n")
        _prune(root, keep)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for _, path in _complete_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (``None`` if there is none)."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
        log.warning("%s points to %s, which is incomplete or missing; scanning for checkpoints", pointer, candidate)
    complete = _complete_checkpoints(root)
    return complete[-1][1] if complete else None


def load_trainer_state(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint '{checkpoint}': {STATE_FILE} is missing or unreadable ({exc})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (→ its newest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir():
        latest = find_latest(path)
        if latest is not None:
            return latest
    raise CheckpointError(f"'{path}' is neither a training checkpoint (a folder with {STATE_FILE}) nor a run "
                          f"folder with complete checkpoints under {CHECKPOINTS}/")


def read_model_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The DiT weights of a checkpoint: ours under FSDP2 (``dcp/``), accelerate's under DDP, FSDP or DeepSpeed."""
    ckpt = Path(checkpoint)
    from .parallel import DCP_FOLDER, read_dcp_model

    if (ckpt / DCP_FOLDER).is_dir():  # FSDP2 (parallel = "fsdp2"): torch.distributed.checkpoint shards
        return read_dcp_model(ckpt)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (ckpt / name).is_file():
            return read_weights(ckpt / name, "model weights")[0]
    fsdp = sorted(ckpt.glob("pytorch_model_fsdp_0*"))
    if fsdp:  # sharded FSDP state: consolidate with accelerate's merger
        import tempfile

        from accelerate.utils import merge_fsdp_weights
        from safetensors.torch import load_file

        with tempfile.TemporaryDirectory() as tmp:
            merge_fsdp_weights(str(fsdp[0]), tmp, safe_serialization=True)
            return load_file(str(Path(tmp) / "model.safetensors"))
    if (ckpt / "pytorch_model").is_dir():  # DeepSpeed ZeRO engine checkpoint
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError:
            raise CheckpointError(f"checkpoint '{ckpt}' is a DeepSpeed checkpoint; install deepspeed to export it") from None
        # accelerate saves the engine with tag "pytorch_model" inside the checkpoint folder
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="pytorch_model")
    raise CheckpointError(f"checkpoint '{ckpt}' holds no model weights (model.safetensors, pytorch_model.bin, "
                          "dcp/, pytorch_model_fsdp_0/ or a DeepSpeed pytorch_model/ folder)")


def export_checkpoint(source: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint's DiT in the inference format (``save_dit``: .safetensors + config)."""
    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    out = Path(out)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"export: output '{out}' must end in .safetensors")
    ckpt = resolve_checkpoint(source)
    cfg_path = ckpt / MODEL_CONFIG_FILE
    try:
        config = AnyTalkerConfig.from_dict(json.loads(cfg_path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint '{ckpt}': {MODEL_CONFIG_FILE} is missing or unreadable ({exc})") from None
    sd = read_model_state_dict(ckpt)
    with torch.device("meta"):
        model = AnyTalkerDiT(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{ckpt}': weights do not match the saved model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    save_dit(model, out, dtype=dtype)
    log.info("exported %s -> %s", ckpt, out)
    return out
