"""A dialect-neutral description of one assistant turn, plus deterministic usage numbers.

Reply modes become a `Turn`; each dialect renderer turns a `Turn` into native bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "Ids",
    "Search",
    "Turn",
    "Usage",
    "compute_usage",
    "last_user_text",
    "pieces",
    "prompt_chars",
    "search_tool",
]

Stop = Literal["end", "tool", "max_tokens"]

# Keys whose string values count as prompt text for the fake token arithmetic.
_TEXT_KEYS = frozenset({"text", "content", "system", "instructions", "input", "output"})


@dataclass(frozen=True)
class Usage:
    """Totals as Responses counts them; each renderer re-splits them the native way.

    input_total includes cached and cache_write; output_total includes reasoning.
    """

    input_total: int
    cached: int
    cache_write: int
    output_total: int
    reasoning: int


@dataclass(frozen=True)
class Search:
    """One web search and the answer citing it (modes.WebSearch, once the request allowed it).

    `pieces` are the answer's text pieces with the results each cites (indices into
    `results`); `error` is the provider's error code for a search that failed.
    """

    query: str
    results: list[tuple[str, str]]  # (url, title)
    pieces: list[tuple[str, tuple[int, ...]]]
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.pieces)


@dataclass(frozen=True)
class Turn:
    model: str
    text: str | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    thought: str | None = None
    signature: str | None = None
    call_signature: str | None = None  # Gemini thoughtSignature on the first functionCall
    stop: Stop = "end"
    usage: Usage = Usage(0, 0, 0, 0, 0)
    # Generated images: (final base64 PNG, partial base64 PNGs, revised prompt).
    images: list[tuple[str, list[str], str]] = field(default_factory=list)
    search: Search | None = None  # a web search before the answer (`text` is its answer)


class Ids:
    """Per-simulator id minting, so ids are unique and predictable within a test."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def mint(self, prefix: str) -> str:
        return f"{prefix}sim{next(self._counter):08d}"


def prompt_chars(body: Any) -> int:
    """Characters (code points) of every prompt string in a native request body."""
    total = 0

    def walk(node: Any, key: str | None) -> None:
        nonlocal total
        if isinstance(node, str):
            if key in _TEXT_KEYS:
                total += len(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(body, None)
    return total


def args_json(args: dict[str, Any]) -> str:
    return orjson.dumps(args).decode()


def compute_usage(
    body: Any, text: str | None, calls: list[tuple[str, dict[str, Any]]], thought: str | None
) -> Usage:
    """input = prompt chars (a quarter of it cached, an eighth cache-written);
    output = len(text) + len(each call's JSON args) + len(thought); reasoning = len(thought)."""
    input_total = prompt_chars(body)
    reasoning = len(thought or "")
    visible = len(text or "") + sum(len(args_json(a)) for _, a in calls)
    return Usage(
        input_total=input_total,
        cached=input_total // 4,
        cache_write=input_total // 8,
        output_total=visible + reasoning,
        reasoning=reasoning,
    )


def pieces(text: str, size: int = 5) -> list[str]:
    """Split text into stream deltas of `size` code points (never empty)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def search_tool(dialect: str, body: dict[str, Any]) -> Any:
    """The provider's own web search tool in a (validated) request, or None: Anthropic's
    `web_search_20250305` server tool, Gemini's `googleSearch` (proto JSON: or `google_search`).
    """
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if dialect == "anthropic" and str(tool.get("type", "")).startswith("web_search_"):
            return tool
        if dialect == "gemini":
            found = tool.get("googleSearch", tool.get("google_search"))
            if found is not None:
                return found
    return None


def last_user_text(dialect: str, body: dict[str, Any]) -> str:
    """The text of the last user text block/part, searching newest message first."""
    if dialect == "anthropic":
        return _last_text(body.get("messages"), "role", "user", "content", _anthropic_block)
    if dialect == "gemini":
        return _last_text(body.get("contents"), "role", "user", "parts", _gemini_part)
    if dialect == "chat":
        return _last_text(body.get("messages"), "role", "user", "content", _chat_part)
    if dialect == "bedrock":
        return _last_text(body.get("messages"), "role", "user", "content", _bedrock_block)
    source = body.get("input")
    if isinstance(source, str):
        return source
    return _last_text(source, "role", "user", "content", _responses_part)


def _last_text(messages: Any, role_key: str, role: str, content_key: str, pick: Any) -> str:
    for message in reversed(messages or []):
        if not isinstance(message, dict) or message.get(role_key, "user") != role:
            continue
        if message.get("type", "message") != "message":
            continue
        content = message.get(content_key)
        if isinstance(content, str):
            return content
        for block in reversed(content or []):
            text = pick(block)
            if text is not None:
                return str(text)
    return ""


def _anthropic_block(block: Any) -> str | None:
    return block.get("text") if isinstance(block, dict) and block.get("type") == "text" else None


def _gemini_part(part: Any) -> str | None:
    if isinstance(part, dict) and "text" in part and not part.get("thought"):
        return str(part["text"])
    return None


def _bedrock_block(block: Any) -> str | None:
    return block.get("text") if isinstance(block, dict) and "text" in block else None


def _chat_part(part: Any) -> str | None:
    return part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None


def _responses_part(part: Any) -> str | None:
    if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
        return str(part.get("text"))
    return None
