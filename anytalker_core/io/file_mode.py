"""Permissions of the files we write: what ``open()`` would give (``0o666`` minus the umask).

The atomic writer (:mod:`.atomic`) creates its temporary file with :func:`tempfile.mkstemp`, which makes
it ``0o600`` (owner only), and ``os.replace`` keeps that mode — so an mp4 or checkpoint would be
unreadable to the group and to a web server. It gives the temporary file :func:`default_file_mode`
before renaming it into place.
"""

from __future__ import annotations

import os
import threading

__all__ = ["default_file_mode"]

_lock = threading.Lock()


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode a plain ``open(path, "w")`` creates files with."""
    with _lock:  # reading the umask means setting it; keep the window closed to other threads here
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask

