"""engine.eventstream: AWS event-stream decoding, checked against botocore's EventStreamBuffer."""

from __future__ import annotations

import base64
import itertools
import struct
import zlib
from pathlib import Path

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paths import PROVIDER_FIXTURES
from turnout.engine.errors import UpstreamError
from turnout.engine.eventstream import EventStreamDecoder, Message, encode_message
from turnout.engine.framing import FRAMINGS, Frame, make_decoder

BEDROCK = PROVIDER_FIXTURES / "bedrock"
STREAMS = sorted(BEDROCK.glob("*.eventstream.b64.txt"))
EXCEPTION_FIXTURE = BEDROCK / "model_stream_error_exception.eventstream.b64.txt"
_SUFFIX = ".eventstream.b64.txt"


def _id(path: Path) -> str:
    return path.name.removesuffix(_SUFFIX)


def raw_body(path: Path) -> bytes:
    # base64 of the exact HTTP body, wrapped at 76 columns (the default decoder skips newlines)
    return base64.b64decode(path.read_bytes())


def expected_frames(path: Path) -> list[dict[str, object]]:
    data = orjson.loads(
        path.with_name(path.name.removesuffix(_SUFFIX) + ".frames.json").read_bytes()
    )
    assert isinstance(data, list)
    return data


def decode(*chunks: bytes) -> list[Message]:
    d = EventStreamDecoder()
    out: list[Message] = []
    for chunk in chunks:
        out += d.feed(chunk)
    return out + d.close()


def botocore_decode(raw: bytes) -> list[tuple[dict[str, object], bytes]]:
    buf = EventStreamBuffer()
    buf.add_data(raw)
    return [(m.headers, m.payload) for m in buf]


def split_at(raw: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def frames(*chunks: bytes) -> list[Frame]:
    d = make_decoder("aws-eventstream")
    out: list[Frame] = []
    for chunk in chunks:
        out += d.feed(chunk)
    return out + d.close()


def assert_bad_frame(*chunks: bytes) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        decode(*chunks)
    err = info.value
    assert (err.status, err.code, err.type) == (502, "upstream_bad_frame", "server_error")
    return err


# A test-only encoder for every header type (``encode_message`` writes strings only).
_INTS = {"byte": (2, ">b"), "short": (3, ">h"), "int": (4, ">i"), "long": (5, ">q"),
         "timestamp": (8, ">q")}  # fmt: skip


def header(name: str, kind: str, value: object) -> bytes:
    raw_name = name.encode()
    out = bytes((len(raw_name),)) + raw_name
    if kind == "bool":
        return out + (b"\x00" if value else b"\x01")
    if kind in _INTS:
        code, fmt = _INTS[kind]
        return out + bytes((code,)) + struct.pack(fmt, value)
    if kind == "bytes":
        assert isinstance(value, bytes)
        return out + b"\x06" + struct.pack(">H", len(value)) + value
    if kind == "string":
        assert isinstance(value, str)
        raw = value.encode()
        return out + b"\x07" + struct.pack(">H", len(raw)) + raw
    assert kind == "uuid"
    assert isinstance(value, bytes)
    return out + b"\x09" + value


def message(block: bytes, payload: bytes) -> bytes:
    """A message with a raw header block and correct CRCs."""
    prelude = struct.pack(">II", len(block) + len(payload) + 16, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


# --- fixtures ---------------------------------------------------------------------------------


def test_fixtures_present() -> None:
    assert len(STREAMS) >= 4, f"no bedrock event-stream fixtures under {BEDROCK}"


@pytest.mark.parametrize("path", STREAMS, ids=_id)
def test_fixture_matches_frames_json_and_botocore(path: Path) -> None:
    raw = raw_body(path)
    messages = decode(raw)
    got = [{"headers": m.headers, "payload": orjson.loads(m.payload)} for m in messages]
    assert got == expected_frames(path)
    assert [tuple(m) for m in messages] == botocore_decode(raw)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_chunking_gives_the_same_messages(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(STREAMS), label="fixture")
    raw = raw_body(path)
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=40), label="cuts")
    assert decode(*split_at(raw, points)) == decode(raw)


def test_byte_at_a_time() -> None:
    raw = raw_body(STREAMS[0])
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == decode(raw)


def test_empty_stream_and_empty_chunks() -> None:
    assert decode() == []
    assert decode(b"", b"") == []
    raw = raw_body(EXCEPTION_FIXTURE)
    assert decode(b"", raw, b"") == decode(raw)


# --- corruption -------------------------------------------------------------------------------


def test_every_flipped_bit_is_detected() -> None:
    raw = raw_body(EXCEPTION_FIXTURE)  # prelude, 3 headers, JSON payload, CRC: every region
    for i in range(len(raw)):
        for bit in range(8):
            corrupt = bytearray(raw)
            corrupt[i] ^= 1 << bit
            assert_bad_frame(bytes(corrupt))


@pytest.mark.parametrize(
    ("region", "offset"),
    [("total length", 2), ("headers length", 6), ("prelude crc", 9), ("header name", 14),
     ("header value", 40), ("payload", -20), ("message crc", -1)],
)  # fmt: skip
def test_flipped_bit_regions(region: str, offset: int) -> None:
    raw = bytearray(raw_body(EXCEPTION_FIXTURE))
    raw[offset] ^= 0x10
    err = assert_bad_frame(bytes(raw))
    assert "CRC" in err.message or "length" in err.message, region


def test_truncated_stream_raises_at_close() -> None:
    raw = raw_body(EXCEPTION_FIXTURE)
    for cut in range(1, len(raw)):
        d = EventStreamDecoder()
        assert d.feed(raw[:cut]) == []
        with pytest.raises(UpstreamError, match="stream ended inside a message"):
            d.close()


def _prelude(total: int, headers_len: int) -> bytes:
    head = struct.pack(">II", total, headers_len)
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize(
    ("total", "headers_len", "match"),
    [
        (15, 0, "too small"),
        (16 + 10, 11, "too small"),
        (16 + 128 * 1024 + 1, 128 * 1024 + 1, "headers length"),
        (16 + 24 * 1024 * 1024 + 1, 0, "payload length"),
    ],
)
def test_impossible_lengths_fail_at_the_prelude(total: int, headers_len: int, match: str) -> None:
    # Raised from the 12-byte prelude alone: nothing is buffered waiting for the claimed size.
    d = EventStreamDecoder()
    with pytest.raises(UpstreamError, match=match):
        d.feed(_prelude(total, headers_len))


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (header("a", "string", "x") + header("a", "string", "y"), "duplicate header"),
        (b"\x01a\x0a", "unknown type 10"),
        (b"\x01a\x07\x00\x09abc", "runs past"),
        (b"\x01a\x04\x00\x00", "malformed headers|runs past"),
        (b"\x05ab", "malformed headers"),
        (b"\x01\xff\x07\x00\x00", "malformed headers"),  # name not UTF-8
        (b"\x01a\x07\x00\x01\xff", "malformed headers"),  # value not UTF-8
    ],
)
def test_malformed_headers(block: bytes, match: str) -> None:
    with pytest.raises(UpstreamError, match=match):
        decode(message(block, b"{}"))


# --- header types and encoding ----------------------------------------------------------------


def test_all_header_types_match_botocore() -> None:
    uuid = bytes(range(16))
    block = b"".join(
        (
            header("t", "bool", True),
            header("f", "bool", False),
            header("b", "byte", -7),
            header("s", "short", -30000),
            header("i", "int", 2**31 - 1),
            header("l", "long", -(2**63)),
            header("ba", "bytes", b"\x00\xffraw"),
            header("str", "string", "héllo ☃"),
            header("ts", "timestamp", 1_700_000_000_123),
            header("u", "uuid", uuid),
            header("empty", "string", ""),
        )
    )
    raw = message(block, b"payload")
    (msg,) = decode(raw)
    assert msg == Message(
        {
            "t": True, "f": False, "b": -7, "s": -30000, "i": 2**31 - 1, "l": -(2**63),
            "ba": b"\x00\xffraw", "str": "héllo ☃", "ts": 1_700_000_000_123, "u": uuid,
            "empty": "",
        },
        b"payload",
    )  # fmt: skip
    assert [tuple(msg)] == botocore_decode(raw)


def test_headers_are_private_to_each_message() -> None:
    one = encode_message({":event-type": "a"}, b"{}")
    first, second = decode(one + one)
    first.headers["x"] = 1
    assert second.headers == {":event-type": "a"}


_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(
    lambda s: len(s.encode()) <= 255
)


@settings(max_examples=100, deadline=None)
@given(
    headers=st.dictionaries(_names, st.text(st.characters(codec="utf-8"), max_size=40)),
    payload=st.binary(max_size=300),
)
def test_encode_decode_round_trip(headers: dict[str, str], payload: bytes) -> None:
    raw = encode_message(headers, payload)
    assert decode(raw) == [Message(dict(headers), payload)]
    assert botocore_decode(raw) == [(headers, payload)]


def test_encode_limits() -> None:
    with pytest.raises(ValueError, match="header name"):
        encode_message({"x" * 256: "v"}, b"")
    with pytest.raises(ValueError, match="limit is 65535"):
        encode_message({"k": "v" * 65536}, b"")


def test_large_payload_split_across_many_chunks() -> None:
    payload = orjson.dumps({"text": "x" * 200_000})
    raw = encode_message({":event-type": "big", ":message-type": "event"}, payload) * 3
    chunks = [raw[i : i + 997] for i in range(0, len(raw), 997)]
    assert (
        decode(*chunks) == [Message({":event-type": "big", ":message-type": "event"}, payload)] * 3
    )


# --- the aws-eventstream framing --------------------------------------------------------------


def test_framing_registered() -> None:
    assert "aws-eventstream" in FRAMINGS


@pytest.mark.parametrize("path", STREAMS, ids=_id)
def test_framing_events(path: Path) -> None:
    want = []
    for f in expected_frames(path):
        assert isinstance(f, dict)
        headers = f["headers"]
        assert isinstance(headers, dict)
        if headers[":message-type"] == "event":
            want.append(Frame(headers[":event-type"], f["payload"]))
        else:
            want.append(Frame("exception:" + headers[":exception-type"], f["payload"]))
    raw = raw_body(path)
    assert frames(raw) == want
    assert frames(*(raw[i : i + 7] for i in range(0, len(raw), 7))) == want


def test_framing_exception_fixture() -> None:
    assert frames(raw_body(EXCEPTION_FIXTURE)) == [
        Frame(
            "exception:modelStreamErrorException",
            {
                "message": "Model Stream Error",
                "originalStatusCode": 500,
                "originalMessage": "The model stream failed.",
            },
        )
    ]


def test_framing_converse_stream_order() -> None:
    events = [f.event for f in frames(raw_body(BEDROCK / f"converse_stream_tool_use{_SUFFIX}"))]
    assert events[0] == "messageStart"
    assert events[-2:] == ["messageStop", "metadata"]
    assert "contentBlockStart" in events


def test_framing_error_messages() -> None:
    error = {":message-type": "error", ":error-code": "InternalFailure"}
    raw = b"".join(
        (
            encode_message(error, b'{"message": "boom"}'),
            encode_message(error, b"plain text failure"),
            encode_message({**error, ":error-message": "from header"}, b""),
            encode_message({":message-type": "exception", ":exception-type": "x"}, b"oops"),
        )
    )
    assert frames(raw) == [
        Frame("error:InternalFailure", {"message": "boom"}),
        Frame("error:InternalFailure", {"message": "plain text failure"}),
        Frame("error:InternalFailure", {"message": "from header"}),
        Frame("exception:x", {"message": "oops"}),
    ]


def test_framing_event_details() -> None:
    raw = encode_message({":event-type": "initial-response", ":message-type": "event"}, b"")
    raw += encode_message({":content-type": "application/json"}, b"[1]")  # no type: an event
    assert frames(raw) == [Frame("initial-response", {}), Frame(None, [1])]


def test_framing_rejects_non_json_event_and_unknown_message_type() -> None:
    bad_json = encode_message({":event-type": "e", ":message-type": "event"}, b"{nope")
    with pytest.raises(UpstreamError, match="'e' payload is not JSON") as info:
        frames(bad_json)
    assert info.value.code == "upstream_bad_frame"
    with pytest.raises(UpstreamError, match="unknown :message-type 'weird'"):
        frames(encode_message({":message-type": "weird"}, b"{}"))


def test_framing_truncated_stream() -> None:
    raw = raw_body(EXCEPTION_FIXTURE)
    d = make_decoder("aws-eventstream")
    assert d.feed(raw[:-1]) == []
    with pytest.raises(UpstreamError, match="stream ended inside a message"):
        d.close()
