"""Web searches and citations as the Responses API shows them: a `web_search_call` item's
`action`, and `url_citation` annotations on an `output_text` part.

Providers count a cited span in their own units (Gemini in UTF-8 bytes of the text part,
others in characters, or as a whole text block); OpenAI's `start_index`/`end_index` are
character (code point) offsets into the part's text, the end exclusive, so
`text[start_index:end_index]` is the cited span. Pure helpers for the builder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

__all__ = ["Span", "resolve_spans", "search_action", "url_citation", "utf8_to_char"]


def utf8_to_char(text: str, offset: int, data: bytes | None = None) -> int:
    """The character offset in `text` of its UTF-8 byte `offset` (`data` is `text` encoded, to
    convert many offsets with one encoding). Clamped into the text; an offset inside a
    multi-byte character means that character's start."""
    if data is None:
        data = text.encode("utf-8", "surrogatepass")
    end = max(0, min(offset, len(data)))
    while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte
        end -= 1
    return len(data[:end].decode("utf-8", "surrogatepass"))


def url_citation(url: str, title: str, start: int, end: int) -> dict[str, Any]:
    return {
        "type": "url_citation",
        "start_index": start,
        "end_index": end,
        "url": url,
        "title": title,
    }


class Span(NamedTuple):
    """A citation with explicit offsets, waiting for its text part to be complete."""

    url: str
    title: str
    start: int
    end: int
    utf8: bool  # offsets count UTF-8 bytes (else characters)


def resolve_spans(text: str, spans: Iterable[Span]) -> list[dict[str, Any]]:
    """The url_citations of `spans` over `text`, in arrival order: offsets in characters and
    clamped into the text; empty spans and repeats (a provider resending its metadata) left
    out."""
    data: bytes | None = None
    seen: set[tuple[str, str, int, int]] = set()
    out: list[dict[str, Any]] = []
    for span in spans:
        start, end = span.start, span.end
        if span.utf8:
            if data is None:
                data = text.encode("utf-8", "surrogatepass")
            start, end = utf8_to_char(text, start, data), utf8_to_char(text, end, data)
        start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
        key = (span.url, span.title, start, end)
        if end <= start or key in seen:
            continue
        seen.add(key)
        out.append(url_citation(span.url, span.title, start, end))
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str) and v]
    return []


def search_action(
    query: Any, queries: Any, arguments: str, sources: Sequence[str] | None
) -> dict[str, Any]:
    """A `web_search_call` item's `search` action. `query`/`queries` as the provider reported
    them, else read from the search's `arguments` (the JSON object the model wrote, streamed
    like a tool call's: `{"query": …}`); `sources` (URLs) only when given."""
    found = _strings(queries)
    if not found and not _strings(query) and arguments.strip():
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            query = parsed.get("query")
            found = _strings(parsed.get("queries"))
    first = _strings(query)[:1] or found[:1]
    action: dict[str, Any] = {"type": "search"}
    if first:
        action["query"] = first[0]
        action["queries"] = found or first
    if sources is not None:
        action["sources"] = [{"type": "url", "url": url} for url in dict.fromkeys(sources)]
    return action
