"""The CLI boundary: exit codes, signals, and one clear line for any error.

Exit codes of the ``anytalker`` command (README "Exit codes"):

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success (batch: every entry written or already there)
1     the run failed: an unexpected internal error (the traceback is shown with ``--verbose``),
      a numerical fault (NaN/inf model outputs), out of memory
2     bad input: a flag, file, model file or output location (read-only, full disk) is unusable; the
      message names it
      (argparse's usage errors exit 2 too). Batch: at least one entry had bad input, none failed
      for another reason
130   interrupted: Ctrl-C (SIGINT) or SIGTERM; temporary files are removed, finished outputs kept
====  ==========================================================================================

:func:`run_guarded` maps exceptions to those codes; :func:`signals_as_interrupt` makes SIGTERM behave
like Ctrl-C (a ``KeyboardInterrupt`` raised in the main thread, so every ``finally`` and ``except
BaseException`` clean-up runs) for the duration of a command.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
from collections.abc import Callable, Iterator

from ..errors import AnyTalkerError

log = logging.getLogger("anytalker")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

VERBOSE_HINT = "run again with --verbose for the traceback"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when a handled signal (SIGTERM, SIGINT) arrives."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def interrupt_message(exc: BaseException) -> str:
    """What stopped the run, in words (Ctrl-C or the signal's name)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    what = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"stopped by {what}"


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Terminated` (a ``KeyboardInterrupt``) once.

    Further signals while the run unwinds are ignored (logged), so a second Ctrl-C cannot cut the
    removal of temporary files short. Outside the main thread (handlers cannot be set) this does nothing.
    """
    stopping = False

    def handler(signum, _frame):
        nonlocal stopping
        if stopping:
            log.warning("%s received again: still cleaning up", signal.Signals(signum).name)
            return
        stopping = True
        raise Terminated(signum)

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. SIGINT in a background job: stay deaf to it
                continue
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        for sig, old in previous.items():
            signal.signal(sig, old)
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import sys

    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


def describe_unexpected(exc: BaseException) -> tuple[str, int]:
    """One line for an exception that is not an :class:`AnyTalkerError`, and the exit code."""
    if _is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = (f"out of memory{': ' + first if first else ''}; try --offload, a smaller --max-area, "
                   "fewer --window-frames or --block-storage fp8")
        return message, EXIT_FAILED
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing '{exc.filename}'" if exc.filename else ""
        return f"the disk is full{where}: free some space and run again", EXIT_BAD_INPUT
    if isinstance(exc, OSError) and exc.strerror:
        where = f" '{exc.filename}'" if exc.filename else ""
        return f"{exc.strerror}{where} ({VERBOSE_HINT})", EXIT_FAILED
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"unexpected {type(exc).__name__}{': ' + text if text else ''} ({VERBOSE_HINT})", EXIT_FAILED


def run_guarded(command: Callable[[], int | None], verbose: bool = False) -> int:
    """Run ``command`` with SIGTERM handled like Ctrl-C and turn every exception into one line + an exit code."""
    try:
        with signals_as_interrupt():
            return int(command() or 0)
    except AnyTalkerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        log.error("%s; nothing partial was left behind, finished outputs are kept", interrupt_message(exc))
        return EXIT_INTERRUPTED
    except Exception as exc:  # the boundary: anything else becomes one clear line
        message, code = describe_unexpected(exc)
        log.error("%s", message)
        if verbose:
            log.error("traceback:", exc_info=exc)
        return code
