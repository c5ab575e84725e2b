"""AWS event-stream (``application/vnd.amazon.eventstream``) decoding: Bedrock's stream framing.

Wire format of one message (all integers big-endian)::

    total_length u32 | headers_length u32 | prelude_crc u32      (CRC32 of the first 8 bytes)
    headers: (name_len u8, name utf-8, type u8, value)*           (headers_length bytes)
    payload                                                       (total - headers - 16 bytes)
    message_crc u32                                               (CRC32 of everything before it)

``EventStreamDecoder`` turns raw bytes into ``Message`` objects, whatever the chunking.
``EventStreamFrames`` is the ``aws-eventstream`` framing of ``engine.framing`` on top of it.
Header values come back as botocore's ``EventStreamBuffer`` returns them (the reference the tests
compare against): bools, ints, ``bytes`` for byte arrays, ``str`` for strings, an ``int`` of epoch
milliseconds for timestamps and the 16 raw ``bytes`` of a UUID.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import orjson

from turnout.engine.errors import UpstreamError

# No cycle: engine.framing imports this module only when a stream asks for the framing.
from turnout.engine.framing import Frame

__all__ = ["EventStreamDecoder", "EventStreamFrames", "Message", "encode_message"]

_PRELUDE = struct.Struct(">III")
_PRELUDE_LEN = 12
_OVERHEAD = _PRELUDE_LEN + 4  # prelude + trailing message CRC
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
# botocore's limits: a frame claiming more is corrupt (or hostile), not worth buffering.
_MAX_HEADERS_LENGTH = 128 * 1024
_MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
_TYPE_STRING = 7
# Header blocks repeat verbatim across a stream (event-type, content-type, message-type), so
# parsed blocks are cached per decoder; blocks that carry per-message values (ids, timestamps)
# would only churn the cache, hence the size bounds.
_CACHE_BLOCK_MAX = 256
_CACHE_ENTRIES = 64
_SNIPPET = 200


class Message(NamedTuple):
    """One decoded event-stream message."""

    headers: dict[str, object]
    payload: bytes


def _bad_frame(detail: str) -> UpstreamError:
    return UpstreamError(
        502,
        f"upstream sent a bad aws-eventstream frame: {detail}",
        code="upstream_bad_frame",
        type="server_error",
    )


def _parse_headers(block: bytes) -> dict[str, object]:
    """Parse one message's header block (``block`` is exactly ``headers_length`` bytes)."""
    headers: dict[str, object] = {}
    end = len(block)
    pos = 0
    try:
        while pos < end:
            name_end = pos + 1 + block[pos]
            name = block[pos + 1 : name_end].decode()
            kind = block[name_end]
            pos = name_end + 1
            value: object
            if kind == _TYPE_STRING:  # by far the most common: test it first
                size = _U16.unpack_from(block, pos)[0]
                pos += 2 + size
                value = block[pos - size : pos].decode()
            elif kind == 0:
                value = True
            elif kind == 1:
                value = False
            elif kind == 2:
                value = _I8.unpack_from(block, pos)[0]
                pos += 1
            elif kind == 3:
                value = _I16.unpack_from(block, pos)[0]
                pos += 2
            elif kind == 4:
                value = _I32.unpack_from(block, pos)[0]
                pos += 4
            elif kind in (5, 8):  # long, timestamp (epoch milliseconds)
                value = _I64.unpack_from(block, pos)[0]
                pos += 8
            elif kind == 6:
                size = _U16.unpack_from(block, pos)[0]
                pos += 2 + size
                value = block[pos - size : pos]
            elif kind == 9:
                pos += 16
                value = block[pos - 16 : pos]
            else:
                raise _bad_frame(f"header {name!r} has unknown type {kind}")
            # Slicing never raises, so a value running past the block shows up here.
            if pos > end:
                raise _bad_frame(f"header {name!r} runs past the header block")
            if name in headers:
                raise _bad_frame(f"duplicate header {name!r}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise _bad_frame(f"malformed headers ({exc})") from None
    return headers


class EventStreamDecoder:
    """Feed raw bytes, get complete messages. Not thread-safe; one instance per stream."""

    __slots__ = ("_buf", "_cache", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()  # unconsumed bytes: always the start of the next message
        # Bytes needed before the next message can be complete. Lets a feed that cannot finish
        # it return at once instead of re-reading and re-checking the prelude each time.
        self._need = _PRELUDE_LEN
        self._cache: dict[bytes, dict[str, object]] = {}

    def feed(self, chunk: bytes) -> list[Message]:
        """Decode ``chunk`` and return the messages it completed (possibly none)."""
        buf = self._buf
        buf += chunk
        if len(buf) < self._need:
            return []
        out: list[Message] = []
        end = len(buf)
        pos = 0
        unpack_prelude = _PRELUDE.unpack_from
        crc32 = zlib.crc32
        # The view is released before ``buf`` is resized: a bytearray with a live export
        # cannot shrink.
        with memoryview(buf) as view:
            while end - pos >= _PRELUDE_LEN:
                total, headers_len, prelude_crc = unpack_prelude(buf, pos)
                crc = crc32(view[pos : pos + 8])
                if crc != prelude_crc:
                    raise _bad_frame(
                        f"prelude CRC mismatch (expected {prelude_crc:#010x}, got {crc:#010x})"
                    )
                # Lengths are only trusted once the prelude CRC vouches for them.
                if headers_len > _MAX_HEADERS_LENGTH:
                    raise _bad_frame(f"headers length {headers_len} exceeds {_MAX_HEADERS_LENGTH}")
                payload_len = total - headers_len - _OVERHEAD
                if payload_len < 0:
                    raise _bad_frame(
                        f"total length {total} too small for {headers_len} bytes of headers"
                    )
                if payload_len > _MAX_PAYLOAD_LENGTH:
                    raise _bad_frame(f"payload length {payload_len} exceeds {_MAX_PAYLOAD_LENGTH}")
                if end - pos < total:
                    self._need = total
                    break
                body_end = pos + total - 4
                # Continue the CRC from the prelude's: the prelude is hashed only once.
                crc = crc32(view[pos + 8 : body_end], crc)
                message_crc = _U32.unpack_from(buf, body_end)[0]
                if crc != message_crc:
                    raise _bad_frame(
                        f"message CRC mismatch (expected {message_crc:#010x}, got {crc:#010x})"
                    )
                headers_end = pos + _PRELUDE_LEN + headers_len
                out.append(
                    Message(
                        self._headers(bytes(view[pos + _PRELUDE_LEN : headers_end])),
                        bytes(view[headers_end:body_end]),
                    )
                )
                pos += total
            else:
                self._need = _PRELUDE_LEN
        if pos:
            del buf[:pos]
        return out

    def close(self) -> list[Message]:
        """End of stream: there are no more messages; leftover bytes are a truncated one."""
        if self._buf:
            left = len(self._buf)
            self._buf.clear()
            self._need = _PRELUDE_LEN
            raise _bad_frame(f"stream ended inside a message ({left} bytes left over)")
        return []

    def _headers(self, block: bytes) -> dict[str, object]:
        if len(block) > _CACHE_BLOCK_MAX:
            return _parse_headers(block)
        cache = self._cache
        parsed = cache.get(block)
        if parsed is None:
            parsed = _parse_headers(block)
            if len(cache) >= _CACHE_ENTRIES:
                cache.clear()
            cache[block] = parsed
        return dict(parsed)  # a copy: callers may mutate their message's headers


def _pack_string(value: str, limit: int, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} bytes; the limit is {limit}")
    return raw


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (for tests and simulators)."""
    parts: list[bytes] = []
    for name, value in headers.items():
        raw_name = _pack_string(name, 255, f"header name {name!r}")
        raw_value = _pack_string(value, 0xFFFF, f"header {name!r}")
        parts += (bytes((len(raw_name),)), raw_name, b"\x07", _U16.pack(len(raw_value)), raw_value)
    block = b"".join(parts)
    prelude = struct.pack(">II", len(block) + len(payload) + _OVERHEAD, len(block))
    prelude += _U32.pack(zlib.crc32(prelude))
    message = prelude + block + payload
    return message + _U32.pack(zlib.crc32(message))


def _payload_text(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace")
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


class EventStreamFrames:
    """The ``aws-eventstream`` framing: one ``Frame`` per message.

    ``event`` is the ``:event-type`` header of events, ``"exception:" + :exception-type`` for
    modeled errors and ``"error:" + :error-code`` for unmodeled ones; ``payload`` is the parsed
    JSON payload.
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()

    def feed(self, chunk: bytes) -> list[Frame]:
        messages = self._decoder.feed(chunk)
        return [self._convert(m) for m in messages] if messages else []

    def close(self) -> list[Frame]:
        return [self._convert(m) for m in self._decoder.close()]

    def _convert(self, message: Message) -> Frame:
        headers, payload = message
        kind = headers.get(":message-type", "event")
        if kind == "event":
            event = headers.get(":event-type")
            try:
                # AWS sends an empty payload for events whose shape has no members.
                data = orjson.loads(payload) if payload else {}
            except orjson.JSONDecodeError as exc:
                raise _bad_frame(
                    f"{event!r} payload is not JSON ({exc}): {_payload_text(payload)!r}"
                ) from None
            return Frame(event if isinstance(event, str) else None, data)
        if kind == "exception":
            name = f"exception:{headers.get(':exception-type', '')}"
        elif kind == "error":
            name = f"error:{headers.get(':error-code', '')}"
        else:
            raise _bad_frame(f"unknown :message-type {kind!r}")
        # An error must reach the client even when its body is not the JSON it should be.
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            text = payload.decode("utf-8", "replace").strip()
            data = {"message": text or str(headers.get(":error-message", ""))}
        return Frame(name, data)
