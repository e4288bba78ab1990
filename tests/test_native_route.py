"""The native ComfyUI route (nodes/native) inside the real ComfyUI (runs only when COMFYUI_PATH is set).

    COMFYUI_PATH=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] pytest tests/test_native_route.py

ComfyUI's own Python runs tests/comfyui_native/scenarios.py once (in-process ComfyUI, ``--cpu``, tiny random
checkpoints of both AFCA variants in the released layouts: fused as .safetensors, legacy as the release's
``{'model': sd}`` .pth beside a ``config_af2v_14B.json``); the numbers it measures are checked here.

Tolerances: the native route and the standalone DiT compute the same function with different code
(ComfyUI's ``addcmul`` modulation, its RoPE and norm kernels, cond and uncond batched in one call) and
ComfyUI hands the model ``sigma * 1000`` as a float where the core truncates to an integer timestep (at
shift 3 and 4 steps: 899.99998 vs 900). In float32 that gives differences of a few 1e-6 on latents of
magnitude ~5 (measured: 4e-6); 5e-5 leaves room for other CPUs/BLAS while any real mistake (a missing
mask, audio in the uncond branch, the legacy text quirk) moves the latent by 1e-2 or more (the scenarios
also measure how much the audio changes the result, so a route that ignores AFCA fails).

Long clips (``long_clip``): AnyTalker Long Sampler (native) against the core's ``run_windows`` on the same
weights, VAE and CLIP vision objects (2 people, 25 frames in 3 windows of 13 frames overlapping by 5). Each
window's latent equals the core's sampling of the same window inputs within PARITY_ATOL (measured 5e-6). The
whole clips are compared as frames: the decoded seam frames are uint8, and a pixel whose value sits within
~1e-5 of a rounding boundary rounds differently in the two routes; that level flips into the next window's
motion latents (measured 1e-3 .. 4e-3 in window 2/3), so the clips differ by a few levels at a few pixels
(measured max 6, mean 0.05 of 255; tolerance mean 0.5, max 24). A wrong arithmetic (one shared frame instead of the 5-frame overlap)
moves the mean by 74 levels.

TorchCompileModel (inductor) is part of every run (about a minute of compiling on this 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

PARITY_ATOL = 5e-5
SCENARIOS = ["parity", "fp8", "lora", "memory", "lowvram", "easycache", "preview_interrupt", "pack_previews", "guider",
             "errors", "compile", "long_clip"]


@pytest.fixture(scope="module")
def comfyui(request):
    """The ComfyUI to test against: the shared ``comfyui_env`` fixture (tests/conftest.py) where it exists,
    else ``COMFYUI_PATH`` [+ ``COMFYUI_PYTHON``]; skipped without either."""
    try:
        return request.getfixturevalue("comfyui_env")
    except pytest.FixtureLookupError:
        path = os.environ.get("COMFYUI_PATH")
        if not path:
            pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run")
        return SimpleNamespace(path=Path(path), python=os.environ.get("COMFYUI_PYTHON", sys.executable))


@pytest.fixture(scope="module")
def measured(comfyui, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("native") / "results.json"
    proc = subprocess.run([comfyui.python, str(REPO / "tests" / "comfyui_native" / "scenarios.py"), str(out),
                           *SCENARIOS], cwd=comfyui.path, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode or not out.exists():
        pytest.fail(f"scenarios.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def result(measured: dict, name: str) -> dict:
    data = measured[name]
    if "error" in data:
        pytest.fail(f"scenario {name} raised:\n{data['error']}")
    return data


@pytest.mark.parametrize("variant", ["fused", "legacy"])
def test_ksampler_matches_standalone_pipeline(measured, variant):
    r = result(measured, "parity")[variant]
    assert r["afca"] == variant
    assert r["format"] == (".safetensors" if variant == "fused" else ".pth")
    assert r["loaded_keys"] == r["file_keys"]  # every released tensor lives in ComfyUI's model
    assert r["max_abs_diff"] < PARITY_ATOL, r
    assert r["scale"] > 1.0
    assert r["audio_effect"] > 1e-2, "the audio must change the native result (AFCA runs)"


@pytest.mark.parametrize("variant", ["fused", "legacy"])
def test_fp8_weight_dtype(measured, variant):
    """Load Diffusion Model's fp8 option: trunk and AFCA weights in fp8, computed in ComfyUI's cast dtype."""
    r = result(measured, "fp8")[variant]
    assert r["trunk_dtype"] == r["afca_dtype"] == "torch.float8_e4m3fn"
    assert r["finite"]
    assert r["max_abs_diff"] < 0.1 * r["scale"], r  # 8-bit weights: measured 2.4 % of the latent's range


@pytest.mark.parametrize("variant", ["fused", "legacy"])
def test_lora_loader_equals_merged_weights(measured, variant):
    r = result(measured, "lora")[variant]
    afca = "cross_attn.k_audio" if variant == "fused" else "audio_cross_attn.q_linear"
    assert any(afca in k for k in r["patched_keys"]), "the LoRA must reach the AFCA layers too"
    assert len(r["patched_keys"]) == 3
    assert r["max_abs_diff"] < 1e-5, r
    assert r["lora_effect"] > 1e-3


def test_model_management_loads_and_frees(measured):
    r = result(measured, "memory")
    assert r["loaded_after_sampling"] == 1
    assert r["loaded_after_free"] == 0
    assert r["anytalker_bytes"] > 0
    assert r["model_size"] >= r["anytalker_bytes"]  # ComfyUI counts the AFCA layers in the model's size


def test_lowvram_partial_load_samples_the_same(measured):
    r = result(measured, "lowvram")
    assert r["lowvram"] is True
    assert r["loaded_size"] < r["model_size"]
    assert r["budget"] < r["model_size"]
    assert r["lowvram_patches"] > 0, "LoRA patches applied at run time on offloaded layers"
    assert r["max_abs_diff"] < 1e-5, r


def test_easycache_skips_steps(measured):
    r = result(measured, "easycache")
    assert r["total_steps"] == 10 and r["skipped_steps"] >= 1, r
    assert 0 < r["max_abs_diff"] < 0.15 * r["scale"], r


def test_pack_sampler_sends_latent_previews(measured):
    """Issue 11: the pack's own AnyTalker Sampler shows ComfyUI's latent previews while it samples."""
    r = result(measured, "pack_previews")
    assert [p[:3] for p in r["previews"]] == [[0, 3, "JPEG"], [1, 3, "JPEG"], [2, 3, "JPEG"]]
    assert all(p[3] == [8, 8] for p in r["previews"])  # Latent2RGB of the 8x8 latent


def test_latent_previews_and_interrupt(measured):
    r = result(measured, "preview_interrupt")
    assert [p[:2] for p in r["previews"]] == [[1, 3], [2, 3], [3, 3]]
    assert all(p[2] == [8, 8] for p in r["previews"])  # Latent2RGB preview of the 8x8 latent
    assert r["interrupted"] == "InterruptProcessingException"
    assert r["steps_before_interrupt"] == 2


@pytest.mark.parametrize("variant", ["fused", "legacy"])
def test_text_audio_guider(measured, variant):
    r = result(measured, "guider")[variant]
    assert r["equal_vs_ksampler"]["max_abs_diff"] < 1e-5
    assert r["separate_vs_standalone"]["max_abs_diff"] < PARITY_ATOL, r
    assert r["separate_effect"] > 1e-2


def test_clear_errors(measured):
    r = result(measured, "errors")
    assert "plain Wan2.1 model without AnyTalker" in r["plain_checkpoint"]
    assert "Load AnyTalker Diffusion Model (native)" in r["plain_model"]


def test_torch_compile_model(measured):
    r = result(measured, "compile")
    assert r["max_abs_diff"] < PARITY_ATOL, r


# |native - core| over a whole long clip, in 0..255 levels (measured: here 0.03-0.05 mean, 5-6 max; the server
# test's speech and photo 0.11 / 9); a wrong overlap arithmetic moves the mean by ~74
LONG_MEAN_LEVELS = 0.5
LONG_MAX_LEVELS = 24


@pytest.mark.parametrize("variant", ["fused", "legacy"])
def test_long_clip_matches_core_run_windows(measured, variant):
    """Issue 14 item 4: the native long clip is the core's overlapping motion-frame windows, sampled by ComfyUI."""
    r = result(measured, "long_clip")[variant]
    assert r["frames"] == r["core_frames"] == 25  # exactly the audio's frame count
    assert r["size"] == [64, 128]
    assert r["windows"] == r["plan_windows"] == 3
    # the window_plan arithmetic: each window's latent length, its pinned motion latents, its own audio span
    assert r["window_lengths"] == r["plan_latent_frames"] == [4, 4, 3]
    assert r["known"] == r["plan_known"] == [None, [0, 2], [0, 2]]
    assert r["audio_is_own_span"] == [True, True, True]
    assert max(r["same_inputs_latent_max_abs_diff"]) < PARITY_ATOL, r
    assert r["latent_max_abs_diff"][0] < PARITY_ATOL, r  # window 1: no seam before it
    assert r["frame_mean_level_diff"] < LONG_MEAN_LEVELS, r
    assert r["frame_max_level_diff"] <= LONG_MAX_LEVELS, r
    if variant == "fused":
        assert r["one_pass"]["frames"] == 25 and r["one_pass"]["max_level_diff"] <= 1, r["one_pass"]
        assert r["one_shared_frame_mean_level_diff"] > 40 * LONG_MEAN_LEVELS, "the overlap must matter"


def test_long_clip_progress_cancel_resume(measured):
    r = result(measured, "long_clip")["fused"]
    total = 3 * 4  # windows x steps, one bar
    for seen in (r["progress_full"], r["progress_cancelled"], r["progress_resumed"]):
        assert {t for _, t in seen} == {total}
        assert [v for v, _ in seen] == sorted(v for v, _ in seen)
    assert r["progress_full"][-1] == [total, total]
    assert r["interrupted"] == "InterruptProcessingException"
    assert r["progress_cancelled"][-1][0] <= 5  # Cancel in window 2 (at step 5) stops at once
    assert r["kept_after_cancel"] == ["window_0000.npz"]  # the finished window is kept
    assert r["progress_resumed"][0] == [4, total]  # the re-run starts after window 1
    assert r["resumed_equals_full"] is True
    assert r["work_folder_left"] is False
