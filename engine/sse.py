"""Incremental Server-Sent Events decoder (WHATWG HTML, "Parsing an event stream").

Runs on every upstream byte, so the hot path works on whole blocks: each ``feed`` looks for the
last line terminator in the *new* chunk only (the buffered tail never holds one), decodes all
complete lines with a single ``bytes.decode`` and splits them with ``str.split``. Only complete
lines are decoded, so a multi-byte UTF-8 character split across chunks is never cut in half
(line terminators are ASCII and cannot occur inside a UTF-8 sequence).

Deliberate departures from the browser ``EventSource``:
- ``event`` is ``None`` when the event had no (or an empty) ``event:`` field, instead of
  ``"message"``: mappings tell "no name" apart from a provider that really sends ``message``.
- ``close()`` dispatches a final event that was not followed by a blank line (the spec drops
  it); providers that close the connection right after the last ``data:`` line would otherwise
  lose their last event.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent"]

_BOM = "\ufeff"


class SSEEvent(NamedTuple):
    """One dispatched event. ``id`` is the stream's last event ID (it persists across events, as
    the spec says), or ``None`` when none was set."""

    event: str | None
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed raw bytes, get complete events. Not thread-safe; one instance per stream."""

    __slots__ = (
        "_bom_checked",
        "_buf",
        "_closed",
        "_data",
        "_event",
        "_last_id",
        "_skip_lf",
        "retry",
    )

    def __init__(self) -> None:
        self._buf = bytearray()  # tail after the last line terminator: never contains CR or LF
        self._skip_lf = False  # previous chunk ended in CR: an LF starting the next one is its pair
        self._bom_checked = False
        self._closed = False
        self._data: list[str] = []
        self._event: str | None = None
        self._last_id: str | None = None
        # The spec's reconnection time (ms) from the last valid ``retry:`` field; kept for
        # callers that retry, ignored by the decoder itself.
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` and return the events it completed (possibly none)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:  # second half of a CRLF split across chunks
                chunk = chunk[1:]
                if not chunk:
                    return []
        # Fast reject: with no terminator in the new bytes no line can have completed. Searching
        # only ``chunk`` keeps 1-byte feeds of a long line linear instead of quadratic.
        cut = chunk.rfind(b"\n")
        if b"\r" in chunk:
            cut = max(cut, chunk.rfind(b"\r"))
        if cut < 0:
            self._buf += chunk
            return []
        buf = self._buf
        if buf:
            buf += chunk[: cut + 1]
            block = bytes(buf)
            buf.clear()
        else:
            block = chunk[: cut + 1]
        if cut + 1 < len(chunk):
            buf += chunk[cut + 1 :]
        elif chunk[cut] == 0x0D:
            # The chunk ends in CR: an LF opening the next chunk belongs to it. (A CR with
            # bytes after it in this chunk is already settled: those bytes are not an LF.)
            self._skip_lf = True
        if b"\r" in block:
            # Rare (Gemini/Vertex): normalise CRLF and lone CR to LF once per block.
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Drop the final terminator so split() does not yield a trailing empty line.
        return self._lines(block[:-1].decode("utf-8", "replace").split("\n"))

    def close(self) -> list[SSEEvent]:
        """End of stream: process an unterminated last line and dispatch a pending event."""
        if self._closed:
            return []
        self._closed = True
        lines: list[str] = []
        if self._buf:
            lines.append(self._buf.decode("utf-8", "replace"))
            self._buf.clear()
        lines.append("")  # act as the blank line the stream never sent
        return self._lines(lines)

    def _lines(self, lines: list[str]) -> list[SSEEvent]:
        if not self._bom_checked:
            # The first decoded block always holds the stream's first line, BOM included.
            self._bom_checked = True
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][1:]
        out: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append(SSEEvent(self._event or None, "\n".join(data), self._last_id))
                    data.clear()
                self._event = None  # the spec resets the type even when nothing is dispatched
                continue
            # ``data:`` dominates real streams: test it first.
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith(" ", 5) else line[5:])
                continue
            if line[0] == ":":
                continue  # comment / keep-alive (OpenRouter ": OPENROUTER PROCESSING")
            colon = line.find(":")
            if colon < 0:
                field, value = line, ""
            else:
                field = line[:colon]
                value = line[colon + 2 :] if line.startswith(" ", colon + 1) else line[colon + 1 :]
            if field == "data":
                data.append(value)
            elif field == "event":
                self._event = value
            elif field == "id":
                if "\0" not in value:  # spec: an id containing NUL is ignored
                    self._last_id = value or None
            elif field == "retry" and value.isascii() and value.isdigit():
                self.retry = int(value)
            # any other field name is ignored, as the spec says
        return out
