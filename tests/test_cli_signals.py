"""Signals stop ``anytalker generate`` cleanly: SIGTERM like Ctrl-C, exit 130, nothing left behind.

Each test runs the real command in a subprocess (Ctrl-C, the same handler, is tested in-process in
tests/test_cli_faults.py) on the ``--demo`` set (tiny random models written to a
temporary folder, espeak-ng speech), with ``TMPDIR`` pointing into the test's folder so that the demo's
temporary folder can be checked for removal too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anytalker_core.testing.speech import espeak_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for the demo's speech"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

REPO = Path(__file__).resolve().parents[1]
DEMO = ["generate", "--demo", "--max-area", "32*64", "--face-backend", "mediapipe"]


def _start(args: list[str], tmp_path: Path, script: str | None = None) -> subprocess.Popen:
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "anytalker_core.cli", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float = 240) -> list[str]:
    """Read the output until a line contains ``needle``; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    pytest.fail(f"never saw {needle!r}; output:\n{''.join(lines)}")


def _finish(proc: subprocess.Popen, lines: list[str]) -> tuple[int, str]:
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + rest


def _ours(tmp: Path) -> list[str]:
    """What is left in TMPDIR, but torch's own compile cache (``torchinductor_<user>``)."""
    return [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor")]


def test_sigterm_during_sampling(tmp_path):
    out = tmp_path / "out" / "demo.mp4"
    proc = _start([*DEMO, "--steps", "1000", "--frame-num", "5", "--out", str(out)], tmp_path)
    lines = _wait_for(proc, "denoising step 1/1000")
    proc.send_signal(signal.SIGTERM)
    code, output = _finish(proc, lines)
    assert code == 130, output
    assert "stopped by SIGTERM; nothing partial was left behind" in output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert _ours(tmp_path / "tmp") == []  # the demo's models and speech are gone too


WRITE_INTERRUPTER = textwrap.dedent("""
    import os, signal, sys
    import av

    real = av.VideoFrame

    class VideoFrame:  # PyAV as it is, except that SIGTERM arrives while the 3rd frame is encoded
        count = 0

        @staticmethod
        def from_ndarray(*args, **kwargs):
            VideoFrame.count += 1
            if VideoFrame.count == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return real.from_ndarray(*args, **kwargs)

    av.VideoFrame = VideoFrame
    from anytalker_core.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_while_writing_the_mp4(tmp_path):
    out = tmp_path / "out" / "demo.mp4"
    proc = _start([*DEMO, "--steps", "1", "--frame-num", "9", "--out", str(out)], tmp_path, WRITE_INTERRUPTER)
    code, output = _finish(proc, [])
    assert code == 130, output
    assert f"writing {out}" in output and "stopped by SIGTERM" in output
    assert "Traceback" not in output
    assert list((tmp_path / "out").iterdir()) == []  # no demo.mp4, no .demo.*.tmp.mp4
    assert _ours(tmp_path / "tmp") == []
