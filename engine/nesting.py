"""How deeply a client's JSON may nest: ``MAX_DEPTH`` levels, checked before anything recurses.

A request body is parsed by orjson (1024 levels), but what Turnout does with it afterwards is
shallower: orjson refuses to serialise past 254 levels (the provider request, the stored record,
the SSE events all wrap the client's values a few levels deeper), and Python recursion in
filters and schema walks is bounded too. So the client hears about it first, as a 400 naming the
field, instead of a 500 from wherever the first recursion gives up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_DEPTH", "deep_path", "param_of"]

# Levels of objects/arrays inside one value (the value itself is level 1). Far above any real
# JSON Schema or tool argument, far below orjson's 254 plus the levels Turnout wraps around it.
MAX_DEPTH = 100

# How much of the path the error names: OpenAI's style (`tools[0].parameters`,
# `text.format.schema`), not the hundred keys inside it.
_PARAM_SEGMENTS = 3

_Link = tuple[str | int, "_Link | None"] | None


def deep_path(value: Any, limit: int = MAX_DEPTH) -> list[str | int] | None:
    """The path to the first container nested deeper than `limit`, or None when none is.

    Iterative on purpose: a recursive walk would be the very thing that overflows.
    """
    stack: list[tuple[Any, int, _Link]] = [(value, 1, None)]
    while stack:
        node, depth, link = stack.pop()
        if isinstance(node, dict):
            children: Any = node.items()
        elif isinstance(node, list):
            children = enumerate(node)
        else:
            continue
        if depth > limit:
            return _unlink(link)
        stack.extend((child, depth + 1, (key, link)) for key, child in children)
    return None


def param_of(path: list[str | int]) -> str:
    """The first segments of `path` in OpenAI's param style (`tools[0].parameters`)."""
    text = ""
    for segment in path[:_PARAM_SEGMENTS]:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def _unlink(link: _Link) -> list[str | int]:
    path: list[str | int] = []
    while link is not None:
        path.append(link[0])
        link = link[1]
    path.reverse()
    return path
