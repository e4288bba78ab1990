"""How an input is called in messages, per route: the CLI's flags, the ComfyUI nodes' inputs, the Python API.

The core raises one :class:`~.errors.InputError` per problem; the words that name an input depend on who
asked. A route (the ``anytalker`` command, a ComfyUI node's ``execute``) selects its vocabulary with
:func:`input_names`; core messages ask :func:`name` for the word. Outside any route the Python API's own
argument names are used. People are numbered from 1, left to right, on every route.

=============  ================  ==================================  =====================
role           Python API        CLI (batch entries)                 ComfyUI nodes
=============  ================  ==================================  =====================
boxes          ``boxes``         ``--boxes`` (the entry's "boxes")   ``boxes`` input
masks          ``masks``         ``--boxes`` (no masks on the CLI)   ``masks`` input
frame_num      ``frame_num``     ``--frame-num``                     ``frame_count`` input
fps            ``fps``           ``--fps``                           ``fps``
audio          ``audio track``   ``--audio``                         ``audio input``
audio_n        ``audio track 2`` ``--audio #2``                      ``audio input 2``
dtype          ``dtype``         ``--dtype``                         ``weight_dtype``
=============  ================  ==================================  =====================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

__all__ = ["API_NAMES", "BATCH_NAMES", "CLI_NAMES", "NODE_NAMES", "input_names", "name"]

API_NAMES: Mapping[str, str] = {
    "boxes": "boxes", "masks": "masks", "frame_num": "frame_num", "fps": "fps", "audio": "audio track",
    "dtype": "dtype", "audio_n": "audio track {n}",
    "place_faces": "pass boxes or masks (one per person)",
}
CLI_NAMES: Mapping[str, str] = {
    "boxes": "--boxes", "masks": "--boxes", "frame_num": "--frame-num", "fps": "--fps", "audio": "--audio",
    "dtype": "--dtype", "audio_n": "--audio #{n}",
    "place_faces": "pass --boxes x1,y1,x2,y2;x1,y1,x2,y2 (one box per person, left to right; "
                   "--preview-faces OUT.png shows what was found)",
}
BATCH_NAMES: Mapping[str, str] = {
    **CLI_NAMES, "boxes": "the entry's \"boxes\"", "masks": "the entry's \"boxes\"",
    "place_faces": 'add "boxes": [[x1, y1, x2, y2], ...] to the entry (one box per person, left to right)',
}
NODE_NAMES: Mapping[str, str] = {
    "boxes": "the 'boxes' input", "masks": "the 'masks' input", "frame_num": "frame_count", "fps": "fps",
    "audio": "audio input", "dtype": "weight_dtype", "audio_n": "audio input {n}",
    "place_faces": "connect one mask per person to AnyTalker Face Masks' 'masks' input or type one box per "
                   "person into its 'boxes' input (left to right)",
}

_current: ContextVar[Mapping[str, str]] = ContextVar("anytalker_input_names", default=API_NAMES)


@contextlib.contextmanager
def input_names(table: Mapping[str, str]) -> Iterator[None]:
    """Use ``table``'s words in the messages raised inside the block (per thread / task)."""
    token = _current.set(table)
    try:
        yield
    finally:
        _current.reset(token)


def name(role: str, n: int | None = None) -> str:
    """The current route's word for ``role`` (see the module table); unknown roles are returned as given.

    Numbered roles (``audio_n``) take the person's number ``n``, counted from 1, left to right.
    """
    word = _current.get().get(role, role)
    return word.format(n=n) if n is not None else word

