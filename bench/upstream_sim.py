"""A deliberately fast upstream for `bench/run.py`: OpenAI Responses + Anthropic Messages.

Raw asyncio + httptools (uvloop when installed), HTTP/1.1 keep-alive. Every reply is
precomputed bytes written in one `transport.write`; per request we only look at the path and
whether the body asks for `"stream": true`. Nothing is validated: the point is that the upstream
costs next to nothing, so what `bench/run.py` measures is the gateway.

    python bench/upstream_sim.py [--port 0] [--host 127.0.0.1]

prints `READY <port>` on stdout once it listens; stops on SIGTERM/SIGINT.

Routes:
    POST /v1/responses   OpenAI Responses (JSON or SSE with `event:` lines)
    POST /v1/messages    Anthropic Messages (JSON or SSE = the text_stream.sse fixture)
    GET  /health         200
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import httptools
import orjson

__all__ = ["ANTHROPIC_JSON", "ANTHROPIC_SSE", "OPENAI_JSON", "OPENAI_SSE", "build_replies"]

_FIXTURE = (
    Path(__file__).resolve().parents[1]
    / "tests"
    / "fixtures"
    / "providers"
    / "anthropic"
    / "text_stream.sse"
)

# -- reply bodies ------------------------------------------------------------------------------

_RESP_ID = "resp_67e554a21aa88191b65876ac5e5bbe0406c52f0e511c76ed"
_MSG_ID = "msg_67e554a28bec8191b56d3e2331eff88006c52f0e511c76ed"
_TEXT_PARTS = ["The", " capital", " of", " France", " is", " Paris", "."]
_TEXT = "".join(_TEXT_PARTS)


def _openai_response(status: str, output: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
    return {
        "id": _RESP_ID,
        "object": "response",
        "created_at": 1743082658,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-4o-mini-2024-07-18",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


_USAGE = {
    "input_tokens": 14,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 8,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 22,
}


def _openai_message(status: str, text: str) -> dict[str, Any]:
    content = (
        []
        if status == "in_progress"
        else [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    )
    return {"id": _MSG_ID, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _openai_events() -> list[dict[str, Any]]:
    done_msg = _openai_message("completed", _TEXT)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _openai_response("in_progress", [], None)},
        {"type": "response.in_progress", "response": _openai_response("in_progress", [], None)},
        {"type": "response.output_item.added", "output_index": 0,
         "item": _openai_message("in_progress", "")},
        {"type": "response.content_part.added", "item_id": _MSG_ID, "output_index": 0,
         "content_index": 0, "part": part},
    ]  # fmt: skip
    for delta in _TEXT_PARTS:
        events.append(
            {"type": "response.output_text.delta", "item_id": _MSG_ID, "output_index": 0,
             "content_index": 0, "delta": delta, "logprobs": []}
        )  # fmt: skip
    events += [
        {"type": "response.output_text.done", "item_id": _MSG_ID, "output_index": 0,
         "content_index": 0, "text": _TEXT, "logprobs": []},
        {"type": "response.content_part.done", "item_id": _MSG_ID, "output_index": 0,
         "content_index": 0, "part": {**part, "text": _TEXT}},
        {"type": "response.output_item.done", "output_index": 0, "item": done_msg},
        {"type": "response.completed",
         "response": _openai_response("completed", [done_msg], _USAGE)},
    ]  # fmt: skip
    for seq, event in enumerate(events):
        event["sequence_number"] = seq
    return events


def _sse(events: list[dict[str, Any]]) -> list[bytes]:
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    ]


_ANTHROPIC_MESSAGE = {
    "id": "msg_018E1hg8GoVTGEKQY3ovMcSJ",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "2"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 5,
        "service_tier": "standard",
    },
}


def _fixture_events() -> list[bytes]:
    """text_stream.sse split into its events, byte for byte (each keeps its blank line)."""
    raw = _FIXTURE.read_bytes()
    parts = [p for p in raw.split(b"\n\n") if p.strip()]
    return [p + b"\n\n" for p in parts]


def _json_reply(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _sse_reply(events: list[bytes], extra: bytes = b"") -> bytes:
    # Chunked like the real providers, one chunk per event, all in one write.
    chunks = b"".join(b"%x\r\n" % len(e) + e + b"\r\n" for e in events)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\n"
        + extra
        + b"transfer-encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )


OPENAI_JSON = orjson.dumps(_openai_response("completed", [_openai_message("completed", _TEXT)],
                                            _USAGE))  # fmt: skip
OPENAI_SSE = _sse(_openai_events())
ANTHROPIC_JSON = orjson.dumps(_ANTHROPIC_MESSAGE)
ANTHROPIC_SSE = _fixture_events() if _FIXTURE.exists() else []


def build_replies() -> dict[tuple[bytes, bool], bytes]:
    """(path, stream) → the whole HTTP reply."""
    oa = b"x-request-id: req_bench\r\nopenai-processing-ms: 1\r\n"
    an = b"request-id: req_bench\r\nanthropic-organization-id: bench\r\n"
    return {
        (b"/v1/responses", False): _json_reply(OPENAI_JSON, oa),
        (b"/v1/responses", True): _sse_reply(OPENAI_SSE, oa),
        (b"/v1/messages", False): _json_reply(ANTHROPIC_JSON, an),
        (b"/v1/messages", True): _sse_reply(ANTHROPIC_SSE, an),
    }


_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot found"
)
_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"

# -- server ------------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    __slots__ = ("body", "parser", "replies", "transport", "url")

    def __init__(self, replies: dict[tuple[bytes, bool], bytes]) -> None:
        self.replies = replies
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        path = self.url.partition(b"?")[0]
        if self.parser.get_method() == b"GET":
            reply = _HEALTH if path == b"/health" else _NOT_FOUND
        else:
            body = b"".join(self.body)
            stream = b'"stream":true' in body or b'"stream": true' in body
            reply = self.replies.get((path, stream), _NOT_FOUND)
        transport.write(reply)
        if not self.parser.should_keep_alive():
            transport.close()


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    replies = build_replies()
    server = await loop.create_server(lambda: _Conn(replies), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args.host, args.port))
    except ImportError:
        asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
