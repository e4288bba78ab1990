"""Flow-matching schedulers set up exactly as the AnyTalker reference does.

Flow matching convention (Wan2.1): a latent at noise level ``sigma`` is
``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model predicts the velocity
``v = noise - x0``, so ``x0 = x_sigma - sigma * v``. A timestep is ``sigma * 1000`` truncated to int64.

Three solvers, one interface (:class:`FlowScheduler`):

* ``unipc`` (the reference's default) — diffusers ``UniPCMultistepScheduler`` (flow sigmas,
  ``flow_prediction``, ``predict_x0``, ``bh2``, order 2, ``lower_order_final``, final sigma zero).
  The reference builds its UniPC with ``shift=5`` (which only fixes the top of its 1000-step training
  table, ``sigma_max = 5s/(1+4s)`` with ``s = 1 - 1/1000`` in float32, about 0.99980) and then shifts
  again by ``shift`` in ``set_timesteps``. So the sigmas are ``shift(linspace(sigma_max, 0, steps+1)[:-1])``
  plus a final 0, and the first timestep is 999.
* ``dpmpp`` — diffusers ``DPMSolverMultistepScheduler`` (``dpmsolver++``, midpoint, order 2, flow sigmas)
  with its sigmas/timesteps replaced by ``shift(linspace(1, 0, steps+1)[:steps])`` plus a final 0; it
  starts at sigma 1, timestep 1000.
* ``euler`` — plain first-order flow-matching Euler, ``x <- x + (sigma_next - sigma) * v``, on the same
  sigmas as ``dpmpp`` (starts from pure noise at sigma 1). Not in the reference; exact for straight paths.

``shift(s) = shift * s / (1 + (shift - 1) * s)`` is the Wan/SD3 time shift. diffusers is imported only
when a ``unipc``/``dpmpp`` scheduler is built.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable

import numpy as np
import torch

from ..constants import MAX_AREA
from ..errors import InputError

log = logging.getLogger(__name__)

SOLVERS: tuple[str, ...] = ("unipc", "dpmpp", "euler")
DEFAULT_SOLVER = "unipc"
NUM_TRAIN_TIMESTEPS = 1000
# The reference constructs its UniPC scheduler with this shift; it only sets sigma_max (see module doc).
_UNIPC_CONSTRUCTOR_SHIFT = 5
# default_shift(): 3.0 up to this pixel area (832x480), 5.0 above it.
SHIFT_480P_AREA = MAX_AREA
_ALIASES = {"dpm++": "dpmpp", "dpm_pp": "dpmpp", "dpmsolver++": "dpmpp", "uni_pc": "unipc"}


def default_shift(height: int, width: int) -> float:
    """The reference's shift for a video size: 3.0 at 480p area (``h*w <= 832*480``), 5.0 above.

    (The reference keys it on the ``--size`` preset: 3.0 for 832*480 / 480*832, 5.0 otherwise —
    including its 512*512 preset; here every size up to 480p area gets 3.0.)
    """
    if height <= 0 or width <= 0:
        raise InputError(f"default_shift: height and width must be positive, got {height}x{width}")
    return 3.0 if height * width <= SHIFT_480P_AREA else 5.0


def time_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """``shift * s / (1 + (shift - 1) * s)`` elementwise (float64, the reference's expression order)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unipc_sigma_max() -> float:
    """The top of the reference UniPC's training table: ``5s/(1+4s)``, ``s = 1 - 1/1000``, in float32.

    The reference computes ``1 - linspace(1, 1/1000, 1000)[::-1]`` in float64, casts it to a float32
    tensor and shifts it by 5 in float32; its first entry is this value (about 0.99980).
    """
    s = torch.tensor(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float64).to(torch.float32)
    shift = _UNIPC_CONSTRUCTOR_SHIFT
    return float((shift * s / (1 + (shift - 1) * s)).item())


def unipc_base_sigmas(steps: int) -> np.ndarray:
    """float64 ``[steps]`` unshifted sigmas the reference UniPC starts from: ``linspace(sigma_max, 0)``."""
    return np.linspace(unipc_sigma_max(), 0.0, steps + 1).copy()[:-1]


def flow_sigmas(steps: int, shift: float) -> np.ndarray:
    """float64 ``[steps]`` sigmas ``shift(linspace(1, 0, steps+1)[:steps])`` (the reference's
    ``get_sampling_sigmas``), used by ``dpmpp`` and ``euler``."""
    return time_shift(np.linspace(1, 0, steps + 1)[:steps], shift)


def _with_final_zero(sigmas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 sigmas ``[steps]`` -> (int64 timesteps ``[steps]``, float32 sigmas ``[steps+1]``)."""
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    full = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    return timesteps, full


def validate(name: str, steps: int, shift: float) -> str:
    """Check solver settings; returns the canonical solver name. Raises :class:`InputError`."""
    if not isinstance(name, str):
        raise InputError(f"sampler: solver must be a name ({', '.join(SOLVERS)}), got {name!r}")
    canonical = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if canonical not in SOLVERS:
        raise InputError(f"sampler: unknown solver '{name}'; choose one of: {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"sampler: steps must be an integer >= 1, got {steps!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise InputError(f"sampler: shift must be a finite number > 0, got {shift!r}")
    return canonical


class FlowScheduler:
    """One solver, set up for ``steps`` steps.

    Attributes:
        name: ``"unipc"`` | ``"dpmpp"`` | ``"euler"``.
        steps, shift: the settings it was built with.
        timesteps: int64 ``[steps]`` — pass each, in order, to the model and to :meth:`step`.
        sigmas: float32 ``[steps+1]`` — noise level before each step; the last entry is 0.

    Solvers are multistep and keep state: call :meth:`step` once per timestep, in order; :meth:`reset`
    starts a new run (:func:`~anytalker_core.sampling.sampler.sample` calls it).
    """

    name: str
    steps: int
    shift: float
    timesteps: torch.Tensor
    sigmas: torch.Tensor

    def reset(self) -> None:
        raise NotImplementedError

    def step(self, velocity: torch.Tensor, t: torch.Tensor | int, latent: torch.Tensor) -> torch.Tensor:
        """One solver step: the latent at the next (lower) noise level, same shape as ``latent``.

        ``velocity`` is the (guided) model prediction ``noise - x0`` at timestep ``t``.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, steps={self.steps}, shift={self.shift})"


class DiffusersFlowScheduler(FlowScheduler):
    """A diffusers multistep solver (UniPC or DPM++) configured as the reference."""

    def __init__(self, name: str, steps: int, shift: float, build: Callable[[], Any],
                 input_sigmas: np.ndarray | None = None):
        self.name, self.steps, self.shift = name, int(steps), float(shift)
        self._build = build
        # DPM++ only: the float64 sigmas handed to the scheduler (the reference's get_sampling_sigmas)
        self.input_sigmas = input_sigmas
        self.reset()

    def reset(self) -> None:
        self._impl = self._build()
        self.timesteps = self._impl.timesteps
        self.sigmas = self._impl.sigmas

    def step(self, velocity: torch.Tensor, t: torch.Tensor | int, latent: torch.Tensor) -> torch.Tensor:
        return self._impl.step(velocity, t, latent, return_dict=False)[0]


class EulerFlowScheduler(FlowScheduler):
    """First-order flow-matching Euler: ``x_next = x + (sigma_next - sigma) * v``."""

    def __init__(self, steps: int, shift: float):
        self.name, self.steps, self.shift = "euler", int(steps), float(shift)
        self.timesteps, self.sigmas = _with_final_zero(flow_sigmas(self.steps, self.shift))
        self.reset()

    def reset(self) -> None:
        self._index = 0

    def step(self, velocity: torch.Tensor, t: torch.Tensor | int, latent: torch.Tensor) -> torch.Tensor:
        if self._index >= self.steps:
            raise RuntimeError(f"euler scheduler: {self.steps} steps already taken; call reset() first")
        expected = int(self.timesteps[self._index])
        if int(torch.as_tensor(t).reshape(-1)[0]) != expected:
            raise RuntimeError(f"euler scheduler: step {self._index} expects timestep {expected}, got {t}")
        sigma = self.sigmas[self._index].item()
        sigma_next = self.sigmas[self._index + 1].item()
        self._index += 1
        return latent + (sigma_next - sigma) * velocity.to(latent.dtype)


def _build_unipc(steps: int, shift: float) -> Any:
    from diffusers import UniPCMultistepScheduler

    sch = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        solver_order=2,
        prediction_type="flow_prediction",
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        use_flow_sigmas=True,
        flow_shift=shift,
        final_sigmas_type="zero",
    )
    sch.set_timesteps(sigmas=unipc_base_sigmas(steps), device="cpu")  # shifted by flow_shift inside
    return sch


def _build_dpmpp(steps: int, shift: float) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        solver_order=2,
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        use_flow_sigmas=True,
        flow_shift=1.0,
        final_sigmas_type="zero",
    )
    with warnings.catch_warnings():  # diffusers' own (replaced) table trips a numpy-2 deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        sch.set_timesteps(steps, device="cpu")  # resets the solver state; its sigmas are replaced below
    sch.timesteps, sch.sigmas = _with_final_zero(flow_sigmas(steps, shift))
    return sch


def make_scheduler(name: str = DEFAULT_SOLVER, steps: int = 20, shift: float = 3.0) -> FlowScheduler:
    """Build a solver set up as the reference.

    Args:
        name: ``"unipc"`` (default), ``"dpmpp"`` (also ``"dpm++"``) or ``"euler"``.
        steps: number of denoising steps (model evaluations per guidance branch), >= 1.
        shift: flow time shift, > 0 (see :func:`default_shift`).
    """
    name = validate(name, steps, shift)
    steps, shift = int(steps), float(shift)
    if name == "unipc":
        return DiffusersFlowScheduler(name, steps, shift, lambda: _build_unipc(steps, shift))
    if name == "dpmpp":
        return DiffusersFlowScheduler(name, steps, shift, lambda: _build_dpmpp(steps, shift),
                                      input_sigmas=flow_sigmas(steps, shift))
    return EulerFlowScheduler(steps, shift)
