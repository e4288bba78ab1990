"""``anytalker verify-fixture FILE.json [...]``: run fixtures, print per-output errors, exit 1 on FAIL."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixtures", nargs="+", metavar="FILE.json",
                        help="fixture json files (NAME.json beside NAME.safetensors); inputs-only files are skipped")


def run(args: argparse.Namespace) -> int:
    from . import load_fixture, run_fixture, INPUT_ONLY_GROUPS

    failed = 0
    total = 0
    for path in args.fixtures:
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
