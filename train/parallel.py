"""FSDP2 for the trainer: torch.distributed's ``fully_shard`` applied directly (CPU/gloo and GPU/NCCL alike).

* :func:`build_sharded_model` builds the DiT on the **meta device** (no memory), shards every
  transformer block and then the root with ``fully_shard`` (parameters, gradients and AdamW state
  are split over the ranks along dim 0), allocates only this rank's shards, and fills them:
  tensors of ``init_checkpoint`` are read one at a time (a ``.safetensors`` file through
  ``safe_open``, a ``.pth`` memory-mapped) and only this rank's rows are kept; tensors the checkpoint
  lacks (e.g. fresh AFCA layers on Wan2.1 weights) get PyTorch's default initialisation drawn on the
  shard. No rank ever holds the whole fp32 model: the peak is one full tensor of the checkpoint.
* :func:`save_sharded` / :func:`load_sharded`: ``torch.distributed.checkpoint`` (DCP) of model and
  optimiser, every rank writing its own shards into ``CHECKPOINT/dcp/``; loading reshards, so a run
  may resume on a different number of processes.
* :func:`read_dcp_model` merges a DCP checkpoint's model into one state dict (a single process, no
  process group) for ``anytalker-train export``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterator

import torch

from anytalker_core.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

__all__ = ["build_sharded_model", "shard_sizes", "save_sharded", "load_sharded", "read_dcp_model", "DCP_FOLDER",
           "checkpoint_tensors", "shape_problems", "ensure_process_group"]

DCP_FOLDER = "dcp"


def ensure_process_group(run_dir: Path) -> None:
    """A process group for ``fully_shard``/DCP even when launched as one plain process (world size 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    store = run_dir / ".fsdp_store"
    store.unlink(missing_ok=True)
    dist.init_process_group("gloo", store=dist.FileStore(str(store), 1), rank=0, world_size=1)


# ----------------------------------------------------------------------------------- checkpoint tensors


def checkpoint_tensors(path: str | Path) -> tuple[dict[str, torch.Size], Callable[[str], torch.Tensor]]:
    """The tensor names/shapes of a DiT checkpoint and a reader of one tensor at a time.

    ``.safetensors`` are read tensor by tensor (``safe_open``); ``.pth`` files are memory-mapped
    (:func:`anytalker_core.model.checkpoint.read_state_dict`), so untouched tensors cost no memory.
    The wrapper prefixes of released files (``model.``, ``module.``, ...) are stripped as at inference.
    """
    from anytalker_core.model.checkpoint import _PREFIXES, read_state_dict

    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                names = list(fh.keys())
                shapes = {k: torch.Size(fh.get_slice(k).get_shape()) for k in names}
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"init_checkpoint '{path}': not a valid safetensors file ({exc})") from None
        prefix = next((p for p in _PREFIXES if names and all(k.startswith(p) for k in names)), "")

        def read(name: str) -> torch.Tensor:
            with safe_open(str(path), framework="pt") as fh:
                return fh.get_tensor(prefix + name)

        return {k[len(prefix):]: s for k, s in shapes.items()}, read
    sd, _ = read_state_dict(path)
    return {k: v.shape for k, v in sd.items()}, lambda name: sd[name]


def shape_problems(expected: dict[str, torch.Size], found: dict[str, torch.Size]) -> list[str]:
    """``name (checkpoint shape) vs (model shape)`` for every tensor present in both with other shapes."""
    return [f"{k} {tuple(found[k])} vs model {tuple(v)}" for k, v in expected.items()
            if k in found and tuple(found[k]) != tuple(v)]


def raise_on_shape_problems(problems: list[str], path: str | Path) -> None:
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems) - 6} more)" if len(problems) > 6 else "")
        raise InputError(f"config [model] init_checkpoint '{path}': {len(problems)} tensor(s) have the model's "
                         f"names but other shapes ({shown}); the checkpoint is for a different model size — "
                         "set [model] config_json to the matching config (or use the matching checkpoint)")


# ----------------------------------------------------------------------------------- sharded model


def _local_rows(full: torch.Tensor, param) -> torch.Tensor:
    """This rank's part of ``full`` for the sharded parameter ``param`` (a DTensor), without communication."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()


def _init_rule(module: torch.nn.Module, name: str, shape: torch.Size) -> Callable[[torch.Tensor, torch.Generator], None]:
    """PyTorch's default initialisation of ``module``'s parameter ``name`` (global ``shape``), drawn on a shard."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else None
    if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        weight_fan_in = math.prod(module.weight.shape[1:])
        bound = 1.0 / math.sqrt(weight_fan_in)  # kaiming_uniform(a=√5) of the weight, and the bias rule
        return lambda t, g: t.uniform_(-bound, bound, generator=g)
    if name == "modulation":  # Block / Head: randn / √dim
        return lambda t, g: t.normal_(0.0, 1.0 / math.sqrt(shape[-1]), generator=g)
    if name == "weight" and fan_in is None:  # norms
        return lambda t, g: t.fill_(1.0)
    if name == "bias" and fan_in is None:
        return lambda t, g: t.fill_(0.0)
    raise InputError(f"no initialisation rule for {type(module).__name__}.{name} {tuple(shape)}; it must come from "
                     "[model] init_checkpoint")


def _named_params_with_modules(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, str, torch.nn.Parameter]]:
    for mod_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            yield (f"{mod_name}.{name}" if mod_name else name), module, name, param


def build_sharded_model(config, init_checkpoint: str, seed: int, device: torch.device, gradient_checkpointing: bool,
                        reshard_after_forward: bool = True):
    """The DiT sharded with FSDP2 over the default process group (see the module docstring)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from anytalker_core.model.dit import AnyTalkerDiT

    with torch.device("meta"):
        model = AnyTalkerDiT(config)
    for block in model.blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    model.to_empty(device=device)
    expected = {name: p.shape for name, p in model.named_parameters()}
    found, read = checkpoint_tensors(init_checkpoint) if init_checkpoint else ({}, None)
    raise_on_shape_problems(shape_problems(expected, found), init_checkpoint)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + dist.get_rank())
    loaded = fresh = 0
    with torch.no_grad():
        for full_name, module, name, param in _named_params_with_modules(model):
            local = param.to_local()
            if full_name in found:
                local.copy_(_local_rows(read(full_name).to(torch.float32), param).to(local.device))
                loaded += 1
            else:
                rule = _init_rule(module, name, param.shape)
                shard = torch.empty(local.shape, dtype=torch.float32)
                rule(shard, generator)
                local.copy_(shard.to(local.device))
                fresh += 1
    unused = len(set(found) - set(expected))
    if init_checkpoint:
        log.info("initialised from %s (sharded read): %d tensors loaded, %d new (random), %d ignored",
                 init_checkpoint, loaded, fresh, unused)
    model.float().train().requires_grad_(True)
    model.enable_gradient_checkpointing(gradient_checkpointing)
    return model


def shard_sizes(model: torch.nn.Module) -> tuple[int, int]:
    """``(parameters held by this rank, parameters of the whole model)``."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return local, sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------- checkpoints


def save_sharded(model, optimizer, folder: Path) -> None:
    """Every rank writes its shards of model and optimiser into ``folder/dcp`` (all ranks must call)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / DCP_FOLDER))


def load_sharded(model, optimizer, folder: Path) -> None:
    """Load ``folder/dcp`` into the (sharded or whole) model and optimiser; resharding as needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(folder / DCP_FOLDER))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def read_dcp_model(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model state dict of a DCP checkpoint (one process, no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(folder) / DCP_FOLDER
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"sharded checkpoint '{path}' has no readable metadata ({exc})") from None
    target = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata):
            target[key[len("model."):]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not target:
        raise CheckpointError(f"sharded checkpoint '{path}' holds no model tensors")
    state = {"model": target}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return state["model"]
