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
