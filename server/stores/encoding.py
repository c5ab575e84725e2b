"""Encoding records for an SQL backend (SQLite, PostgreSQL), shared so both write the same bytes.

Documents are orjson bytes. Encoding runs on the event loop (a snapshot of the record at ``put``
time), so a large record is encoded a list element at a time (`encode_lists`), pausing for
other requests (and ``/health``) every `YIELD_EVERY_BYTES`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson

from .base import StoredResponse

__all__ = ["Encoded", "document", "encode_items", "encode_lists", "is_large"]

_dumps = orjson.dumps

# A 20 MB input is copied into several events: encode it in pieces, pausing between them.
YIELD_EVERY_BYTES = 2 * 1024 * 1024
_LARGE_TEXT_CHARS = 512 * 1024
_PROBE_NODES = 400  # a record with more nodes than this is treated as large: encoded in pieces


class Encoded:
    """A document column encoded already (piecewise, by `encode_lists`). A bytearray: built in
    place, and bound by the driver as a BLOB/bytea without another copy of a 100 MB value."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = data


def document(value: Any) -> bytes | bytearray:
    """A document column's bytes: encoded already by `encode_lists`, or orjson now."""
    return value.data if type(value) is Encoded else _dumps(value)


def is_large(record: StoredResponse) -> bool:
    """Whether the record's text may take long to encode: its input items, and its output
    (which the events repeat several times), hold over `_LARGE_TEXT_CHARS` characters. A few
    microseconds for an ordinary record; stops early either way."""
    output = record.response.get("output") if isinstance(record.response, dict) else None
    stack: list[Any] = [record.input_items, output, output, output, output]
    chars = nodes = 0
    while stack:
        node = stack.pop()
        nodes += 1
        if nodes > _PROBE_NODES:
            return True
        if isinstance(node, str):
            chars += len(node)
            if chars > _LARGE_TEXT_CHARS:
                return True
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


async def encode_lists(record: StoredResponse) -> StoredResponse:
    """`record` with its `events` and `input_items` encoded, pausing for the loop between
    elements every `YIELD_EVERY_BYTES` (the same bytes as one `orjson.dumps` of the list)."""
    since_pause = 0
    encoded: dict[str, Encoded] = {}
    for name in ("input_items", "events"):
        value = getattr(record, name)
        if not isinstance(value, list):  # None, or not a list: encoded whole as before
            continue
        out = bytearray(b"[")
        for i, element in enumerate(value):
            if i:
                out += b","
            part = _dumps(element)
            out += part
            since_pause += len(part)
            if since_pause >= YIELD_EVERY_BYTES:
                since_pause = 0
                await asyncio.sleep(0)
        out += b"]"
        encoded[name] = Encoded(out)
    return replace(record, **encoded)  # type: ignore[arg-type]


def encode_items(items: list[dict[str, Any]]) -> list[tuple[str | None, bytes]]:
    """(id, orjson bytes) per conversation item, encoded on the caller's thread (a snapshot)."""
    out: list[tuple[str | None, bytes]] = []
    for item in items:
        item_id = item.get("id")
        out.append((item_id if isinstance(item_id, str) else None, _dumps(item)))
    return out
