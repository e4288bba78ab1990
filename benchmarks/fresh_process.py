"""One measurement in a fresh Python process (so its peak memory and caches are its own).

The child runs the same script with ``--one ...`` and prints one line ``RESULT <json>``; the parent
collects it. Used by ``long_clip.py`` and ``wav2vec_chunks.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "RESULT "


def emit(row: dict) -> None:
    """In the child: print the measurement for the parent."""
    print(PREFIX + json.dumps(row), flush=True)


def measure_in_fresh_process(cmd: list[str]) -> dict | None:
    """Run ``cmd`` (one thread, the repository on the path) and return its ``RESULT`` row; ``None`` (with
    the child's output on stderr) when it printed none."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(PREFIX)), None)
    if line is None:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
        return None
    row = json.loads(line[len(PREFIX):])
    print(json.dumps(row), file=sys.stderr)
    return row
