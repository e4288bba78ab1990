"""Reading JSON files with one kind of error: the file, what it should be, and what went wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AnyTalkerError, InputError

__all__ = ["read_json"]


def read_json(path: str | Path, what: str, error: type[AnyTalkerError] = InputError, *,
              expect: type | tuple[type, ...] = dict, hint: str = "") -> Any:
    """The JSON value in ``path``, which must be an instance of ``expect``.

    Raises ``error`` (an :class:`~anytalker_core.errors.AnyTalkerError`) naming ``what`` and the file for a
    missing or unreadable file, invalid JSON, or a value of another type (``hint`` says what was expected).
    """
    path = Path(path)
    where = f"{what} '{path}'"
    if not path.is_file():
        raise error(f"{where}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where}: cannot be read ({exc})") from None
    if not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise error(f"{where}: expected a JSON {'object' if expect is dict else names}"
                    f"{f' ({hint})' if hint else ''}, got {type(data).__name__}")
    return data
