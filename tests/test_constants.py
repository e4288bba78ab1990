"""One module of constants: the numbers the released models fix are defined in anytalker_core/constants.py
and nowhere else (a literal 16000 / 832 * 480 / the speaker limit elsewhere would drift)."""

import ast

from conftest import REPO

from anytalker_core import constants

#: (value, how it may appear) that only constants.py may spell out as a number
FIXED = {16000: "sample rate", 832 * 480: "max area"}


def _assigned_literals(path):
    """Module- or class-level ``NAME = <number or a*b of numbers>`` assignments and parameter defaults."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        values = []
        if isinstance(node, ast.Assign) or isinstance(node, ast.AnnAssign):
            values = [node.value]
        elif isinstance(node, ast.arguments):
            values = list(node.defaults) + [d for d in node.kw_defaults if d is not None]
        for v in values:
            try:
                number = ast.literal_eval(v) if not isinstance(v, ast.BinOp) else eval(compile(ast.Expression(v), "", "eval"))  # noqa: S307
            except Exception:  # noqa: BLE001 - names, calls: not a literal
                continue
            if isinstance(number, int) and not isinstance(number, bool) and number in FIXED:
                yield node.lineno if hasattr(node, "lineno") else v.lineno, number


def test_fixed_numbers_are_defined_once():
    found = []
    for root in ("anytalker_core", "nodes", "train"):
        for path in (REPO / root).rglob("*.py"):
            if path.name == "constants.py":
                continue
            found += [f"{path.relative_to(REPO)}:{line} {FIXED[n]} {n}" for line, n in _assigned_literals(path)]
    assert not found, found


def test_the_values():
    assert (constants.SAMPLE_RATE, constants.FPS, constants.MAX_AREA) == (16000, 24, 832 * 480)
    assert (constants.VAE_TEMPORAL_STRIDE, constants.VAE_SPATIAL_STRIDE, constants.PATCH_SIZE) == (4, 8, (1, 2, 2))
    assert constants.WINDOW_FRAMES == 81 and (constants.WINDOW_FRAMES - 1) % constants.VAE_TEMPORAL_STRIDE == 0
