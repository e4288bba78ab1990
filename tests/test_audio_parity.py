"""The audio_features golden fixture passes through this project's code, and via the CLI command."""

from __future__ import annotations

import argparse
import shutil

import pytest
from safetensors.torch import load_file, save_file

from anytalker_core.errors import InputError
from anytalker_core.parity import run_fixture
from anytalker_core.parity import audio as audio_runner
from anytalker_core.cli import verify_fixture as command


def test_audio_features_fixture_passes(fixtures):
    results = run_fixture(fixtures / "audio_features.json")
    names = {c.name for c in results}
    assert {"input_values_0", "input_values_1", "features_single_0", "features_single_1", "frame_num",
            "features_pad_fp32", "features_concat_fp32"} <= names
    failed = [c.line() for c in results if not c.passed]
    assert not failed, failed


def test_verify_fixture_command_exit_code(fixtures, capsys):
    rc = command.run(argparse.Namespace(fixtures=[str(fixtures / "audio_features.json")]))
    out = capsys.readouterr().out
    assert rc == 0 and "7 passed, 0 failed" in out


def test_runner_detects_wrong_expectations(fixtures, tmp_path):
    """A perturbed golden tensor must FAIL (the runner really compares)."""
    for name in ("audio_features.json", "audio_features_wav2vec2"):
        src = fixtures / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    tensors = load_file(str(fixtures / "audio_features.safetensors"))
    tensors["features_concat_fp32"][1, 80, 2, 0, 3] += 1e-3
    save_file(tensors, str(tmp_path / "audio_features.safetensors"))
    results = {c.name: c for c in run_fixture(tmp_path / "audio_features.json")}
    assert not results["features_concat_fp32"].passed
    assert results["features_pad_fp32"].passed


def test_tolerance_parsing():
    assert audio_runner._tolerance({"tolerance": {"features_*": "atol 1e-4, rtol 2e-5 (float32)"}}) == (1e-4, 2e-5)
    with pytest.raises(InputError, match="tolerance"):
        audio_runner._tolerance({"group": "audio_features", "tolerance": {}})
