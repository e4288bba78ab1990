"""Parity runner for the ``scheduler`` fixture group: solver set-up and the guided sampling loop.

For every ``settings`` entry (steps, shift) and each solver (``unipc``, ``dpmpp``) it builds this
project's scheduler with :func:`anytalker_core.sampling.make_scheduler`, compares timesteps (exact),
sigmas and (DPM++) the input sigmas, then runs :func:`anytalker_core.sampling.sample` with the
fixture's fake model (``v(x, t) = 0.3x + 0.01 t/1000``, uncond ``= 0.5 v``, ``guide_scale`` from the
json) from the stored noise and compares the final latent and the whole trajectory.
"""

from __future__ import annotations

import re

import torch

from . import Comparison, Fixture, compare, compare_exact
from ..sampling import COND, UNCOND, Guidance, make_scheduler, per_branch, sample

#: golden tensors read as inputs (the initial latent)
INPUTS = ("noise",)

SOLVERS = ("unipc", "dpmpp")
_DEFAULTS = {"sigmas": (1e-7, 0.0), "final/trajectory": (1e-5, 1e-5)}
_INPUT_SIGMAS_TOL = (1e-12, 0.0)  # float64 values computed the same way


def _tolerance(fixture: Fixture, key: str) -> tuple[float, float]:
    """(atol, rtol) from the json's prose tolerance (e.g. ``"atol 1e-7 (float32)"``)."""
    atol, rtol = _DEFAULTS[key]
    text = str(fixture.meta.get("tolerance", {}).get(key, ""))
    found_a = re.search(r"atol\s*([0-9.eE+-]+)", text)
    found_r = re.search(r"rtol\s*([0-9.eE+-]+)", text)
    if found_a:
        atol = float(found_a.group(1))
    if found_r:
        rtol = float(found_r.group(1))
    return atol, rtol


def _tag(steps: int, shift: float) -> str:
    return f"s{steps}_sh{str(float(shift)).replace('.', 'p')}"


def _fake_model(latent: torch.Tensor, t: torch.Tensor, branch: str) -> torch.Tensor:
    """The fixture's model: ``v = 0.3x + 0.01 t/1000`` (float32); the uncond branch is ``0.5 v``."""
    v = 0.3 * latent + 0.01 * (t.float() / 1000)
    if branch == COND:
        return v
    if branch == UNCOND:
        return 0.5 * v
    raise ValueError(f"the scheduler fixture's fake model has no branch '{branch}'")


def run(fixture: Fixture) -> list[Comparison]:
    tensors = fixture.tensors
    sigma_tol = _tolerance(fixture, "sigmas")
    latent_tol = _tolerance(fixture, "final/trajectory")
    guidance = Guidance(text_scale=float(fixture.meta["guide_scale"]))
    noise = tensors["noise"]
    out: list[Comparison] = []
    for setting in fixture.meta["settings"]:
        steps, shift = int(setting["steps"]), float(setting["shift"])
        for solver in SOLVERS:
            name = f"{solver}_{_tag(steps, shift)}"
            scheduler = make_scheduler(solver, steps, shift)
            out.append(compare_exact(f"{name}_timesteps", scheduler.timesteps, tensors[f"{name}_timesteps"]))
            out.append(compare(f"{name}_sigmas", scheduler.sigmas, tensors[f"{name}_sigmas"], *sigma_tol))
            key = f"{name}_input_sigmas"
            if key in tensors:
                out.append(compare(key, torch.from_numpy(scheduler.input_sigmas), tensors[key], *_INPUT_SIGMAS_TOL))

            trajectory: list[torch.Tensor] = []
            final = sample(per_branch(_fake_model), noise, scheduler, guidance,
                           on_step=lambda _i, latent: trajectory.append(latent.clone()))
            out.append(compare(f"{name}_final", final, tensors[f"{name}_final"], *latent_tol))
            out.append(compare(f"{name}_trajectory", torch.stack(trajectory), tensors[f"{name}_trajectory"],
                               *latent_tol))
    return out
