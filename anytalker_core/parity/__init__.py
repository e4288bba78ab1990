"""Parity with the reference implementation's golden fixtures.

A fixture is ``NAME.json`` (metadata, with a ``group`` and a ``tolerance``) beside
``NAME.safetensors`` (tensors). Each group has one runner module in this package, registered in
``RUNNERS``; a runner takes a :class:`Fixture`, runs *this project's* code on its inputs and
returns one :class:`Comparison` per output. Runners read every size from the fixture itself, so
fixtures with other dims, identity counts and frame counts work unchanged.

Every golden tensor must be accounted for: compared (a :class:`Comparison` of that name) or declared an
input in the runner's ``INPUTS`` (name patterns). :func:`run_fixture` turns any other tensor of the fixture
into a failing comparison, so an output the code no longer produces (a renamed intermediate, a hook that
captured nothing) fails the run instead of silently dropping out of it.
"""

from __future__ import annotations

import fnmatch
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InputError
from ..io.json_files import read_json

# fixture "group" -> module in this package that defines run(fixture) -> list[Comparison]
RUNNERS: dict[str, str] = {
    "dit_af": "dit",
    "dit_legacy": "dit",
    "audio_features": "audio",
    "face_masks": "faces",
    "scheduler": "scheduler",
    "interactivity": "interactivity",
}

# groups whose files hold inputs only (used by other groups)
INPUT_ONLY_GROUPS = {"dit_inputs"}


@dataclass
class Fixture:
    """A loaded fixture: its json metadata and a lazy view of its tensors."""

    json_path: Path
    meta: dict[str, Any]
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def group(self) -> str:
        return self.meta["group"]

    @property
    def directory(self) -> Path:
        return self.json_path.parent

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            from safetensors.torch import load_file

            name = self.meta.get("file") or self.json_path.with_suffix(".safetensors").name
            self._tensors = load_file(str(self.directory / name))
        return self._tensors

    def sibling(self, name: str) -> Path:
        """A file next to the fixture (inputs, checkpoints, model folders)."""
        return self.directory / name


@dataclass
class Comparison:
    """One output checked against its golden value."""

    name: str
    max_abs: float
    max_rel: float  # max abs error / max abs of the expected output (its scale)
    passed: bool
    detail: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        extra = f"  {self.detail}" if self.detail else ""
        return f"{verdict}  {self.name:<44} max_abs={self.max_abs:.3e}  max_rel={self.max_rel:.3e}{extra}"


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> Comparison:
    """Compare with ``|a - e| <= atol + rtol * |e|`` elementwise (torch.allclose semantics).

    Shape or dtype-kind mismatches fail with a message instead of raising.
    """
    actual = torch.as_tensor(actual).detach().cpu()
    expected = torch.as_tensor(expected).detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        return Comparison(name, math.inf, math.inf, False,
                          f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.to(torch.float64)
    e = expected.to(torch.float64)
    if a.numel() == 0:
        return Comparison(name, 0.0, 0.0, True)
    diff = (a - e).abs()
    max_abs = float(diff.max())
    scale = float(e.abs().max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    ok = bool(torch.all(diff <= atol + rtol * e.abs())) and not bool(torch.isnan(a).any())
    return Comparison(name, max_abs, max_rel, ok, f"(atol={atol:g}, rtol={rtol:g})")


def compare_exact(name: str, actual: torch.Tensor, expected: torch.Tensor) -> Comparison:
    """Exact equality (integer outputs, masks, timesteps)."""
    cmp = compare(name, actual, expected, 0.0, 0.0)
    cmp.detail = "(exact)"
    return cmp


def load_fixture(path: str | Path) -> Fixture:
    """Read a fixture's json; a clear error if it is not a fixture of a known group."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise InputError(f"fixture '{path}': no such file (expected NAME.json beside NAME.safetensors)")
    meta = read_json(path, "fixture", hint="a fixture's metadata")
    if "group" not in meta:
        raise InputError(f"fixture '{path}': the json has no 'group' key, so it is not a fixture file")
    group = meta["group"]
    if group not in RUNNERS and group not in INPUT_ONLY_GROUPS:
        raise InputError(f"fixture '{path}': unknown group '{group}' (known: {', '.join(sorted(RUNNERS))})")
    return Fixture(path, meta)


def runner_for(group: str) -> Callable[[Fixture], list[Comparison]]:
    module = importlib.import_module(f"{__name__}.{RUNNERS[group]}")
    return module.run


def runner_inputs(group: str) -> tuple[str, ...]:
    """Name patterns (``fnmatch``) of the golden tensors that the group's runner reads as inputs."""
    module = importlib.import_module(f"{__name__}.{RUNNERS[group]}")
    return tuple(getattr(module, "INPUTS", ()))


def not_compared(fixture: Fixture, results: list[Comparison], inputs: tuple[str, ...]) -> list[Comparison]:
    """A failing comparison for every golden tensor of ``fixture`` that is neither compared nor an input."""
    compared = {c.name for c in results}
    return [Comparison(name, math.inf, math.inf, False,
                       "not compared: the run produced nothing for this golden tensor (a missing capture, "
                       "or an output this code no longer makes)")
            for name in sorted(fixture.tensors)
            if name not in compared and not any(fnmatch.fnmatchcase(name, p) for p in inputs)]


def run_fixture(path: str | Path) -> list[Comparison]:
    """Run this project's code on one fixture; returns every comparison (inputs-only files: none), a failing
    one for each golden tensor that was not compared (see the module docstring)."""
    fixture = load_fixture(path)
    if fixture.group in INPUT_ONLY_GROUPS:
        return []
    results = runner_for(fixture.group)(fixture)
    return results + not_compared(fixture, results, runner_inputs(fixture.group))
