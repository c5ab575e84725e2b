"""The attempt trail as response headers: `x-turnout-deployment` (the deployment of the last
attempt) and `x-turnout-attempts` (how many upstream attempts the request made), on successful
replies and on error replies alike. No keys, no URLs: a deployment is named by its model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote

__all__ = ["error_trail_headers", "trail_headers"]


@lru_cache(maxsize=1024)
def _header_text(text: str) -> str:
    # The model string is the client's own text: percent-encode what a header cannot carry
    # (non-ASCII, control characters) rather than fail the reply after it was stored.
    return quote(text, safe="/:._-@+=~!$&'()*,;")


def trail_headers(deployment: str, attempts: int) -> dict[str, str]:
    return {"x-turnout-deployment": _header_text(deployment), "x-turnout-attempts": str(attempts)}


def error_trail_headers(attempts: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The headers of an error reply after `attempts` (none: no upstream was called)."""
    if not attempts:
        return {}
    return trail_headers(str(attempts[-1].get("deployment") or ""), len(attempts))
