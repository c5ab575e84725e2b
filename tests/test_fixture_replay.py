"""Every recorded provider reply, through its mapping and the builder, in any chunking.

The fixtures are real traffic (tests/fixtures/providers). For each one we check that the
mapping knows every event type in it, that the Responses events and the final Response are valid
for OpenAI's schema and the official SDK, that the numbers (usage arithmetic from
providers.md §1.2) and texts come out as the raw bytes say, and that no chunking changes a thing.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import oas
from turnout.engine.builder import ResponseBuilder, make_echo
from turnout.engine.ids import DeterministicIdFactory
from turnout.engine.mapping import CompiledMapping
from turnout.engine.registry import MappingRegistry

FIXTURES = oas.fixtures_root() / "providers"
REGISTRY = MappingRegistry.load()


def _load_stream(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".eventstream.b64.txt"):
        return base64.b64decode(data)  # Bedrock's binary event stream, base64 in the fixture
    if path.name.endswith(".chunks.txt"):
        # vercel/ai recordings: one JSON per line, SSE framing stripped; put it back.
        return b"".join(b"data: " + line + b"\n\n" for line in data.splitlines() if line.strip())
    return data


# (mapping, fixture, status, usage (input, cached, output, reasoning), output item types)
CASES: list[tuple[str, str, str, tuple[int, int, int, int], list[str]]] = [
    ("anthropic", "anthropic/text_stream.sse", "completed", (20, 0, 5, 0), ["message"]),
    (
        "anthropic", "anthropic/thinking_stream.sse", "completed", (43, 0, 282, 0),
        ["reasoning", "message"],
    ),
    (
        "anthropic", "anthropic/parallel_tool_use_stream.sse", "completed", (310, 0, 82, 0),
        ["message", "function_call", "function_call"],
    ),
    (
        "anthropic", "anthropic/redacted_thinking_stream.sse", "completed", (92, 0, 189, 0),
        ["reasoning", "reasoning", "message"],
    ),
    (
        "anthropic", "anthropic/tool_result_followup_stream.sse", "completed", (465, 0, 95, 0),
        ["message"],
    ),
    (
        "anthropic", "anthropic/tool_use_input_json_delta.chunks.txt", "completed",
        (849, 0, 47, 0), ["function_call"],
    ),
    (
        "anthropic", "anthropic/message_thinking_tool_use.json", "completed", (398, 0, 155, 0),
        ["reasoning", "message", "function_call"],
    ),
    # A web search (trimmed recording): one search item, then one message of five text blocks.
    (
        "anthropic", "anthropic/web_search_stream.chunks.txt", "completed", (15665, 0, 795, 0),
        ["web_search_call", "message"],
    ),
    ("gemini", "gemini/text_stream.sse", "completed", (13, 0, 8, 0), ["message"]),
    # 34 prompt + (469 candidates + 787 thoughts) = 1290 total, as the recording's totalTokenCount.
    (
        "gemini", "gemini/thinking_stream.sse", "completed", (34, 0, 1256, 787),
        ["reasoning", "message"],
    ),
    (
        "gemini", "gemini/tool_call_thought_signature_stream.sse", "completed", (29, 0, 212, 202),
        ["function_call", "reasoning"],
    ),
    (
        "gemini", "gemini/function_response_followup_stream.sse", "completed", (257, 0, 8, 0),
        ["message"],
    ),
    (
        "gemini", "gemini/generate_content_function_call.json", "completed", (33, 0, 5, 0),
        ["function_call"],
    ),
    (
        "gemini", "gemini/image_generation_inline_data.json", "completed", (17, 0, 1336, 0),
        ["message", "image_generation_call"],
    ),
    (
        "deepseek", "openai_chat/deepseek_reasoning_stream.sse", "completed", (6, 0, 212, 198),
        ["reasoning", "message"],
    ),
    (
        "mistral", "openai_chat/mistral_magistral_thinking_stream.sse", "completed",
        (10, 0, 232, 0), ["reasoning", "message"],
    ),
    (
        "openrouter", "openai_chat/openrouter_stream_error.sse", "failed", (43, 0, 10, 11),
        ["reasoning"],
    ),
    (
        "openai_chat", "openai_chat/text_stream_after_tool_result.sse", "completed",
        (78, 0, 9, 0), ["message"],
    ),
    (
        "openai_chat", "openai_chat/tool_call_stream_include_usage.sse", "completed",
        (53, 0, 15, 0), ["function_call"],
    ),
    (
        "bedrock", "bedrock/converse_stream_text.eventstream.b64.txt", "completed",
        (13, 0, 82, 0), ["message"],
    ),
    (
        "bedrock", "bedrock/converse_stream_reasoning.eventstream.b64.txt", "completed",
        (36, 0, 73, 0), ["reasoning", "message"],
    ),
    (
        "bedrock", "bedrock/converse_stream_tool_use.eventstream.b64.txt", "completed",
        (471, 0, 91, 0), ["message", "function_call"],
    ),
    (
        "bedrock", "bedrock/model_stream_error_exception.eventstream.b64.txt", "failed",
        (0, 0, 0, 0), [],
    ),
    (
        "bedrock", "bedrock/converse_response_thinking_tool_use.json", "completed",
        (397, 0, 130, 0), ["reasoning", "message", "function_call"],
    ),
    (
        "vertex_ai", "vertex/gemini_stream.sse", "completed", (5, 0, 101, 100), ["message"],
    ),
    (
        "vertex_ai", "vertex/gemini_image_generation.json", "completed", (9, 0, 1290, 0),
        ["image_generation_call"],
    ),
    (
        "azure", "azure/responses_image_generation_stream.chunks.txt", "completed",
        (1979, 0, 67, 0), ["image_generation_call", "message"],
    ),
    (
        "openai", "openai_responses/image_generation_stream.chunks.txt", "completed",
        (2941, 1920, 1249, 1024), ["reasoning", "image_generation_call"],
    ),
    (
        "openai", "openai_responses/function_call_stream.sse", "completed", (255, 0, 16, 0),
        ["function_call"],
    ),
    (
        "openai", "openai_responses/text_stream_after_function_output.sse", "completed",
        (278, 0, 9, 0), ["message"],
    ),
]  # fmt: skip


def _ops(mapping: CompiledMapping, path: Path, chunks: list[int] | None = None) -> list[Any]:
    if path.suffix == ".json":
        return mapping.parse_response(path.read_bytes())
    data = _load_stream(path)
    decoder = mapping.stream_decoder()
    ops: list[Any] = []
    if chunks is None:
        ops.extend(decoder.feed(data))
    else:
        cuts = sorted({c % (len(data) + 1) for c in chunks})
        start = 0
        for cut in [*cuts, len(data)]:
            ops.extend(decoder.feed(data[start:cut]))
            start = max(start, cut)
    ops.extend(decoder.close())
    assert decoder.unknown_events == {}, f"unmapped upstream events: {decoder.unknown_events}"
    return ops


def _build(mapping: CompiledMapping, ops: list[Any]) -> list[dict[str, Any]]:
    builder = ResponseBuilder(
        "resp_test", 1_700_000_000, make_echo({"model": "m"}), mapping.finish_reasons,
        model="m", ids=DeterministicIdFactory(), provider=mapping.provider,
    )  # fmt: skip
    return builder.start() + builder.feed(ops) + builder.finish()


def _raw_texts(path: Path) -> str:
    """The answer text straight from the recorded bytes, independent of the mapping."""
    if path.name.endswith(".eventstream.b64.txt"):
        frames = orjson.loads(
            path.with_name(path.name[: -len(".eventstream.b64.txt")] + ".frames.json").read_bytes()
        )
        return "".join(
            f["payload"].get("delta", {}).get("text", "")
            for f in frames
            if f["headers"].get(":event-type") == "contentBlockDelta"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        doc = orjson.loads(text)
        if "output" in doc:  # Bedrock Converse
            return "".join(b.get("text", "") for b in doc["output"]["message"]["content"])
        if "content" in doc:
            return "".join(b.get("text", "") for b in doc["content"] if b["type"] == "text")
        parts = doc["candidates"][0]["content"]["parts"]
        return "".join(p.get("text", "") for p in parts if not p.get("thought"))
    out = []
    for line in text.splitlines():
        payload = line[5:].strip() if line.startswith("data:") else line.strip()
        if not payload.startswith("{"):
            continue
        doc = orjson.loads(payload)
        if doc.get("type") == "content_block_delta" and doc["delta"].get("type") == "text_delta":
            out.append(doc["delta"]["text"])
        elif doc.get("type") == "response.output_text.delta":
            out.append(doc["delta"])
        elif "candidates" in doc:
            for p in doc["candidates"][0].get("content", {}).get("parts", []):
                if "text" in p and not p.get("thought"):
                    out.append(p["text"])
        elif doc.get("choices"):
            content = doc["choices"][0].get("delta", {}).get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(c["text"] for c in content if c.get("type") == "text")
    return "".join(out)


@pytest.mark.parametrize(("provider", "fixture", "status", "usage", "kinds"), CASES)
def test_recorded_reply_builds_a_valid_response(
    provider: str, fixture: str, status: str, usage: tuple[int, int, int, int], kinds: list[str]
) -> None:
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    path = FIXTURES / fixture
    events = _build(mapping, _ops(mapping, path))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        oas.validate_event(event)
        oas.validate_event_sdk(event)
    final = events[-1]["response"]
    assert events[-1]["type"] == f"response.{status}"
    assert final["status"] == status
    oas.validate_response(final)
    oas.validate_response_sdk(final)
    assert [item["type"] for item in final["output"]] == kinds
    got = final["usage"]
    assert (
        got["input_tokens"],
        got["input_tokens_details"]["cached_tokens"],
        got["output_tokens"],
        got["output_tokens_details"]["reasoning_tokens"],
    ) == usage
    assert got["total_tokens"] == usage[0] + usage[2]
    text = "".join(
        part.get("text", "")
        for item in final["output"]
        if item["type"] == "message"
        for part in item["content"]
    )
    assert text == _raw_texts(path)


@pytest.mark.parametrize(
    ("provider", "fixture"),
    [(c[0], c[1]) for c in CASES if not c[1].endswith(".json")],
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40))
def test_any_chunking_gives_the_same_ops(provider: str, fixture: str, cuts: list[int]) -> None:
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    path = FIXTURES / fixture
    assert _ops(mapping, path, cuts) == _ops(mapping, path)


def test_byte_by_byte_chunking_of_a_crlf_stream() -> None:
    mapping = REGISTRY.get("gemini")
    assert mapping is not None
    path = FIXTURES / "gemini/thinking_stream.sse"
    data = _load_stream(path)
    assert b"\r\n" in data
    assert _ops(mapping, path, list(range(len(data)))) == _ops(mapping, path)


def test_anthropic_signatures_are_kept_for_the_next_turn() -> None:
    mapping = REGISTRY.get("anthropic")
    assert mapping is not None
    events = _build(mapping, _ops(mapping, FIXTURES / "anthropic/thinking_stream.sse"))
    reasoning = events[-1]["response"]["output"][0]
    raw = (FIXTURES / "anthropic/thinking_stream.sse").read_text()
    signature = re.search(r'"signature":"([^"]+)"', raw)
    assert signature is not None
    from turnout.engine.canonical import decode_state

    provider, state = decode_state(reasoning["encrypted_content"])
    assert provider == "anthropic"
    assert state == {"signature": signature.group(1)}


def test_openrouter_mid_stream_error_keeps_the_provider_message() -> None:
    mapping = REGISTRY.get("openrouter")
    assert mapping is not None
    events = _build(mapping, _ops(mapping, FIXTURES / "openai_chat/openrouter_stream_error.sse"))
    final = events[-1]
    assert final["type"] == "response.failed"
    assert "Token limit reached" in final["response"]["error"]["message"]


@pytest.mark.parametrize(
    ("provider", "fixture"),
    [("gemini", "gemini/function_response_followup_stream.sse"),
     ("groq", "openai_chat/text_stream_after_tool_result.sse")],
)  # fmt: skip
def test_a_recorded_stream_cut_before_its_stop_names_the_provider(
    provider: str, fixture: str
) -> None:
    """The connection closed cleanly but early (no stop reason): the failure says so, names the
    provider first and how far the stream got, and claims no connection problem."""
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    data = _load_stream(FIXTURES / fixture)
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    decoder = mapping.stream_decoder()
    ops = decoder.feed(sep.join(data.split(sep)[:2]) + sep) + decoder.close()
    error = _build(mapping, ops)[-1]["response"]["error"]
    assert error == {
        "code": "server_error",
        "message": f"{provider}: the upstream stream ended before the response was complete "
        "(no stop reason after 2 events)",
    }


@pytest.mark.parametrize(
    "fixture",
    ["openai_responses/image_generation_stream.chunks.txt",
     "azure/responses_image_generation_stream.chunks.txt"],
)  # fmt: skip
def test_recorded_image_streams_keep_partials_and_settings(fixture: str) -> None:
    """Issue 6: partial images in order, the final item with its result and settings."""
    provider = "openai" if fixture.startswith("openai") else "azure"
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    path = FIXTURES / fixture
    events = _build(mapping, _ops(mapping, path))
    raw = [orjson.loads(x) for x in path.read_text().splitlines() if x.strip()]
    recorded = [e for e in raw if e["type"] == "response.image_generation_call.partial_image"]
    ours = [e for e in events if e["type"] == "response.image_generation_call.partial_image"]
    assert [e["partial_image_b64"] for e in ours] == [e["partial_image_b64"] for e in recorded]
    assert [e["partial_image_index"] for e in ours] == [e["partial_image_index"] for e in recorded]
    done = next(
        e["item"] for e in raw
        if e["type"] == "response.output_item.done" and e["item"]["type"] == "image_generation_call"
    )  # fmt: skip
    final = next(
        i for i in events[-1]["response"]["output"] if i["type"] == "image_generation_call"
    )
    for key in ("result", "revised_prompt", "size", "quality", "background", "output_format"):
        assert final.get(key) == done.get(key), key
    # Azure's recording skips `.completed`; Turnout always sends it, after the partials.
    kinds = [e["type"].rsplit(".", 1)[1] for e in events if ".image_generation_call." in e["type"]]
    assert kinds[-1] == "completed"
    assert kinds[:2] == ["in_progress", "generating"]


def test_a_recorded_web_search_cites_whole_text_blocks() -> None:
    """Anthropic's citations cover their text block: the span annotated is the block's text,
    announced after its last delta (tests/fixtures/providers/anthropic/web_search_stream)."""
    mapping = REGISTRY.get("anthropic")
    assert mapping is not None
    path = FIXTURES / "anthropic/web_search_stream.chunks.txt"
    builder = ResponseBuilder(
        "resp_test", 1_700_000_000, make_echo({"model": "m"}), mapping.finish_reasons,
        model="m", ids=DeterministicIdFactory(), provider=mapping.provider,
        include=["web_search_call.action.sources"],
    )  # fmt: skip
    events = builder.start() + builder.feed(_ops(mapping, path)) + builder.finish()
    call, message = events[-1]["response"]["output"]
    assert call["action"]["query"] == "tech news today September 26 2025"
    assert [s["url"] for s in call["action"]["sources"]][:1] == [
        "https://www.crescendo.ai/news/latest-ai-news-and-updates"
    ]
    blocks: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = orjson.loads(line)
        if doc["type"] == "content_block_delta" and doc["delta"]["type"] == "text_delta":
            blocks[doc["index"]] = blocks.get(doc["index"], "") + doc["delta"]["text"]
    (part,) = message["content"]
    spans = [part["text"][a["start_index"] : a["end_index"]] for a in part["annotations"]]
    assert spans == [blocks[3]] * 3 + [blocks[5]] * 2
    assert builder.web_searches == 1
    kinds = [e["type"] for e in events]
    assert kinds.count("response.output_text.annotation.added") == 5
