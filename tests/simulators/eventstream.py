"""AWS event-stream frames (`application/vnd.amazon.eventstream`), encoded for Bedrock replies.

Frame = prelude (total length, headers length, CRC32 of those 8 bytes) + headers + payload +
CRC32 of everything before it. Only string headers (type 7) are needed: Bedrock sends no others.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

__all__ = ["CONTENT_TYPE", "encode_message", "event_frame", "exception_frame"]

CONTENT_TYPE = "application/vnd.amazon.eventstream"


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + b"\x07"
        + struct.pack(">H", len(raw_value))
        + raw_value
    )


def encode_message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One binary frame; header order is kept (recordings have a fixed order)."""
    raw_headers = b"".join(_header(k, v) for k, v in headers)
    prelude = struct.pack(">II", 12 + len(raw_headers) + len(payload) + 4, len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    """A normal event; the JSON has sorted keys, compact, as Bedrock sends it."""
    headers = [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ]
    return encode_message(headers, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))


def exception_frame(exception_type: str, payload: dict[str, Any]) -> bytes:
    """A modeled exception inside the stream (`modelStreamErrorException`, …), as recorded."""
    headers = [
        (":message-type", "exception"),
        (":exception-type", exception_type),
        (":content-type", "application/json"),
    ]
    return encode_message(headers, orjson.dumps(payload))
