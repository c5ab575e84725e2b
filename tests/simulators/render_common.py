"""What a renderer produces: wire frames (one flush each) and their content type."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JSON", "SSE", "Rendered"]

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


@dataclass(frozen=True)
class Rendered:
    frames: list[bytes]  # a non-stream reply is a single frame
    content_type: str
    stream: bool
