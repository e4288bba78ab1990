"""The parity runner fails on every golden tensor it did not compare (never skips one silently)."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from anytalker_core.parity import run_fixture


def _copy_with_extra(fixtures, tmp_path, name, extra: dict[str, torch.Tensor], siblings=()):
    for sib in siblings:
        shutil.copy(fixtures / sib, tmp_path / sib)
    meta = json.loads((fixtures / f"{name}.json").read_text())
    (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    tensors = load_file(str(fixtures / f"{name}.safetensors"))
    save_file({**tensors, **extra}, str(tmp_path / f"{name}.safetensors"))
    return tmp_path / f"{name}.json"


def test_an_output_the_code_does_not_make_fails(fixtures, tmp_path):
    path = _copy_with_extra(fixtures, tmp_path, "face_masks", {"token_masks_v2": torch.zeros(2, 3)})
    results = {c.name: c for c in run_fixture(path)}
    assert not results["token_masks_v2"].passed and "not compared" in results["token_masks_v2"].detail
    assert all(c.passed for n, c in results.items() if n != "token_masks_v2")


def test_a_debug_tensor_no_hook_captured_fails(fixtures, tmp_path):
    path = _copy_with_extra(fixtures, tmp_path, "dit_af", {"dbg_block7_out": torch.zeros(1, 18, 64)},
                            siblings=("dit_af.pth", "dit_af.config.json", "dit_inputs.json", "dit_inputs.safetensors"))
    failed = [c for c in run_fixture(path) if not c.passed]
    assert [c.name for c in failed] == ["dbg_block7_out"]


def test_every_public_fixture_tensor_is_compared_or_an_input(fixtures):
    from anytalker_core.parity import load_fixture, runner_inputs

    for path in sorted(fixtures.glob("*.json")):
        meta = json.loads(path.read_text())
        if "group" not in meta or meta["group"] == "dit_inputs":
            continue
        results = run_fixture(path)
        assert all(c.passed for c in results), [c.line() for c in results if not c.passed]
        inputs = runner_inputs(meta["group"])
        compared = {c.name for c in results}
        import fnmatch

        for name in load_fixture(path).tensors:
            assert name in compared or any(fnmatch.fnmatchcase(name, p) for p in inputs), (path.name, name)
