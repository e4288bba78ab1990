"""``anytalker verify-fixture FILE.json [...]``: run fixtures, print per-output errors, exit 1 on FAIL.

JSON files that are not fixtures (no ``group`` key, e.g. the ``*.config.json`` model configs a
``fixtures/*.json`` glob also matches) are listed as skipped; missing or unreadable files are errors.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixtures", nargs="+", metavar="FILE.json",
                        help="fixture json files (NAME.json beside NAME.safetensors); inputs-only files and "
                             "json files that are not fixtures (model configs) are skipped")


def _is_fixture_json(path: Path) -> bool:
    """False only for a readable JSON object without a ``group`` key (load_fixture reports the rest)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return True
    return not isinstance(data, dict) or "group" in data


def run(args: argparse.Namespace) -> int:
    from ..parity import INPUT_ONLY_GROUPS, load_fixture, run_fixture

    failed = 0
    total = 0
    for path in args.fixtures:
        if Path(path).suffix == ".json" and Path(path).is_file() and not _is_fixture_json(Path(path)):
            print(f"== {path}: not a fixture (no 'group' key), skipped")
            continue
        fixture = load_fixture(path)
        if fixture.group in INPUT_ONLY_GROUPS:
            print(f"== {path}: inputs only (group {fixture.group}), nothing to check")
            continue
        print(f"== {path} (group {fixture.group})")
        for cmp in run_fixture(path):
            total += 1
            failed += not cmp.passed
            print("   " + cmp.line())
    print(f"verify-fixture: {total - failed} passed, {failed} failed")
    return 1 if failed else 0
