"""engine.sse: WHATWG event-stream parsing, and chunking never changes the events."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paths import PROVIDER_FIXTURES
from turnout.engine.sse import SSEDecoder, SSEEvent

FIXTURES = PROVIDER_FIXTURES
SSE_FILES = sorted(FIXTURES.glob("**/*.sse"))


def _id(path: Path) -> str:
    return str(path.relative_to(FIXTURES))


def decode(*chunks: bytes) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out += d.feed(chunk)
    return out + d.close()


def split_at(raw: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def interesting_points(raw: bytes) -> list[int]:
    """Offsets that split a CRLF pair or a multi-byte UTF-8 character, plus line starts."""
    points = [i + 1 for i in range(len(raw) - 1) if raw[i : i + 2] == b"\r\n"]
    points += [i for i in range(1, len(raw)) if 0x80 <= raw[i] < 0xC0]  # continuation bytes
    points += [i + 1 for i in range(len(raw) - 1) if raw[i] in b"\r\n"]
    return points or [1]


# --- recorded provider streams --------------------------------------------------------------


def test_fixtures_present() -> None:
    assert SSE_FILES, f"no .sse fixtures under {FIXTURES}"


@pytest.mark.parametrize("path", SSE_FILES, ids=_id)
def test_fixture_one_byte_chunks(path: Path) -> None:
    raw = path.read_bytes()
    whole = decode(raw)
    assert whole
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == whole


@pytest.mark.parametrize("path", SSE_FILES, ids=_id)
def test_fixture_split_inside_crlf_and_utf8(path: Path) -> None:
    raw = path.read_bytes()
    assert decode(*split_at(raw, interesting_points(raw))) == decode(raw)


@pytest.mark.parametrize("path", SSE_FILES, ids=_id)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fixture_any_chunking_same_events(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    n = len(raw)
    random_points = st.lists(st.integers(1, n - 1), max_size=60)
    tricky_points = st.lists(st.sampled_from(interesting_points(raw)), max_size=30)
    points = data.draw(random_points) + data.draw(tricky_points)
    assert decode(*split_at(raw, points)) == decode(raw)


def test_gemini_crlf_stream() -> None:
    raw = (FIXTURES / "gemini" / "text_stream.sse").read_bytes()
    assert b"\r\n\r\n" in raw
    events = decode(raw)
    assert len(events) == 3
    for ev in events:
        assert ev.event is None
        assert "\r" not in ev.data
        assert "candidates" in orjson.loads(ev.data)


def test_openrouter_comment_lines_ignored() -> None:
    raw = (FIXTURES / "openai_chat" / "openrouter_stream_error.sse").read_bytes()
    assert raw.startswith(b": OPENROUTER PROCESSING")
    events = decode(raw)
    assert all("OPENROUTER" not in ev.data for ev in events)
    assert events[-1] == SSEEvent(None, "[DONE]", None)
    assert all(orjson.loads(ev.data) for ev in events[:-1])


def test_anthropic_event_names_and_padded_data_kept_verbatim() -> None:
    events = decode((FIXTURES / "anthropic" / "text_stream.sse").read_bytes())
    assert events[-1].event == "message_stop"
    assert events[-1].data.startswith('{"type":"message_stop"')
    assert events[-1].data.endswith(" }")  # padding is the JSON's business, not the decoder's
    for ev in events:
        assert orjson.loads(ev.data)["type"] == ev.event


# --- the spec, one rule at a time ------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    raw = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert decode(raw) == [SSEEvent("e", "a\nb"), SSEEvent(None, "c")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SSEEvent(None, "a\nb")]


def test_lone_cr_at_chunk_end_then_other_byte() -> None:
    assert decode(b"data: a\r", b"data: b\r", b"\r") == [SSEEvent(None, "a\nb")]


def test_lf_after_a_settled_cr_is_its_own_line_end() -> None:
    # Regression (found by the reference property): the chunk's last terminator is a CR with
    # bytes after it, so the LF opening the next chunk ends "data: b", not a CRLF pair.
    assert decode(b"data: a\rdata: b", b"\ndata: c\n\n") == [SSEEvent(None, "a\nb\nc")]


def test_cr_then_empty_chunk_then_lf() -> None:
    assert decode(b"data: a\r", b"", b"\n", b"\n") == [SSEEvent(None, "a")]


def test_comments_ignored() -> None:
    raw = b": hello\ndata: x\n:\n: more\n\n: trailing\n\n"
    assert decode(raw) == [SSEEvent(None, "x")]


def test_multiple_data_lines_joined() -> None:
    assert decode(b"data: 1\ndata:2\ndata:  3\n\n") == [SSEEvent(None, "1\n2\n 3")]


def test_only_one_space_stripped() -> None:
    assert decode(b"data:x\n\ndata: x\n\ndata:  x\n\nevent:  e\ndata: y\n\n") == [
        SSEEvent(None, "x"),
        SSEEvent(None, "x"),
        SSEEvent(None, " x"),
        SSEEvent(" e", "y"),
    ]


def test_event_without_data_not_dispatched_and_type_reset() -> None:
    assert decode(b"event: ping\n\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_empty_data_is_still_an_event() -> None:
    assert decode(b"data\n\ndata:\n\n") == [SSEEvent(None, ""), SSEEvent(None, "")]


def test_empty_event_name_is_none() -> None:
    assert decode(b"event:\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_unknown_fields_and_lines_without_colon_ignored() -> None:
    assert decode(b"foo: bar\nevent\nbaz\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_field_name_is_case_sensitive() -> None:
    assert decode(b"Data: x\n\n") == []


def test_id_persists_and_nul_ignored() -> None:
    raw = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\ndata: d\n\n"
    assert decode(raw) == [
        SSEEvent(None, "a", "1"),
        SSEEvent(None, "b", "1"),
        SSEEvent(None, "c", "1"),
        SSEEvent(None, "d", None),
    ]


def test_retry() -> None:
    d = SSEDecoder()
    d.feed(b"retry: 1500\n\nretry: soon\n\n")
    assert d.retry == 1500


def test_utf8_split_across_chunks() -> None:
    raw = "data: héllo wörld 😀 ✓\n\n".encode()
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == [
        SSEEvent(None, "héllo wörld 😀 ✓")
    ]


def test_invalid_utf8_replaced_not_raised() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [SSEEvent(None, "\ufffd\ufffd")]


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_bom_stripped_even_when_split(cut: int) -> None:
    raw = b"\xef\xbb\xbfdata: x\n\n"
    assert decode(raw[:cut], raw[cut:]) == [SSEEvent(None, "x")]


def test_bom_only_at_stream_start() -> None:
    # A BOM later on is part of the field name, so the line is an unknown field.
    assert decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [SSEEvent(None, "a")]


@pytest.mark.parametrize("tail", [b"data: x", b"data: x\n", b"data: x\r", b"data: x\r\n"])
def test_close_flushes_final_event(tail: bytes) -> None:
    d = SSEDecoder()
    assert d.feed(tail) == []
    assert d.close() == [SSEEvent(None, "x")]
    assert d.close() == []


def test_close_without_pending_event() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: x\n\n: bye") == [SSEEvent(None, "x")]
    assert d.close() == []


def test_long_line_in_one_byte_chunks_is_linear() -> None:
    # 200 kB in 1-byte feeds: quadratic rescanning of the buffer would take minutes.
    payload = b"x" * 200_000
    d = SSEDecoder()
    for i in range(len(payload)):
        d.feed(payload[i : i + 1])
    assert d.feed(b"\n\n") == []  # "xxxx..." is a field with no colon: ignored
    assert d.feed(b"data: " + payload + b"\n\n") == [SSEEvent(None, payload.decode())]


# --- against a naive reference implementation -----------------------------------------------

_EOL = re.compile(r"\r\n|\r|\n")


def reference(raw: bytes) -> list[SSEEvent]:
    """The spec's algorithm written the obvious way, on the whole stream at once."""
    text = raw.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    lines = _EOL.split(text)
    out: list[SSEEvent] = []
    data: list[str] | None = None
    event = ""
    last_id = ""
    for line in [*lines, ""]:
        if line == "":
            if data is not None:
                out.append(SSEEvent(event or None, "\n".join(data), last_id or None))
            data, event = None, ""
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data = [*(data or []), value]
        elif field == "event":
            event = value
        elif field == "id" and "\0" not in value:
            last_id = value
    return out


_value = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
_line = st.one_of(
    st.builds(lambda v: "data:" + v, _value),
    st.builds(lambda v: "data: " + v, _value),
    st.builds(lambda v: "event: " + v, _value),
    st.builds(lambda v: "id: " + v, _value),
    st.builds(lambda v: ":" + v, _value),
    st.just("data"),
    st.just(""),
    st.builds(lambda v: "retry: " + v, st.from_regex(r"[0-9]{1,4}", fullmatch=True)),
    _value,
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_line, max_size=25),
    eols=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=25),
    bom=st.booleans(),
    data=st.data(),
)
def test_matches_reference_under_any_chunking(
    lines: list[str], eols: list[str], bom: bool, data: st.DataObject
) -> None:
    text = "".join(line + eols[i % len(eols)] for i, line in enumerate(lines))
    raw = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    expected = reference(raw)
    assert decode(raw) == expected
    if len(raw) > 1:
        points = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=20))
        assert decode(*split_at(raw, points)) == expected
