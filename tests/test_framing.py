"""engine.framing: SSE and NDJSON framings yield parsed JSON frames, whatever the chunking."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paths import PROVIDER_FIXTURES
from turnout.engine.errors import UpstreamError
from turnout.engine.framing import DONE, FRAMINGS, Frame, make_decoder

FIXTURES = PROVIDER_FIXTURES
SSE_FILES = sorted(FIXTURES.glob("**/*.sse"))
CHUNK_FILES = sorted(FIXTURES.glob("**/*.chunks.txt"))


def _id(path: Path) -> str:
    return str(path.relative_to(FIXTURES))


def frames(name: str, *chunks: bytes) -> list[Frame]:
    d = make_decoder(name)
    out: list[Frame] = []
    for chunk in chunks:
        out += d.feed(chunk)
    return out + d.close()


def split_at(raw: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def test_framings_listed() -> None:
    assert frozenset({"sse", "ndjson", "aws-eventstream"}) == FRAMINGS


def test_unknown_framing() -> None:
    with pytest.raises(ValueError, match=r"unknown framing 'aws'.*ndjson, sse"):
        make_decoder("aws")


def test_fixtures_present() -> None:
    assert SSE_FILES, f"no .sse fixtures under {FIXTURES}"
    assert CHUNK_FILES, f"no .chunks.txt fixtures under {FIXTURES}"


# --- sse -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SSE_FILES, ids=_id)
def test_sse_fixture_frames(path: Path) -> None:
    out = frames("sse", path.read_bytes())
    assert out
    provider = path.parent.name
    if provider == "openai_chat":
        assert out[-1] == Frame(DONE, None)
        out = out[:-1]
    assert all(isinstance(f.payload, dict) for f in out)
    if provider in ("anthropic", "openai_responses"):
        # The event line names the payload's type in both dialects.
        assert all(f.event == f.payload["type"] for f in out if isinstance(f.payload, dict))
    else:
        assert all(f.event is None for f in out)


@pytest.mark.parametrize("path", SSE_FILES, ids=_id)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sse_fixture_any_chunking(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    points = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=80))
    assert frames("sse", *split_at(raw, points)) == frames("sse", raw)


def test_anthropic_trailing_spaces_in_json() -> None:
    raw = (FIXTURES / "anthropic" / "text_stream.sse").read_bytes()
    assert b'"message_stop"    }' in raw
    out = frames("sse", raw)
    assert out[-1] == Frame("message_stop", {"type": "message_stop"})
    # ... and padding after the closing brace too
    assert frames("sse", b'event: x\ndata: {"a": 1}   \t \n\n') == [Frame("x", {"a": 1})]


def test_gemini_crlf() -> None:
    out = frames("sse", (FIXTURES / "gemini" / "text_stream.sse").read_bytes())
    assert len(out) == 3
    assert all(f.event is None and isinstance(f.payload, dict) for f in out)


def test_openrouter_comments() -> None:
    out = frames("sse", (FIXTURES / "openai_chat" / "openrouter_stream_error.sse").read_bytes())
    assert len(out) == 5
    assert out[-1] == Frame(DONE, None)
    last = out[-2].payload
    assert isinstance(last, dict)
    assert last["error"]["message"] == "Token limit reached"


@pytest.mark.parametrize("done", [b"data: [DONE]\n\n", b"data:[DONE]  \n\n", b"data: [DONE]"])
def test_done_marker(done: bytes) -> None:
    assert frames("sse", b'data: {"a":1}\n\n' + done) == [Frame(None, {"a": 1}), Frame(DONE, None)]


def test_sse_blank_data_is_keepalive() -> None:
    assert frames("sse", b"data:\n\ndata:   \n\nevent: ping\n\ndata: 1\n\n") == [Frame(None, 1)]


def test_sse_multiline_json() -> None:
    assert frames("sse", b'data: {"a":\ndata: [1,\ndata: 2]}\n\n') == [Frame(None, {"a": [1, 2]})]


@pytest.mark.parametrize("bad", [b"data: {oops\n\n", b"data: hello\n\n", b'data: {"a":1} x\n\n'])
def test_sse_non_json_is_upstream_error(bad: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        frames("sse", bad)
    err = info.value
    assert (err.status, err.code, err.type) == (502, "upstream_bad_frame", "server_error")
    assert err.retry_after is None
    assert err.provider is None
    assert "not JSON" in err.message


def test_bad_frame_message_is_truncated() -> None:
    with pytest.raises(UpstreamError) as info:
        frames("sse", b"data: " + b"x" * 100_000 + b"\n\n")
    assert len(info.value.message) < 400


def test_decoders_are_independent() -> None:
    a, b = make_decoder("sse"), make_decoder("sse")
    assert a.feed(b'data: {"a"') == []
    assert b.feed(b"data: 2\n\n") == [Frame(None, 2)]
    assert a.feed(b":1}\n\n") == [Frame(None, {"a": 1})]


# --- ndjson ----------------------------------------------------------------------------------


def _chunk_lines(path: Path) -> list[object]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("path", CHUNK_FILES, ids=_id)
def test_ndjson_chunks_fixture_round_trip(path: Path) -> None:
    raw = path.read_bytes()
    expected = _chunk_lines(path)
    assert [f.payload for f in frames("ndjson", raw)] == expected
    assert all(f.event is None for f in frames("ndjson", raw))
    # Re-serialised (as a simulator would replay it) it decodes to the same objects.
    again = b"".join(orjson.dumps(p) + b"\n" for p in expected)
    assert [f.payload for f in frames("ndjson", again)] == expected


@pytest.mark.parametrize("path", CHUNK_FILES, ids=_id)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_ndjson_fixture_any_chunking(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    points = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=80))
    assert [f.payload for f in frames("ndjson", *split_at(raw, points))] == _chunk_lines(path)


def test_ndjson_one_byte_chunks_utf8_crlf_bom() -> None:
    raw = b'\xef\xbb\xbf{"t": "h\xc3\xa9 \xf0\x9f\x98\x80"}\r\n\r\n  \n[1]\n2'
    expected = [Frame(None, {"t": "hé 😀"}), Frame(None, [1]), Frame(None, 2)]
    assert frames("ndjson", raw) == expected
    assert frames("ndjson", *(raw[i : i + 1] for i in range(len(raw)))) == expected


def test_ndjson_close_flushes_and_is_idempotent() -> None:
    d = make_decoder("ndjson")
    assert d.feed(b'{"a":1}\n{"b"') == [Frame(None, {"a": 1})]
    assert d.feed(b":2}") == []
    assert d.close() == [Frame(None, {"b": 2})]
    assert d.close() == []


@pytest.mark.parametrize("bad", [b"{oops}\n", b"data: {}\n", b"\xff\n"])
def test_ndjson_non_json_is_upstream_error(bad: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        frames("ndjson", bad)
    assert (info.value.status, info.value.code) == (502, "upstream_bad_frame")
