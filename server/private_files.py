"""Files that hold prompts, outputs or other secrets belong to their owner alone.

A new one is created with mode 0600 by `os.open` itself, so it is never readable by others, not
even for a moment (the umask can only take bits away). An existing file keeps its mode unless
Turnout is about to write captured text into it: then group and other permissions are removed,
with a warning naming the file, because it may well predate the setting that put prompts into
it (a log file made 0644 before `capture` was turned on).
"""

from __future__ import annotations

import logging
import os
import stat

__all__ = ["PRIVATE_MODE", "open_private", "tighten"]

log = logging.getLogger("turnout")

PRIVATE_MODE = 0o600


def open_private(path: str | os.PathLike[str], flags: int, *, holds_captures: bool) -> int:
    """`os.open(path, flags | O_CREAT)`: a new file owner-only; an existing one tightened
    when it `holds_captures`. Returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_MODE)
    try:
        if holds_captures:
            _tighten_fd(fd, os.fspath(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(path: str | os.PathLike[str]) -> None:
    """Remove group and other permissions from an existing file (a missing one is fine)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        _tighten_fd(fd, os.fspath(path))
    finally:
        os.close(fd)


def _tighten_fd(fd: int, name: str) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & 0o077:
        return
    try:
        os.fchmod(fd, mode & 0o700)
    except OSError as exc:  # not the file's owner: say so, and go on
        log.warning(
            "%s holds prompts and is readable by others (mode %o), and could not be made "
            "private: %s", name, mode, exc.strerror,
        )  # fmt: skip
        return
    log.warning(
        "%s holds prompts and was readable by others (mode %o): made private (mode %o)",
        name, mode, mode & 0o700,
    )  # fmt: skip
