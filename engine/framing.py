"""Stream framings a mapping selects by name: bytes in, parsed JSON frames out.

``make_decoder(name)`` returns a fresh decoder per upstream stream. The mapping lint checks a
mapping's ``framing:`` against ``FRAMINGS`` so an unknown name fails at start-up, not mid-stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import orjson

from turnout.engine.errors import UpstreamError
from turnout.engine.sse import SSEDecoder, SSEEvent

__all__ = ["DONE", "FRAMINGS", "Frame", "FrameDecoder", "make_decoder"]

# OpenAI Chat (and compatibles) end the stream with ``data: [DONE]``; it is reported as a frame
# with this event name so a mapping can treat it as the end of the reply.
DONE = "[DONE]"

_BOM = b"\xef\xbb\xbf"
_SNIPPET = 200  # enough of a bad frame to recognise it, without logging a whole image payload


class Frame(NamedTuple):
    """One upstream message: the SSE event name (``None`` if absent or for NDJSON) and the parsed
    JSON payload (``None`` only for the ``[DONE]`` marker)."""

    event: str | None
    payload: object


class FrameDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[Frame]: ...

    def close(self) -> list[Frame]: ...


def _bad_frame(framing: str, raw: str | bytes, exc: Exception) -> UpstreamError:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    snippet = raw if len(raw) <= _SNIPPET else raw[:_SNIPPET] + "..."
    return UpstreamError(
        status=502,
        message=f"upstream sent a {framing} frame that is not JSON ({exc}): {snippet!r}",
        code="upstream_bad_frame",
        type="server_error",
        retry_after=None,
        provider=None,
    )


class _SSEFrames:
    """SSE events whose ``data`` is one JSON document each."""

    __slots__ = ("_sse",)

    def __init__(self) -> None:
        self._sse = SSEDecoder()

    def feed(self, chunk: bytes) -> list[Frame]:
        events = self._sse.feed(chunk)
        return self._frames(events) if events else []

    def close(self) -> list[Frame]:
        return self._frames(self._sse.close())

    @staticmethod
    def _frames(events: list[SSEEvent]) -> list[Frame]:
        loads = orjson.loads
        out: list[Frame] = []
        for ev in events:
            data = ev.data
            try:
                # orjson accepts surrounding JSON whitespace, so Anthropic's space-padded
                # payloads parse as is: no per-event strip() on the hot path.
                out.append(Frame(ev.event, loads(data)))
            except orjson.JSONDecodeError as exc:
                # Only non-JSON data gets here, so the special cases cost nothing normally.
                stripped = data.strip()
                if stripped == DONE:
                    out.append(Frame(DONE, None))
                elif stripped:
                    raise _bad_frame("sse", data, exc) from None
                # whitespace-only data (``data:`` alone) is a keep-alive: skipped
        return out


class _NDJSONFrames:
    """One JSON document per line (LF or CRLF); blank lines skipped."""

    __slots__ = ("_buf", "_started")

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes after the last LF
        self._started = False

    def feed(self, chunk: bytes) -> list[Frame]:
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._buf += chunk
            return []
        buf = self._buf
        if buf:
            buf += chunk[:cut]
            block = bytes(buf)
            buf.clear()
        else:
            block = chunk[:cut]
        buf += chunk[cut + 1 :]
        return self._frames(block.split(b"\n"))

    def close(self) -> list[Frame]:
        if not self._buf:
            return []
        block = bytes(self._buf)
        self._buf.clear()
        return self._frames([block])

    def _frames(self, lines: list[bytes]) -> list[Frame]:
        if not self._started:
            self._started = True
            if lines[0].startswith(_BOM):  # orjson rejects a BOM
                lines[0] = lines[0][3:]
        loads = orjson.loads
        out: list[Frame] = []
        for line in lines:
            try:
                # Parsing the bytes directly: no UTF-8 decode step (a trailing CR is JSON
                # whitespace, so CRLF needs no handling either).
                out.append(Frame(None, loads(line)))
            except orjson.JSONDecodeError as exc:
                if line.strip():
                    raise _bad_frame("ndjson", line, exc) from None
        return out


def _aws_eventstream() -> FrameDecoder:
    # Imported on first use: engine.eventstream needs ``Frame`` from this module, and mappings
    # that never stream from AWS do not pay for it.
    from turnout.engine.eventstream import EventStreamFrames

    return EventStreamFrames()


_FACTORIES: dict[str, Callable[[], FrameDecoder]] = {
    "sse": _SSEFrames,
    "ndjson": _NDJSONFrames,
    "aws-eventstream": _aws_eventstream,
}

FRAMINGS: frozenset[str] = frozenset(_FACTORIES)


def make_decoder(name: str) -> FrameDecoder:
    """A new decoder for one stream in framing ``name`` (one of ``FRAMINGS``)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown framing {name!r}; expected one of {', '.join(sorted(FRAMINGS))}"
        ) from None
    return factory()
