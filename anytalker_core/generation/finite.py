"""Stop a run at the first stage whose output holds NaN or infinite values, naming that stage.

A NaN weight (a corrupt or mis-converted file) or an fp16 overflow otherwise flows on silently and
ends as an all-black video with exit code 0. Each check is one ``isfinite`` reduction over a stage's
output, negligible next to the stage itself.
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteError
from ..input_names import name

__all__ = ["check_finite"]


def check_finite(tensor: torch.Tensor, stage: str, model: str) -> torch.Tensor:
    """Return ``tensor``, or raise :class:`NonFiniteError`: "``stage``: ``model`` produced NaN/inf values"."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"{stage}: the {model} produced NaN or infinite values (corrupt or mis-converted "
                             f"weights, or an fp16 overflow: try a {name('dtype')} of bfloat16 or float32)")
    return tensor
