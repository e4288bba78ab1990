"""Shared test fixtures. No ComfyUI imports here (tests must run without ComfyUI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """The golden fixtures: $ANYTALKER_FIXTURES, else ../shared/fixtures beside the checkout."""
    env = os.environ.get("ANYTALKER_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if not path.is_dir():
        pytest.fail(f"golden fixtures not found at {path} (set ANYTALKER_FIXTURES)")
    return path


# ------------------------------------------------------------------ a real ComfyUI and a real browser
# (the fixtures below start programs; they never import ComfyUI into the test process)


def in_ci() -> bool:
    """CI=true (or 1/yes): a missing ComfyUI or browser is a failure there, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true nothing may be skipped: scripts/setup.sh installs every program and package the tests
    use, so a skip there (a ``skipif`` on a missing espeak-ng, an ``importorskip``) means a missing install
    step and fails the test, naming the reason."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be skipped: {reason}"


def missing(reason: str):
    """Skip on a developer machine, fail in CI (where nothing may be skipped for a missing program)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing environment is a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def comfyui_env():
    """The ComfyUI the tests run against (:class:`comfyui_harness.ComfyUIEnv`).

    ``COMFYUI_PATH`` (+ ``COMFYUI_PYTHON``) when set — your own ComfyUI; otherwise the cached test
    environment that ``scripts/comfyui_env.sh`` builds from ../shared/comfyui (minutes the first time).
    """
    import subprocess

    from comfyui_harness import ComfyUIEnv

    proc = subprocess.run(["bash", str(REPO / "scripts" / "comfyui_env.sh")], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        missing(f"no ComfyUI environment: scripts/comfyui_env.sh failed:\n{proc.stderr[-3000:]}")
    values = {}
    for line in proc.stdout.splitlines():  # export NAME=value (bash %q quoting of plain paths)
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = value.replace("\\ ", " ")
    return ComfyUIEnv(path=Path(values["COMFYUI_PATH"]), python=values["COMFYUI_PYTHON"])


@pytest.fixture(scope="session")
def comfyui_server(comfyui_env, tmp_path_factory):
    """One real ComfyUI server (``--cpu``, loopback) for the session, with this pack and the test nodes
    in ``custom_nodes/``, the tiny demo models in ``models/`` and ``input/`` holding
    ``comfyui_harness.IMAGES`` and ``person1..3.wav``. ``server.paths`` = the tiny models' ModelPaths.
    Text encoders (UMT5, CLIP vision) run in fp32 (``--fp32-text-enc``) as the CLI does on a CPU, so node
    and pipeline values can be compared closely (ComfyUI's CPU default stores them in fp16)."""
    from comfyui_harness import Server, prepare_base

    base = tmp_path_factory.mktemp("comfyui")
    paths = prepare_base(base)
    server = Server(comfyui_env, base, extra_args=("--fp32-text-enc",))
    try:
        server.wait_ready()
        server.paths = paths
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's chromium (scripts/setup.sh installs it) and the playwright package that drives it."""
    import importlib.util
    import shutil

    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing("no chromium on PATH (apt-get install chromium; scripts/setup.sh does)")
    if importlib.util.find_spec("playwright") is None:
        missing("the playwright package is not installed (pip install playwright; scripts/setup.sh does)")
    return exe


ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots); git-ignored, kept after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
