"""Namespace tools (`{"type": "namespace", "name": "crm", "tools": [function, …]}`): function
tools grouped under a shared name, as the Codex CLI sends them. OpenAI's Responses API takes them
as they are and its calls carry `namespace`. Every other provider knows only flat function names,
so each function of a namespace goes upstream as `<namespace>__<name>`; the calls that come back
under that flat name are given their `name` and `namespace` again, and history items carrying a
`namespace` are flattened the same way, so the names round-trip on every provider.

A flat name longer than the 64 characters providers allow keeps its first 55 characters and a
hash of the whole, so two long names never collide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MAX_NAME", "SEPARATOR", "flat_name", "namespace_map"]

SEPARATOR = "__"
MAX_NAME = 64


def flat_name(namespace: str, name: str) -> str:
    flat = f"{namespace}{SEPARATOR}{name}"
    if len(flat) <= MAX_NAME:
        return flat
    digest = hashlib.sha1(flat.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{flat[:55]}_{digest}"


def namespace_map(tools: Iterable[Any] | None) -> dict[str, tuple[str, str]]:
    """flat name -> (namespace, name) for every function of every namespace tool."""
    found: dict[str, tuple[str, str]] = {}
    for tool in tools or ():
        if not isinstance(tool, Mapping) or tool.get("type") != "namespace":
            continue
        namespace = tool.get("name")
        for inner in tool.get("tools") or ():
            if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
                found[flat_name(str(namespace), inner["name"])] = (str(namespace), inner["name"])
    return found
