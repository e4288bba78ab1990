"""The ``anytalker`` command: one entry point, one module per sub-command.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
routes, through :func:`~.guard.run_guarded` (exit codes, SIGTERM, one line per error). Modules are
imported when their command runs, so ``anytalker --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..input_names import CLI_NAMES, input_names
from .guard import run_guarded

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify-fixture": ("anytalker_core.cli.verify_fixture", "check this implementation against golden fixture files"),
    "convert": ("anytalker_core.cli.convert", "convert a released .pth checkpoint to .safetensors"),
    "generate": ("anytalker_core.cli.generate", "image + one audio file per person + prompt -> mp4"),
    "evaluate": ("anytalker_core.cli.evaluate", "score generated videos (Interactivity, Sync-C, Sync-C*)"),
    "split-voices": ("anytalker_core.cli.split_voices", "one recording of a conversation -> one track per person"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` command's module is imported (keeps start-up fast)."""
    parser = argparse.ArgumentParser(prog="anytalker", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # --verbose also after the command name (``anytalker generate ... --verbose``)
        sub_parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                help="debug logging, and the traceback of an unexpected error")
        if name == selected:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(args._module)
    with input_names(CLI_NAMES):  # core messages name the flags (--boxes, --frame-num, ...)
        return run_guarded(lambda: module.run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
