"""Captured text is cut at a documented size before any sink sees it.

Every string of a captured `input`, `instructions` or `output` longer than the limit keeps its
first `limit` characters and a marker saying how many were cut. A 20 MB prompt would otherwise be
copied into every sink's record and passed through the secret redaction (regular expressions over
every character) on the event loop: seconds during which no other request is served. The limit is
the largest `capture.max_chars` of the sinks that capture (default `CAPTURE_MAX_CHARS`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CAPTURE_MAX_CHARS", "clip"]

CAPTURE_MAX_CHARS = 32_768


def clip(value: Any, limit: int) -> Any:
    """`value` with every string over `limit` characters cut (a new structure: the original,
    which is also the stored record, is left as it is)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}…[{len(value) - limit} more characters not captured]"
    if isinstance(value, dict):
        return {k: clip(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [clip(v, limit) for v in value]
    return value
