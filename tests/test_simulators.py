"""The provider simulators are tested against the recordings they imitate."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simulators import (
    FIXTURES_DIR,
    Echo,
    Error,
    Garbage,
    Hang,
    MaxTokens,
    MidStreamError,
    Replay,
    Simulator,
    Slow,
    Thinking,
    ToolCalls,
    WebSearch,
    compute_usage,
    fixture_names,
    load_fixture,
)

DIALECTS = ("anthropic", "gemini", "chat", "responses")
AUTH = {
    "anthropic": {"x-api-key": "test-key", "anthropic-version": "2023-06-01"},
    "gemini": {"x-goog-api-key": "test-key"},
    "chat": {"authorization": "Bearer test-key"},
    "responses": {"authorization": "Bearer test-key"},
}
# Fixture directory -> dialect whose route serves it.
DIR_DIALECT = {
    "anthropic": "anthropic",
    "gemini": "gemini",
    "openai_chat": "chat",
    "openai_responses": "responses",
}
# Recorded requests the live API answered with a 400: the simulator must refuse them too.
REJECTED_RECORDINGS = {"anthropic/error_400_invalid_request", "openai_responses/error_400"}


# One keep-alive client for the module: building a client per request costs ~0.1 s.
HTTP = httpx.Client(timeout=10.0)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator, HTTP:
        yield simulator


@pytest.fixture(autouse=True)
def _fresh(sim: Simulator) -> Iterator[None]:
    sim.reset()
    yield
    sim.reset()


# -- helpers -------------------------------------------------------------------------------------


def url(sim: Simulator, dialect: str, stream: bool = False, model: str = "gemini-2.5-flash") -> str:
    base = sim.base(dialect)
    if dialect == "anthropic":
        return f"{base}/v1/messages"
    if dialect == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{base}/v1beta/models/{model}:{method}"
    if dialect == "chat":
        return f"{base}/v1/chat/completions"
    return f"{base}/v1/responses"


def text_request(dialect: str, text: str, stream: bool) -> dict[str, Any]:
    if dialect == "anthropic":
        return {
            "model": "claude-sim",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
            "stream": stream,
        }
    if dialect == "gemini":
        return {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if dialect == "chat":
        body: dict[str, Any] = {
            "model": "gpt-sim",
            "messages": [{"role": "user", "content": text}],
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body
    return {
        "model": "gpt-sim",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        "stream": stream,
    }


def post(
    sim: Simulator,
    dialect: str,
    body: Any,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    model: str = "gemini-2.5-flash",
    timeout: float = 10.0,
) -> httpx.Response:
    sent = AUTH[dialect] if headers is None else headers
    return HTTP.post(
        url(sim, dialect, stream, model), headers=sent, content=orjson.dumps(body), timeout=timeout
    )


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs; CRLF or LF framing, `:` comments skipped."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def payloads(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(d) for _, d in sse_events(raw) if d != "[DONE]"]


def collect(dialect: str, stream: bool, raw: bytes) -> dict[str, Any]:
    """Reassemble text / thought / signature / calls / stop / usage from a native reply."""
    out: dict[str, Any] = {"text": "", "thought": "", "signature": None, "calls": [], "stop": None}
    docs = payloads(raw) if stream else [orjson.loads(raw)]
    collectors = {
        "anthropic": _collect_anthropic,
        "gemini": _collect_gemini,
        "chat": _collect_chat,
        "responses": _collect_responses,
    }
    collectors[dialect](docs, stream, out)
    return out


def _collect_anthropic(docs: list[Any], stream: bool, out: dict[str, Any]) -> None:
    if not stream:
        (doc,) = docs
        for block in doc["content"]:
            if block["type"] == "text":
                out["text"] += block["text"]
            elif block["type"] == "thinking":
                out["thought"] += block["thinking"]
                out["signature"] = block["signature"]
            elif block["type"] == "tool_use":
                out["calls"].append((block["name"], block["input"]))
        out["stop"], out["usage"] = doc["stop_reason"], doc["usage"]
        return
    tools: dict[int, list[Any]] = {}
    for doc in docs:
        if doc["type"] == "content_block_start" and doc["content_block"]["type"] == "tool_use":
            tools[doc["index"]] = [doc["content_block"]["name"], ""]
        elif doc["type"] == "content_block_delta":
            delta = doc["delta"]
            if delta["type"] == "text_delta":
                out["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                out["thought"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                out["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                tools[doc["index"]][1] += delta["partial_json"]
        elif doc["type"] == "message_delta":
            out["stop"], out["usage"] = doc["delta"]["stop_reason"], doc["usage"]
    out["calls"] = [(name, json.loads(args)) for name, args in tools.values()]


def _collect_gemini(docs: list[Any], stream: bool, out: dict[str, Any]) -> None:
    for doc in docs:
        candidate = doc["candidates"][0]
        for part in candidate["content"]["parts"]:
            if "functionCall" in part:
                out["calls"].append((part["functionCall"]["name"], part["functionCall"]["args"]))
            elif part.get("thought"):
                out["thought"] += part["text"]
            else:
                out["text"] += part["text"]
            out["signature"] = part.get("thoughtSignature") or out["signature"]
        out["stop"] = candidate.get("finishReason", out["stop"])
        out["usage"] = doc["usageMetadata"]


def _collect_chat(docs: list[Any], stream: bool, out: dict[str, Any]) -> None:
    if not stream:
        (doc,) = docs
        message = doc["choices"][0]["message"]
        out["text"] = message["content"] or ""
        out["thought"] = message.get("reasoning_content") or ""
        for call in message.get("tool_calls") or []:
            fn = call["function"]
            out["calls"].append((fn["name"], json.loads(fn["arguments"])))
        out["stop"], out["usage"] = doc["choices"][0]["finish_reason"], doc["usage"]
        return
    tools: dict[int, list[Any]] = {}
    for doc in docs:
        if doc.get("usage"):
            out["usage"] = doc["usage"]
        for choice in doc["choices"]:
            delta = choice["delta"]
            out["text"] += delta.get("content") or ""
            out["thought"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                slot = tools.setdefault(call["index"], ["", ""])
                slot[0] += call.get("function", {}).get("name", "")
                slot[1] += call.get("function", {}).get("arguments", "")
            out["stop"] = choice["finish_reason"] or out["stop"]
    out["calls"] = [(name, json.loads(args)) for name, args in tools.values()]


def _collect_responses(docs: list[Any], stream: bool, out: dict[str, Any]) -> None:
    if stream:
        assert [d["sequence_number"] for d in docs] == list(range(len(docs)))
        out["text"] = "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta")
        out["thought"] = "".join(
            d["delta"] for d in docs if d["type"] == "response.reasoning_summary_text.delta"
        )
        response = docs[-1]["response"]
    else:
        (response,) = docs
        for item in response["output"]:
            if item["type"] == "message":
                out["text"] += item["content"][0]["text"]
            elif item["type"] == "reasoning":
                out["thought"] += item["summary"][0]["text"]
    for item in response["output"]:
        if item["type"] == "function_call":
            out["calls"].append((item["name"], json.loads(item["arguments"])))
        elif item["type"] == "reasoning":
            out["signature"] = item["encrypted_content"]
    out["stop"], out["usage"] = response["status"], response["usage"]


# -- replay ------------------------------------------------------------------------------------


def _route_for(name: str) -> tuple[str, dict[str, Any], bool, str]:
    """(dialect, request body, stream, gemini model) to replay fixture `name` through."""
    fixture = load_fixture(name)
    directory = name.split("/")[0]
    dialect = DIR_DIALECT.get(directory, "chat")
    request = fixture.request if name not in REJECTED_RECORDINGS else None
    if request is None or directory not in DIR_DIALECT:
        dialect = "chat" if directory not in DIR_DIALECT else dialect
        request = text_request(dialect, "replay please", False)
    url_ = fixture.url or ""
    model = url_.split("/models/")[-1].split(":")[0] if "/models/" in url_ else "gemini-2.5-flash"
    stream = ":streamGenerateContent" in url_ or bool(request.get("stream"))
    return dialect, request, stream, model


@pytest.mark.parametrize("chunk_size", [None, 61, "random"])
@pytest.mark.parametrize("name", fixture_names())
def test_every_fixture_replays_byte_exact(sim: Simulator, name: str, chunk_size: Any) -> None:
    fixture = load_fixture(name)
    dialect, request, stream, model = _route_for(name)
    sim.script(dialect, Replay(name, chunk_size=chunk_size, seed=3))
    with HTTP.stream(
        "POST",
        url(sim, dialect, stream, model),
        headers=AUTH[dialect],
        content=orjson.dumps(request),
    ) as response:
        received = b"".join(response.iter_raw())
    assert received == fixture.body
    assert response.status_code == fixture.status
    assert response.headers["content-type"] == fixture.content_type
    assert sim.pending(dialect) == 0


def test_replay_carries_recorded_headers(sim: Simulator) -> None:
    sim.script("anthropic", Replay("anthropic/parallel_tool_use_stream"))
    response = post(sim, "anthropic", text_request("anthropic", "hi", True))
    assert response.headers["request-id"] == "req_011CP6WAyuHukdWpSHUSs5Xa"
    assert response.headers["anthropic-ratelimit-requests-limit"] == "4000"
    assert response.headers["transfer-encoding"] == "chunked"


def test_gemini_error_fixture_without_meta_takes_status_from_name(sim: Simulator) -> None:
    sim.script("gemini", Replay("gemini/error_429_retry_info"))
    response = post(sim, "gemini", text_request("gemini", "hi", False))
    assert response.status_code == 429
    assert response.json()["error"]["details"][1]["retryDelay"] == "34.4s"


def test_stream_is_flushed_chunk_by_chunk(sim: Simulator) -> None:
    sim.script("anthropic", Replay("anthropic/text_stream", chunk_size=200, delay=0.1))
    started = time.perf_counter()
    arrivals = []
    with httpx.stream(
        "POST",
        url(sim, "anthropic"),
        headers=AUTH["anthropic"],
        content=orjson.dumps(text_request("anthropic", "hi", True)),
    ) as response:
        for chunk in response.iter_raw():
            arrivals.append((time.perf_counter() - started, len(chunk)))
    # 1123 bytes in 200-byte frames 0.1 s apart: each frame reaches the client on its own.
    assert [size for _, size in arrivals] == [200] * 5 + [123]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.05


# -- validation: recorded requests -----------------------------------------------------------


def _recorded_requests() -> list[str]:
    names = []
    for directory in DIR_DIALECT:
        for path in sorted((FIXTURES_DIR / directory).glob("*.request.json")):
            names.append(f"{directory}/{path.name.removesuffix('.request.json')}")
    return names


@pytest.mark.parametrize("name", _recorded_requests())
def test_recorded_requests(sim: Simulator, name: str) -> None:
    """Real requests are valid by definition, except those the live API answered with a 400."""
    directory, stem = name.split("/")
    request = orjson.loads((FIXTURES_DIR / directory / f"{stem}.request.json").read_bytes())
    meta_path = FIXTURES_DIR / directory / f"{stem}.meta.json"
    meta = orjson.loads(meta_path.read_bytes()) if meta_path.is_file() else {}
    dialect = DIR_DIALECT[directory]
    meta_url = meta.get("url", "")
    model = meta_url.split("/models/")[-1].split(":")[0] if "/models/" in meta_url else "m"
    stream = ":streamGenerateContent" in meta_url
    response = post(sim, dialect, request, stream=stream, model=model)
    if name in REJECTED_RECORDINGS:
        recorded = orjson.loads((FIXTURES_DIR / directory / f"{stem}.json").read_bytes())
        assert response.status_code == 400
        assert response.json()["error"] == recorded["error"]
        assert sim.requests == []
        return
    assert response.status_code == 200, response.text
    assert sim.last.json == request
    assert sim.last.body == orjson.dumps(request)


# -- validation: invalid requests ----------------------------------------------------------------


def _anthropic(**changes: Any) -> dict[str, Any]:
    body = {"model": "claude-sim", "max_tokens": 2048, "messages": [_u("hi")]}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _u(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _a(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def _tool_use(tid: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": "f", "input": {}}


def _result(tid: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": "ok"}


def _gemini(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    body.update(changes)
    return body


def _chat(*messages: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-sim", "messages": list(messages) or [_u("hi")]}
    body.update(changes)
    return body


def _call(cid: str, arguments: Any = "{}") -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": "f", "arguments": arguments}}


def _resp(**changes: Any) -> dict[str, Any]:
    body = {"model": "gpt-sim", "input": "hi"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


THINKING = {"type": "enabled", "budget_tokens": 1024}
WEB = {"type": "web_search_20250305", "name": "web_search"}
_NO_KEY = {"anthropic-version": "2023-06-01"}
INVALID: list[tuple[str, str, Any, dict[str, str] | None, int, str]] = [
    # (id, dialect, body, headers, status, expected error type / status / param)
    ("a-no-key", "anthropic", _anthropic(), _NO_KEY, 401, "authentication_error"),
    ("a-no-version", "anthropic", _anthropic(), {"x-api-key": "k"}, 400, "invalid_request_error"),
    ("a-no-model", "anthropic", _anthropic(model=None), None, 400, "model: Field required"),
    ("a-no-max-tokens", "anthropic", _anthropic(max_tokens=None), None, 400, "max_tokens"),
    ("a-max-tokens-0", "anthropic", _anthropic(max_tokens=0), None, 400, "max_tokens"),
    ("a-no-messages", "anthropic", _anthropic(messages=[]), None, 400, "at least one"),
    ("a-system-role", "anthropic", _anthropic(messages=[{"role": "system", "content": "x"}]),
     None, 400, "role"),
    ("a-first-assistant", "anthropic", _anthropic(messages=[_a({"type": "text", "text": "x"})]),
     None, 400, "first message"),
    ("a-same-roles", "anthropic", _anthropic(messages=[_u("a"), _u("b")]), None, 400, "alternate"),
    ("a-unknown-block", "anthropic",
     _anthropic(messages=[{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]),
     None, 400, "input_text"),
    ("a-empty-text", "anthropic",
     _anthropic(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
     None, 400, "non-empty"),
    ("a-orphan-result", "anthropic",
     _anthropic(messages=[_u("q"), _a(_tool_use("t1")),
                          {"role": "user", "content": [_result("t2")]}]),
     None, 400, "unexpected `tool_use_id`"),
    ("a-unanswered-use", "anthropic",
     _anthropic(messages=[_u("q"), _a(_tool_use("t1"), _tool_use("t2")),
                          {"role": "user", "content": [_result("t1")]}]),
     None, 400, "without `tool_result`"),
    ("a-duplicate-use", "anthropic",
     _anthropic(messages=[_u("q"), _a(_tool_use("t1"), _tool_use("t1")),
                          {"role": "user", "content": [_result("t1")]}]),
     None, 400, "unique"),
    ("a-result-late", "anthropic",
     _anthropic(messages=[_u("q"), _a(_tool_use("t1")), _u("x"), _a({"type": "text", "text": "y"}),
                          {"role": "user", "content": [_result("t1")]}]),
     None, 400, "tool_result"),
    ("a-budget-low", "anthropic", _anthropic(thinking={"type": "enabled", "budget_tokens": 512}),
     None, 400, "1024"),
    ("a-budget-high", "anthropic", _anthropic(max_tokens=1024, thinking=THINKING), None, 400,
     "budget_tokens"),
    ("a-thinking-temperature", "anthropic", _anthropic(thinking=THINKING, temperature=0.2), None,
     400, "temperature"),
    ("a-thinking-no-signature", "anthropic",
     _anthropic(messages=[_u("q"), _a({"type": "thinking", "thinking": "t"}), _u("r")]),
     None, 400, "signature"),
    ("a-image-media-type", "anthropic",
     _anthropic(messages=[{"role": "user", "content": [
         {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AA"}}
     ]}]), None, 400, "media_type"),
    ("a-tool-schema", "anthropic",
     _anthropic(tools=[{"name": "f", "input_schema": {"type": "array"}}]), None, 400, "object"),
    ("a-tool-no-schema", "anthropic", _anthropic(tools=[{"name": "f", "parameters": {}}]), None,
     400, "input_schema"),
    ("a-unknown-field", "anthropic", _anthropic(input="x"), None, 400, "Extra inputs"),
    # The web search server tool, as documented (render_anthropic.py / validate_anthropic.py).
    ("a-search-name", "anthropic", _anthropic(tools=[{**WEB, "name": "search"}]), None, 400,
     "tools.0.web_search_20250305.name: Input should be 'web_search'"),
    ("a-search-no-name", "anthropic", _anthropic(tools=[{"type": WEB["type"]}]), None, 400,
     "name: Field required"),
    ("a-search-extra", "anthropic", _anthropic(tools=[{**WEB, "filters": {}}]), None, 400,
     "web_search_20250305.filters: Extra inputs are not permitted"),
    ("a-search-uses", "anthropic", _anthropic(tools=[{**WEB, "max_uses": 0}]), None, 400,
     "greater than 0"),
    ("a-search-both-lists", "anthropic",
     _anthropic(tools=[{**WEB, "allowed_domains": ["a.com"], "blocked_domains": ["b.com"]}]),
     None, 400, "both allowed_domains and blocked_domains"),
    ("a-search-location", "anthropic",
     _anthropic(tools=[{**WEB, "user_location": {"city": "Lyon"}}]), None, 400,
     "user_location.type"),
    ("a-search-twice", "anthropic", _anthropic(tools=[WEB, WEB]), None, 400, "unique"),
    ("g-no-key", "gemini", _gemini(), {}, 401, "UNAUTHENTICATED"),
    ("g-no-contents", "gemini", _gemini(contents=[]), None, 400, "INVALID_ARGUMENT"),
    ("g-role", "gemini", _gemini(contents=[{"role": "assistant", "parts": [{"text": "x"}]}]),
     None, 400, "valid role"),
    ("g-two-data", "gemini",
     _gemini(contents=[{"role": "user", "parts": [{"text": "x", "inlineData": {}}]}]), None, 400,
     "oneof"),
    ("g-no-data", "gemini", _gemini(contents=[{"role": "user", "parts": [{"thought": True}]}]),
     None, 400, "oneof"),
    ("g-response-string", "gemini",
     _gemini(contents=[{"role": "user", "parts": [
         {"functionResponse": {"name": "f", "response": "Mexico"}}]}]), None, 400, "Struct"),
    ("g-call-first", "gemini",
     _gemini(contents=[{"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                       {"role": "user", "parts": [{"text": "x"}]}]),
     None, 400, "function call turn comes immediately after a user turn"),
    ("g-call-after-model", "gemini",
     _gemini(contents=[{"role": "user", "parts": [{"text": "q"}]},
                       {"role": "model", "parts": [{"text": "a"}]},
                       {"role": "model", "parts": [{"function_call": {"name": "f"}}]}]),
     None, 400, "function call turn"),
    ("g-system-no-parts", "gemini", _gemini(systemInstruction={"role": "user"}), None, 400,
     "parts"),
    ("g-config-name", "gemini", _gemini(generationConfig={"maxTokens": 5}), None, 400,
     "maxTokens"),
    ("g-function-name", "gemini",
     _gemini(tools=[{"functionDeclarations": [{"name": "1 bad"}]}]), None, 400, "function name"),
    ("g-unknown-field", "gemini", _gemini(messages=[]), None, 400, "Unknown name"),
    ("g-search-field", "gemini", _gemini(tools=[{"googleSearch": {"allowedDomains": ["a"]}}]),
     None, 400, "Unknown name \"allowedDomains\" at 'tools[0].google_search'"),
    ("g-search-and-functions", "gemini",
     _gemini(tools=[{"functionDeclarations": [{"name": "f"}]}, {"google_search": {}}]), None, 400,
     "Tool use with function calling is unsupported"),
    ("c-no-auth", "chat", _chat(), {}, 401, "invalid_request_error"),
    ("c-no-messages", "chat", {"model": "m", "messages": []}, None, 400, "messages"),
    ("c-bad-role", "chat", _chat({"role": "model", "content": "x"}), None, 400,
     "messages[0].role"),
    ("c-unknown-tool-id", "chat",
     _chat(_u("q"), {"role": "assistant", "content": None, "tool_calls": [_call("c1")]},
           {"role": "tool", "tool_call_id": "c2", "content": "r"}), None, 400, "messages[2].role"),
    ("c-unanswered-call", "chat",
     _chat(_u("q"), {"role": "assistant", "content": None, "tool_calls": [_call("c1")]}, _u("x")),
     None, 400, "messages.[1].role"),
    ("c-object-arguments", "chat",
     _chat(_u("q"), {"role": "assistant", "tool_calls": [_call("c1", {"a": 1})]},
           {"role": "tool", "tool_call_id": "c1", "content": "r"}),
     None, 400, "messages[1].tool_calls[0].function.arguments"),
    ("c-flat-tool", "chat", _chat(tools=[{"type": "function", "name": "f"}]), None, 400,
     "tools[0].function"),
    ("c-stream-options", "chat", _chat(stream_options={"include_usage": True}), None, 400,
     "stream_options"),
    ("r-no-auth", "responses", _resp(), {}, 401, "invalid_request_error"),
    ("r-no-model", "responses", _resp(model=None), None, 400, "model"),
    ("r-no-input", "responses", _resp(input=None), None, 400, "input"),
    ("r-unknown-field", "responses", _resp(messages=[]), None, 400, "messages"),
    ("r-chat-tool", "responses", _resp(tools=[{"type": "function", "function": {"name": "f"}}]),
     None, 400, "tools[0].name"),
    ("r-max-output", "responses", _resp(max_output_tokens=5), None, 400, "max_output_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dialect", "body", "headers", "status", "expect"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_invalid_requests_get_native_errors(
    sim: Simulator,
    dialect: str,
    body: Any,
    headers: dict[str, str] | None,
    status: int,
    expect: str,
) -> None:
    sim.script(dialect, ToolCalls([("f", {})]))
    response = post(sim, dialect, body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    if dialect == "anthropic":
        assert error["type"] == "error" and error["request_id"].startswith("req_")
        assert set(error["error"]) == {"type", "message"}
        assert expect in error["error"]["type"] + " " + error["error"]["message"]
    elif dialect == "gemini":
        assert error["error"]["code"] == status
        assert expect in error["error"]["status"] + " " + error["error"]["message"]
    else:
        assert set(error["error"]) == {"message", "type", "param", "code"}
        detail = error["error"]
        assert expect in f"{detail['type']} {detail['param']} {detail['message']}"
    assert sim.requests == []  # refused requests are not recorded
    assert sim.pending(dialect) == 1  # and do not consume the scripted reply


def test_valid_tool_loops_are_accepted(sim: Simulator) -> None:
    anthropic = _anthropic(
        messages=[
            _u("q"),
            _a({"type": "thinking", "thinking": "t", "signature": "s"}, _tool_use("a"),
               _tool_use("b")),
            {"role": "user", "content": [_result("a"), _result("b"), {"type": "text",
                                                                         "text": "go"}]},
        ],
        thinking=THINKING,
    )  # fmt: skip
    chat = _chat(
        _u("q"),
        {"role": "assistant", "content": None, "tool_calls": [_call("x"), _call("y")]},
        {"role": "tool", "tool_call_id": "x", "content": "1"},
        {"role": "tool", "tool_call_id": "y", "content": "2"},
    )
    gemini = _gemini(
        contents=[
            {"role": "user", "parts": [{"text": "q"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": 1}}}]},
        ],
        generation_config={"max_output_tokens": 10, "thinking_config": {"thinking_budget": 0}},
    )
    for dialect, body in (("anthropic", anthropic), ("chat", chat), ("gemini", gemini)):
        response = post(sim, dialect, body, headers={**AUTH[dialect]})
        assert response.status_code == 200, response.text
    query_key = httpx.post(
        url(sim, "gemini") + "?key=abc", content=orjson.dumps(_gemini()), timeout=5
    )
    assert query_key.status_code == 200
    assert sim.last.query == {"key": "abc"}


# -- echo ---------------------------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=1, max_size=80))
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_echo_returns_the_exact_text(sim: Simulator, dialect: str, stream: bool, text: str) -> None:
    if dialect == "anthropic" and not text.strip():
        text += "x"  # keep the request valid, the point is the bytes that come back
    body = text_request(dialect, text, stream)
    response = post(sim, dialect, body, stream=stream)
    assert response.status_code == 200, response.text
    got = collect(dialect, stream, response.content)
    assert got["text"] == text
    assert got["stop"] == {"anthropic": "end_turn", "gemini": "STOP", "chat": "stop",
                           "responses": "completed"}[dialect]  # fmt: skip


def test_echo_uses_the_last_user_text_and_counts_usage(sim: Simulator) -> None:
    body = _anthropic(
        system="be brief",
        messages=[_u("first"), _a({"type": "text", "text": "reply"}),
                  {"role": "user", "content": [{"type": "text", "text": "old"},
                                               {"type": "text", "text": "newest ✓"}]}],
    )  # fmt: skip
    got = collect("anthropic", False, post(sim, "anthropic", body).content)
    assert got["text"] == "newest ✓"
    expected = compute_usage(body, "newest ✓", [], None)
    assert expected.input_total == len("be brief" + "first" + "reply" + "old" + "newest ✓")
    usage = got["usage"]
    total_in = (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    assert total_in == expected.input_total
    assert usage["cache_read_input_tokens"] == expected.cached > 0
    assert usage["output_tokens"] == len("newest ✓")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_usage_arithmetic_per_dialect(sim: Simulator, dialect: str) -> None:
    sim.script(dialect, Thinking("pondering deeply", "sig-1", "the answer"))
    body = text_request(dialect, "what is the question, really?", True)
    got = collect(dialect, True, post(sim, dialect, body, stream=True).content)
    want = compute_usage(body, "the answer", [], "pondering deeply")
    usage = got["usage"]
    if dialect == "anthropic":
        assert usage["output_tokens"] == want.output_total
    elif dialect == "gemini":
        assert usage["promptTokenCount"] == want.input_total
        assert usage["cachedContentTokenCount"] == want.cached
        assert usage["thoughtsTokenCount"] == want.reasoning == len("pondering deeply")
        assert usage["candidatesTokenCount"] + usage["thoughtsTokenCount"] == want.output_total
        assert usage["totalTokenCount"] == want.input_total + want.output_total
    elif dialect == "chat":
        assert usage["prompt_tokens"] == want.input_total
        assert usage["prompt_tokens_details"]["cached_tokens"] == want.cached
        assert usage["completion_tokens"] == want.output_total
        assert usage["completion_tokens_details"]["reasoning_tokens"] == want.reasoning
    else:
        assert usage["input_tokens"] == want.input_total
        assert usage["output_tokens_details"]["reasoning_tokens"] == want.reasoning
        assert usage["total_tokens"] == want.input_total + want.output_total


# -- web search --------------------------------------------------------------------------------

SEARCH = WebSearch()
ANSWER = "".join(text for text, _ in SEARCH.answer)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_searches_when_given_its_tool_and_cites_whole_blocks(
    sim: Simulator, stream: bool
) -> None:
    sim.script("anthropic", SEARCH)
    body = _anthropic(tools=[WEB], messages=[_u("search it")], stream=stream or None)
    response = post(sim, "anthropic", body, stream=stream)
    assert response.status_code == 200, response.text
    if stream:
        events = payloads(response.content)
        starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
        assert [b["type"] for b in starts[:2]] == ["server_tool_use", "web_search_tool_result"]
        assert starts[0]["input"] == {}  # the query streams as input_json_delta
        query = "".join(e["delta"]["partial_json"] for e in events
                        if e["type"] == "content_block_delta"
                        and e["delta"]["type"] == "input_json_delta")  # fmt: skip
        assert orjson.loads(query) == {"query": SEARCH.query}
        deltas = [e for e in events if e["type"] == "content_block_delta"]
        cited = [e["index"] for e in deltas if e["delta"]["type"] == "citations_delta"]
        texts = [e["index"] for e in deltas if e["delta"]["type"] == "text_delta"]
        # A cited block's citations come before its text.
        for index in set(cited):
            first_text = next(
                i
                for i, e in enumerate(deltas)
                if e["index"] == index and e["delta"]["type"] == "text_delta"
            )
            cites = [
                e for e in deltas if e["index"] == index and e["delta"]["type"] != "text_delta"
            ]
            assert all(deltas.index(e) < first_text for e in cites)
        assert texts and len(cited) == 3
        usage = next(e for e in events if e["type"] == "message_delta")["usage"]
    else:
        message = response.json()
        kinds = [b["type"] for b in message["content"]]
        assert kinds[:2] == ["server_tool_use", "web_search_tool_result"]
        assert message["content"][0]["input"] == {"query": SEARCH.query}
        results = message["content"][1]["content"]
        assert [(r["url"], r["title"]) for r in results] == list(SEARCH.results)
        assert all(r["type"] == "web_search_result" and r["encrypted_content"] for r in results)
        text_blocks = message["content"][2:]
        assert "".join(b["text"] for b in text_blocks) == ANSWER
        cites = [c for b in text_blocks for c in b.get("citations", [])]
        assert {c["type"] for c in cites} == {"web_search_result_location"}
        assert all(c["encrypted_index"] and c["cited_text"] for c in cites)
        usage = message["usage"]
    assert usage["server_tool_use"]["web_search_requests"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_grounds_with_byte_offsets_when_given_google_search(
    sim: Simulator, stream: bool
) -> None:
    sim.script("gemini", SEARCH)
    response = post(sim, "gemini", _gemini(tools=[{"google_search": {}}]), stream=stream)
    assert response.status_code == 200, response.text
    docs = payloads(response.content) if stream else [response.json()]
    text = "".join(p.get("text", "") for d in docs for p in d["candidates"][0]["content"]["parts"])
    assert text == ANSWER
    grounded = [d["candidates"][0]["groundingMetadata"] for d in docs
                if "groundingMetadata" in d["candidates"][0]]  # fmt: skip
    assert len(grounded) == (2 if stream else 1)  # resent with the finishing chunk
    assert "finishReason" in docs[-1]["candidates"][0]
    meta = grounded[-1]
    assert meta["webSearchQueries"] == [SEARCH.query]
    assert meta["searchEntryPoint"]["renderedContent"]
    raw = text.encode()
    for support in meta["groundingSupports"]:
        segment = support["segment"]
        start = segment.get("startIndex", 0)  # proto3 JSON leaves a 0 out
        assert raw[start : segment["endIndex"]].decode() == segment["text"]
        assert all(0 <= n < len(meta["groundingChunks"]) for n in support["groundingChunkIndices"])
    usage = docs[-1]["usageMetadata"]
    want = compute_usage(sim.last.json, ANSWER, [], None)
    assert usage["promptTokenCount"] + usage["toolUsePromptTokenCount"] == want.input_total


@pytest.mark.parametrize("dialect", ["anthropic", "gemini"])
def test_without_its_search_tool_the_model_just_answers(sim: Simulator, dialect: str) -> None:
    sim.script(dialect, SEARCH)
    got = collect(dialect, False, post(sim, dialect, text_request(dialect, "plain", False)).content)
    assert got["text"] == "plain"


# -- other reply modes ---------------------------------------------------------------------------

CALLS = [("get_weather", {"city": "Zürich", "units": "c"}), ("get_time", {})]
TOOL_STOP = {"anthropic": "tool_use", "gemini": "STOP", "chat": "tool_calls",
             "responses": "completed"}  # fmt: skip
MAX_STOP = {"anthropic": "max_tokens", "gemini": "MAX_TOKENS", "chat": "length",
            "responses": "incomplete"}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_tool_calls(sim: Simulator, dialect: str, stream: bool) -> None:
    sim.script(dialect, ToolCalls(CALLS, text="Let me check."))
    response = post(sim, dialect, text_request(dialect, "weather?", stream), stream=stream)
    got = collect(dialect, stream, response.content)
    assert got["calls"] == CALLS
    assert got["text"] == "Let me check."
    assert got["stop"] == TOOL_STOP[dialect]


def test_anthropic_tool_arguments_arrive_in_fragments(sim: Simulator) -> None:
    sim.script("anthropic", ToolCalls(CALLS[:1]))
    docs = payloads(post(sim, "anthropic", text_request("anthropic", "w", True)).content)
    fragments = [d["delta"]["partial_json"] for d in docs if d["type"] == "content_block_delta"]
    assert fragments[0] == "" and len(fragments) >= 3


def test_gemini_call_signature(sim: Simulator) -> None:
    sim.script("gemini", ToolCalls(CALLS, signature="c2ln"))
    doc = post(sim, "gemini", text_request("gemini", "w", False)).json()
    parts = doc["candidates"][0]["content"]["parts"]
    assert parts[0]["thoughtSignature"] == "c2ln" and "thoughtSignature" not in parts[1]


def test_gemini_takes_a_call_after_a_user_or_function_response_turn(sim: Simulator) -> None:
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    answer = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
    body = _gemini(contents=[
        {"role": "model", "parts": [{"text": "Earlier I said hi."}]},  # text may open
        {"role": "user", "parts": [{"text": "q"}]}, call, answer, call, answer,
    ])  # fmt: skip
    assert post(sim, "gemini", body).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_thinking(sim: Simulator, dialect: str, stream: bool) -> None:
    sim.script(dialect, Thinking("Let me think… ∑", "EqSig==", "Done."))
    response = post(sim, dialect, text_request(dialect, "q", stream), stream=stream)
    got = collect(dialect, stream, response.content)
    assert (got["thought"], got["text"]) == ("Let me think… ∑", "Done.")
    if dialect != "chat":  # DeepSeek-style reasoning carries no signature
        assert got["signature"] == "EqSig=="


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_max_tokens(sim: Simulator, dialect: str, stream: bool) -> None:
    sim.script(dialect, MaxTokens("cut sho"))
    response = post(sim, dialect, text_request(dialect, "q", stream), stream=stream)
    got = collect(dialect, stream, response.content)
    assert (got["text"], got["stop"]) == ("cut sho", MAX_STOP[dialect])


def test_default_error_bodies(sim: Simulator) -> None:
    sim.script("anthropic", Error(529), Error(429))
    overloaded = post(sim, "anthropic", _anthropic())
    assert overloaded.status_code == 529
    assert overloaded.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    limited = post(sim, "anthropic", _anthropic())
    assert limited.headers["retry-after"] == "7"
    sim.script("gemini", Error(429))
    gemini = post(sim, "gemini", _gemini()).json()["error"]
    assert gemini["status"] == "RESOURCE_EXHAUSTED"
    assert gemini["details"][1] == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "34.4s",
    }
    sim.script("chat", Error(429), Error(503, {"oops": True}, {"x-extra": "1"}))
    chat = post(sim, "chat", _chat())
    assert chat.status_code == 429 and chat.headers["retry-after"] == "7"
    assert chat.json()["error"]["code"] == "rate_limit_exceeded"
    custom = post(sim, "chat", _chat())
    assert (custom.status_code, custom.json(), custom.headers["x-extra"]) == (503, {"oops": True},
                                                                               "1")  # fmt: skip


def test_mid_stream_errors(sim: Simulator) -> None:
    for dialect in DIALECTS:
        sim.script(dialect, MidStreamError(after_chunks=3, message="Overloaded"))
    anthropic = sse_events(
        post(sim, "anthropic", text_request("anthropic", "a" * 40, True)).content
    )
    assert anthropic[-1][0] == "error"
    assert orjson.loads(anthropic[-1][1])["error"]["type"] == "overloaded_error"
    assert len(anthropic) == 4
    chat = payloads(post(sim, "chat", text_request("chat", "a" * 40, True)).content)
    assert chat[-1]["error"]["message"] == "Overloaded"
    assert chat[-1]["choices"][0]["finish_reason"] == "error"
    responses = payloads(post(sim, "responses", text_request("responses", "a", True)).content)
    assert responses[-1]["type"] == "response.failed"
    assert responses[-1]["sequence_number"] == 3
    with pytest.raises(httpx.RemoteProtocolError):
        post(sim, "gemini", text_request("gemini", "a" * 40, True), stream=True)


def test_mid_body_cut_for_non_streaming_requests(sim: Simulator) -> None:
    sim.script("chat", MidStreamError())
    with pytest.raises(httpx.RemoteProtocolError):
        post(sim, "chat", _chat())


def test_garbage(sim: Simulator) -> None:
    sim.script("anthropic", Garbage(), Garbage())
    plain = post(sim, "anthropic", _anthropic())
    assert plain.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.content)
    stream = post(sim, "anthropic", _anthropic(stream=True))
    assert stream.headers["content-type"] == "text/event-stream"
    with pytest.raises(json.JSONDecodeError):
        [json.loads(data) for _, data in sse_events(stream.content)]


def test_slow_then_echo_and_hang(sim: Simulator) -> None:
    sim.script("chat", Slow(0.3), Hang(), Echo())
    started = time.perf_counter()
    slow = post(sim, "chat", _chat(_u("late")))
    assert time.perf_counter() - started >= 0.3
    assert slow.json()["choices"][0]["message"]["content"] == "late"
    with pytest.raises(httpx.ReadTimeout):
        post(sim, "chat", _chat(), timeout=0.3)
    assert post(sim, "chat", _chat(_u("after"))).json()["choices"][0]["message"]["content"] == (
        "after"
    )


def test_queue_is_fifo_per_provider(sim: Simulator) -> None:
    sim.script("chat", MaxTokens("one"), MaxTokens("two"))
    assert post(sim, "anthropic", _anthropic()).json()["stop_reason"] == "end_turn"
    texts = [post(sim, "chat", _chat()).json()["choices"][0]["message"]["content"] for _ in "abc"]
    assert texts == ["one", "two", "hi"]


def test_provider_prefix_and_chat_path_without_v1(sim: Simulator) -> None:
    sim.script("deepseek", MaxTokens("ds"))
    response = httpx.post(
        f"{sim.url}/deepseek/chat/completions",
        headers=AUTH["chat"],
        content=orjson.dumps(_chat()),
    )
    assert response.json()["choices"][0]["message"]["content"] == "ds"
    recorded = sim.last
    assert (recorded.provider, recorded.path, recorded.dialect) == (
        "deepseek",
        "/deepseek/chat/completions",
        "chat",
    )
    assert recorded.headers["authorization"] == "Bearer test-key"
    assert httpx.post(f"{sim.url}/x/v1/unknown", content=b"{}").status_code == 404


def test_gemini_stream_without_alt_sse_is_a_json_array(sim: Simulator) -> None:
    target = f"{sim.base('gemini')}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    body = orjson.dumps(text_request("gemini", "array of responses", True))
    docs = httpx.post(target, headers=AUTH["gemini"], content=body).json()
    assert "".join(d["candidates"][0]["content"]["parts"][0]["text"] for d in docs) == (
        "array of responses"
    )


def test_keep_alive_reuses_one_connection(sim: Simulator) -> None:
    before = sim.connections
    with httpx.Client(headers=AUTH["chat"]) as client:
        for stream in (True, False, True):
            body = orjson.dumps(text_request("chat", "k", stream))
            assert client.post(url(sim, "chat"), content=body).status_code == 200
    assert sim.connections == before + 1


def test_aiohttp_transport_streams(sim: Simulator) -> None:
    """The gateway's own client stack (httpx over aiohttp) reads the simulator's streams."""
    from httpx_aiohttp import AiohttpTransport

    async def run() -> bytes:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            body = orjson.dumps(text_request("anthropic", "über aiohttp", True))
            async with client.stream(
                "POST", url(sim, "anthropic"), headers=AUTH["anthropic"], content=body
            ) as response:
                return b"".join([chunk async for chunk in response.aiter_raw()])

    assert collect("anthropic", True, asyncio.run(run()))["text"] == "über aiohttp"


def test_starts_fast_and_runs_standalone(tmp_path: Path) -> None:
    started = time.perf_counter()
    with Simulator() as sim:
        assert time.perf_counter() - started < 1.0
        assert sim.port > 0
    root = Path(__file__).resolve().parents[1]
    with Simulator() as probe:  # borrow a free port number, then release it
        port = probe.port
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.simulators", "--port", str(port)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert f"127.0.0.1:{port}" in proc.stdout.readline()
        response = httpx.post(
            f"http://127.0.0.1:{port}/openai/v1/responses",
            headers=AUTH["responses"],
            content=orjson.dumps(_resp(input="standalone")),
        )
        assert response.json()["output"][0]["content"][0]["text"] == "standalone"
    finally:
        proc.terminate()
        proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()
