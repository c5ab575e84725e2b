"""Anthropic Messages replies: JSON body, or SSE with `event:` lines, space-padded JSON and ping.

Web search replies follow the documented shapes
(https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool, "Response" and
"Streaming") and a recorded stream (vercel/ai
packages/anthropic/src/__fixtures__/anthropic-web-search-tool.1.chunks.txt, our trimmed copy
tests/fixtures/providers/anthropic/web_search_stream.chunks.txt): a `server_tool_use` block
(its `{"query"}` input streamed as input_json_delta), a `web_search_tool_result` block sent
whole in content_block_start, then text blocks; a cited one starts with `citations: []` and gets
its `citations_delta`s before its text. `usage.server_tool_use.web_search_requests` counts it.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import orjson

from .render_common import JSON, SSE, Rendered
from .turn import Ids, Search, Turn, args_json, pieces

__all__ = ["anthropic_error_frame", "render_anthropic"]

_STOP = {"end": "end_turn", "tool": "tool_use", "max_tokens": "max_tokens"}


def _usage(turn: Turn, *, final: bool) -> dict[str, Any]:
    u = turn.usage
    # Anthropic's input_tokens excludes both cache reads and cache writes.
    usage: dict[str, Any] = {
        "input_tokens": u.input_total - u.cached - u.cache_write,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": u.output_total if final else 1,
        "service_tier": "standard",
    }
    if final and turn.search is not None:
        done = 0 if turn.search.error else 1  # a failed search is not billed
        usage["server_tool_use"] = {"web_search_requests": done, "web_fetch_requests": 0}
    return usage


def _opaque(seed: str, size: int) -> str:
    """Stand-in for Anthropic's encrypted_content / encrypted_index (base64, stable per seed)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return base64.b64encode((b"\x12" + digest * (size // 32 + 1))[:size]).decode()


def _search_blocks(search: Search, ids: Ids) -> list[dict[str, Any]]:
    call_id = ids.mint("srvtoolu_")
    content: Any
    if search.error:
        content = {"type": "web_search_tool_result_error", "error_code": search.error}
    else:
        content = [
            {"type": "web_search_result", "title": title, "url": url,
             "encrypted_content": _opaque(url, 96), "page_age": "2 days ago" if i else None}
            for i, (url, title) in enumerate(search.results)
        ]  # fmt: skip
    blocks: list[dict[str, Any]] = [
        {"type": "server_tool_use", "id": call_id, "name": "web_search",
         "input": {"query": search.query}},
        {"type": "web_search_tool_result", "tool_use_id": call_id, "content": content},
    ]  # fmt: skip
    for text, cited in search.pieces:
        block: dict[str, Any] = {"type": "text", "text": text}
        if cited:
            block["citations"] = [
                {"type": "web_search_result_location", "cited_text": text[:150],
                 "url": search.results[n][0], "title": search.results[n][1],
                 "encrypted_index": _opaque(f"{n}:{text}", 48)}
                for n in cited
            ]  # fmt: skip
        blocks.append(block)
    return blocks


def _blocks(turn: Turn, ids: Ids) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.thought is not None:
        blocks.append({"type": "thinking", "thinking": turn.thought, "signature": turn.signature})
    if turn.search is not None:
        blocks += _search_blocks(turn.search, ids)
    elif turn.text:  # Anthropic never sends an empty text block
        blocks.append({"type": "text", "text": turn.text})
    for name, args in turn.calls:
        blocks.append({"type": "tool_use", "id": ids.mint("toolu_"), "name": name, "input": args})
    return blocks


def render_anthropic(turn: Turn, stream: bool, ids: Ids) -> Rendered:
    message_id = ids.mint("msg_")
    blocks = _blocks(turn, ids)
    if not stream:
        body = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": turn.model,
            "content": blocks,
            "stop_reason": _STOP[turn.stop],
            "stop_sequence": None,
            "usage": _usage(turn, final=True),
        }
        return Rendered([orjson.dumps(body)], JSON, False)
    rng = random.Random(message_id)  # padding like the real API, reproducible per message
    frames: list[bytes] = []

    def emit(payload: dict[str, Any]) -> None:
        data = orjson.dumps(payload) + b" " * rng.randint(0, 15)
        frames.append(b"event: %s\ndata: %s\n\n" % (payload["type"].encode(), data))

    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(turn, final=False),
    }
    emit({"type": "message_start", "message": start})

    def ping() -> None:
        frames.append(b'event: ping\ndata: {"type": "ping"}\n\n')

    if not blocks:
        ping()
    for index, block in enumerate(blocks):
        # The API pings right after the first content_block_start, as recorded.
        _emit_block(emit, index, block, ping if index == 0 else None)
    final = _usage(turn, final=True)
    final.pop("cache_creation")
    final.pop("service_tier")
    emit(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP[turn.stop], "stop_sequence": None},
            "usage": final,
        }
    )
    emit({"type": "message_stop"})
    return Rendered(frames, SSE, True)


def _emit_block(emit: Any, index: int, block: dict[str, Any], ping: Any) -> None:
    kind = block["type"]

    def delta(payload: dict[str, Any]) -> None:
        emit({"type": "content_block_delta", "index": index, "delta": payload})

    def start(content_block: dict[str, Any]) -> None:
        emit({"type": "content_block_start", "index": index, "content_block": content_block})
        if ping is not None:
            ping()

    if kind == "thinking":
        start({"type": "thinking", "thinking": "", "signature": ""})
        for piece in pieces(block["thinking"]):
            delta({"type": "thinking_delta", "thinking": piece})
        delta({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        cited = block.get("citations")
        start(
            {"citations": [], "type": "text", "text": ""} if cited else {"type": "text", "text": ""}
        )
        for citation in cited or []:  # before the text, as recorded
            delta({"type": "citations_delta", "citation": citation})
        for piece in pieces(block["text"]):
            delta({"type": "text_delta", "text": piece})
    elif kind == "web_search_tool_result":
        start(block)  # sent whole, no deltas
    elif kind == "server_tool_use":
        start({**block, "input": {}})
        delta({"type": "input_json_delta", "partial_json": ""})
        for piece in pieces(args_json(block["input"]), 12):
            delta({"type": "input_json_delta", "partial_json": piece})
    else:
        start({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}})
        # The first fragment is empty, as recorded; the rest splits the JSON in three.
        delta({"type": "input_json_delta", "partial_json": ""})
        encoded = args_json(block["input"])
        third = max(1, len(encoded) // 3)
        for piece in pieces(encoded, third):
            delta({"type": "input_json_delta", "partial_json": piece})
    emit({"type": "content_block_stop", "index": index})


def anthropic_error_frame(message: str) -> bytes:
    payload = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
    return b"event: error\ndata: %s\n\n" % orjson.dumps(payload)
