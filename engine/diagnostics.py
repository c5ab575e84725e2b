"""Diagnostics shared by every loader and linter: one problem, one line, one format.

Every layer (YAML syntax, Cerberus shape, semantic lint, config ``${VAR}`` substitution)
reports ``file:line:col: key.path: message (hint)`` so editors and humans can jump to it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["PathKey", "Problem", "dotted", "nearest"]

#: One step of a key path: a mapping key or a sequence index.
PathKey = str | int

# Keys that would make the dotted form ambiguous are written as ["..."] instead.
_PLAIN_KEY = re.compile(r"[^.\[\]\s\"]+")


@dataclass(frozen=True)
class Problem:
    """One thing wrong at one place in one file (``line``/``col`` are 1-based)."""

    file: str
    line: int
    col: int
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.key_path or "<root>"
        text = f"{self.file}:{self.line}:{self.col}: {where}: {self.message}"
        return text if self.hint is None else f"{text} ({self.hint})"


def dotted(path: Sequence[object]) -> str:
    """Render a key path: ``("request", "body", "messages", 0)`` → ``request.body.messages[0]``."""
    out: list[str] = []
    for key in path:
        # bool is an int subclass but is a mapping key, never an index.
        if isinstance(key, int) and not isinstance(key, bool):
            out.append(f"[{key}]")
            continue
        text = str(key)
        if _PLAIN_KEY.fullmatch(text):
            out.append(f".{text}" if out else text)
        else:
            out.append('["' + text.replace("\\", "\\\\").replace('"', '\\"') + '"]')
    return "".join(out)


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a misspelt ``name`` (for "did you mean" hints), or None."""
    options = [c for c in choices if isinstance(c, str)]
    if not options:
        return None
    # Case-insensitive first: `API_BASE` for `api_base` should always be caught.
    folded = {c.lower(): c for c in options}
    if name.lower() in folded:
        return folded[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
    return folded[found[0]] if found else None
