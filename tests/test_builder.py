"""ResponseBuilder: the Responses event grammar, checked against the official SDK.

Property tests feed random valid op sequences (any unicode text, reasoning with state, parallel
tool calls interleaved by index, whole calls, images, usage, finish reasons, in-band errors) and
check the grammar invariants, strict SDK validation, the SDK's own stream accumulator and
determinism. Explicit tests pin anchor failures 3-6 (shared/reference/anchor-failures.md).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._models import BaseModel, validate_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from turnout.engine.builder import (
    RESPONSE_ERROR_CODES,
    ResponseBuilder,
    decode_reasoning_state,
    default_echo,
    make_echo,
    mint_reasoning_state,
    response_error,
)
from turnout.engine.ids import DeterministicIdFactory, IdFactory
from turnout.engine.ops import FINISH_STATUSES, OPS, check_op

Op = dict[str, Any]
Event = dict[str, Any]

FINISH = {
    "stop": "completed",
    "tool_use": "completed",
    "length": "incomplete/max_output_tokens",
    "content_filter": "incomplete/content_filter",
    "malformed": "failed",
}
BODY = {
    "model": "claude-x",
    "input": "hi",
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "reasoning": {"effort": "high", "summary": "auto"},
    "metadata": {"k": "v"},
}
# Fields Turnout adds for Open Responses compliance that the OpenAI SDK types do not declare.
# `store` is sent by OpenAI and required by Open Responses; `name` on arguments.done is required by
# the OAS. SDK 3.57 declares neither, so they arrive as (allowed) extras.
ALLOWED_EXTRAS = {
    "Response": {"presence_penalty", "frequency_penalty", "store"},
    "ResponseFunctionCallArgumentsDoneEvent": {"name"},
}


def new_builder(provider: str = "anthropic") -> ResponseBuilder:
    return ResponseBuilder(
        "resp_test",
        1_700_000_000,
        make_echo(BODY),
        FINISH,
        "claude-x",
        DeterministicIdFactory(),
        provider=provider,
        clock=lambda: 1_700_000_005.0,
    )


def run(ops: list[Op], provider: str = "anthropic") -> tuple[ResponseBuilder, list[Event]]:
    b = new_builder(provider)
    events = b.start()
    # Feed in small batches, as a stream decoder would.
    for i in range(0, len(ops), 3):
        events += b.feed(ops[i : i + 3])
    events += b.finish()
    events += b.finish()  # idempotent
    events += b.fail("server_error", "late")  # no-op once terminal
    return b, events


# ---- invariant checks ------------------------------------------------------------------------


def _no_extras(value: Any, path: str) -> None:
    """Strict validation ignores unknown keys (the SDK models allow extras): flag our typos."""
    if isinstance(value, BaseModel):
        extra = set(getattr(value, "__pydantic_extra__", None) or {})
        extra -= ALLOWED_EXTRAS.get(type(value).__name__, set())
        assert not extra, f"{path}: undeclared fields {extra} on {type(value).__name__}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_extras(v, f"{path}[{i}]")


def _strip_parsed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_parsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")
        }
    if isinstance(value, list):
        return [_strip_parsed(v) for v in value]
    return value


def check_stream(b: ResponseBuilder, events: list[Event]) -> None:
    # (a) contiguous sequence numbers, created first, exactly one terminal event, last.
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[1]["type"] == "response.in_progress"
    terminals = [e for e in events if e["type"] in TERMINALS]
    assert len(terminals) == 1 and terminals[0] is events[-1]
    final = events[-1]["response"]
    assert final is b.response and b.terminal
    assert b.internal_error is None
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert ids == {"resp_test"}  # anchor failure 2: one id on every lifecycle event

    # (b) pairing: every .added has its .done and vice versa; ids consistent; append-only.
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    parts_open: set[tuple[Any, ...]] = set()
    parts_done: set[tuple[Any, ...]] = set()
    text: dict[tuple[Any, ...], list[str]] = {}
    for e in events:
        t = e["type"]
        if t == "response.output_item.added":
            assert e["output_index"] == len(added)
            added[e["output_index"]] = e["item"]
            continue
        if t == "response.output_item.done":
            oi = e["output_index"]
            assert oi in added and oi not in done
            assert not any(k[0] == oi for k in parts_open - parts_done)
            a, d = added[oi], e["item"]
            assert (a["type"], a["id"], a.get("call_id")) == (d["type"], d["id"], d.get("call_id"))
            done[oi] = d
            continue
        if "item_id" in e:
            oi = e["output_index"]
            assert oi in added and oi not in done, f"{t} on an item not open"
            assert e["item_id"] == added[oi]["id"]
        if t in ("response.content_part.added", "response.reasoning_summary_part.added"):
            key = (e["output_index"], e.get("content_index", e.get("summary_index")), t[9:13])
            assert key not in parts_open
            parts_open.add(key)
        elif t in ("response.content_part.done", "response.reasoning_summary_part.done"):
            key = (e["output_index"], e.get("content_index", e.get("summary_index")), t[9:13])
            assert key in parts_open and key not in parts_done
            parts_done.add(key)
        elif t.endswith(".delta"):
            ci = e.get("content_index", e.get("summary_index", -1))
            text.setdefault((e["output_index"], ci), []).append(e["delta"])
        elif t in TEXT_DONE:
            ci = e.get("content_index", e.get("summary_index", -1))
            # (e) concatenated deltas == done text
            assert "".join(text.get((e["output_index"], ci), [])) == e[TEXT_DONE[t]]
    assert parts_open == parts_done
    assert sorted(added) == sorted(done)
    # .done items equal the final output exactly, in output_index order
    assert final["output"] == [done[i] for i in range(len(done))]
    for item in final["output"]:
        if item["type"] == "message":
            assert item["content"], "empty message item"
            for ci, part in enumerate(item["content"]):
                got = part["text"] if part["type"] == "output_text" else part["refusal"]
                assert got == "".join(text[(final["output"].index(item), ci)])  # (e)

    # usage always complete ints at the end
    u = final["usage"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    assert set(u["input_tokens_details"]) == {"cached_tokens", "cache_write_tokens"}

    # (c) strict SDK validation, no undeclared fields; (d) SDK accumulator raises nothing.
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for e in events:
        # What OpenAI(_strict_response_validation=True) does per SSE event (_base_client.py).
        model: Any = validate_type(
            type_=ResponseStreamEvent,  # type: ignore[arg-type]
            value=orjson.loads(orjson.dumps(e)),
        )
        _no_extras(model, e["type"])
        state.handle_event(model)
    if final["status"] == "completed":
        completed = state._completed_response
        assert completed is not None
        assert _strip_parsed(completed.to_dict()) == orjson.loads(orjson.dumps(final))
    else:
        assert final["completed_at"] is None


TERMINALS = {"response.completed", "response.incomplete", "response.failed"}
TEXT_DONE = {
    "response.output_text.done": "text",
    "response.refusal.done": "refusal",
    "response.reasoning_summary_text.done": "text",
    "response.function_call_arguments.done": "arguments",
}


def check_citations_and_searches(ops: list[Op], final: dict[str, Any], events: list[Event]) -> None:
    """Annotations lie inside their text and are the ones announced; a segment's citation
    starts where its text does; each search is one web_search_call item."""
    cited = {}
    for o in ops:
        if o["op"] == "text_delta" and "segment" in o:
            cited[o["segment"]] = o["text"]
    announced: dict[tuple[int, int], list[Any]] = {}
    for e in events:
        if e["type"] == "response.output_text.annotation.added":
            notes = announced.setdefault((e["output_index"], e["content_index"]), [])
            assert e["annotation_index"] == len(notes)
            notes.append(e["annotation"])
    for oi, item in enumerate(final["output"]):
        if item["type"] != "message":
            continue
        for ci, part in enumerate(item["content"]):
            if part["type"] != "output_text":
                continue
            notes = part["annotations"]
            assert announced.pop((oi, ci), []) == notes
            for note in notes:
                assert 0 <= note["start_index"] < note["end_index"] <= len(part["text"])
                assert note["title"]
                if note["url"].startswith("https://ex.com/"):
                    sid = note["url"].split("/")[3]
                    assert part["text"][note["start_index"] :].startswith(cited[sid])
    assert not announced  # every announced annotation is in the final response
    searches = [o for o in ops if o["op"] == "search_start"]
    calls = [i for i in final["output"] if i["type"] == "web_search_call"]
    if ops[-2]["op"] != "error":
        assert len(calls) == len(searches)
    for call in calls:
        assert call["status"] in ("completed", "failed")
        assert call["action"]["type"] == "search" and "sources" not in call["action"]


# ---- op sequence strategy ----------------------------------------------------------------------

texts = st.text(max_size=12)
segments = st.one_of(
    st.tuples(st.just("text"), st.lists(texts, max_size=5), st.booleans(), st.booleans()),
    st.tuples(
        st.just("mixed"),
        st.lists(st.tuples(st.sampled_from(["text_delta", "refusal_delta"]), texts), max_size=5),
    ),
    st.tuples(
        st.just("reasoning"),
        st.lists(texts, max_size=4),
        st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=2)),
        st.one_of(st.none(), st.text(alphabet="abcdef0123", min_size=1, max_size=10)),
        st.booleans(),
    ),
    st.tuples(
        st.just("tools"),
        st.lists(st.lists(texts, min_size=1, max_size=4), min_size=1, max_size=3),
        st.randoms(use_true_random=False),
        st.booleans(),
    ),
    st.tuples(
        st.just("tool_call"),
        st.one_of(texts, st.dictionaries(st.text(max_size=4), st.integers() | texts, max_size=3)),
    ),
    st.tuples(
        st.just("image"),
        st.lists(st.binary(min_size=1, max_size=6), max_size=3),
        st.booleans(),
        st.sampled_from([None, "image/png", "image/webp", "image/bmp"]),
    ),
    # Anthropic-style cited text: each piece a segment, its citations before its text.
    st.tuples(
        st.just("cited"), st.lists(st.tuples(texts, st.integers(0, 2)), min_size=1, max_size=4)
    ),
    # A web search, its query given or streamed as arguments, reported twice (Gemini resends).
    st.tuples(
        st.just("search"),
        st.text(max_size=8),
        st.lists(st.sampled_from(["https://a.example/", "https://b.example/x"]), max_size=3),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
    # Gemini-style citations with explicit offsets (characters or UTF-8 bytes, any range).
    st.tuples(
        st.just("spans"),
        texts,
        st.lists(st.tuples(st.integers(-2, 40), st.integers(-2, 40), st.booleans()), max_size=3),
    ),
    st.tuples(
        st.just("usage"),
        st.fixed_dictionaries(
            {},
            optional={
                f: st.integers(0, 10_000)
                for f in (
                    "input_tokens",
                    "cached_tokens",
                    "cache_write_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                )
            },
        ),
    ),
)
endings = st.one_of(
    st.none(),
    st.tuples(st.just("finish"), st.sampled_from([*FINISH, "weird_reason"])),
    st.tuples(
        st.just("error"),
        st.sampled_from([None, "overloaded_error", "rate_limit_error", "server_error"]),
        texts,
    ),
)


def to_ops(segs: list[tuple[Any, ...]], indexed: bool, ending: Any) -> list[Op]:
    ops: list[Op] = [{"op": "start", "id": "up_1", "model": "native"}]
    counter = iter(range(10_000))
    ncall = iter(range(10_000))

    def ix() -> dict[str, int]:
        return {"index": next(counter)} if indexed else {}

    for seg in segs:
        kind = seg[0]
        if kind == "text":
            _, deltas, opened, closed = seg
            i = ix()
            if opened:
                ops.append({"op": "open_text", **i})
            ops += [{"op": "text_delta", "text": d, **i} for d in deltas]
            if closed:
                ops.append({"op": "close", **i})
        elif kind == "mixed":
            i = ix()
            ops += [{"op": op, "text": d, **i} for op, d in seg[1]]
        elif kind == "reasoning":
            _, deltas, state, native, closed = seg
            i = ix()
            ops.append({"op": "open_reasoning", **i})
            ops += [{"op": "reasoning_delta", "text": d, **i} for d in deltas]
            if state is not None or native is not None:
                rs: Op = {"op": "reasoning_state", "state": state or {}, **i}
                if native is not None:
                    rs["encrypted_content"] = native
                ops.append(rs)
            if closed:
                ops.append({"op": "close", **i})
        elif kind == "tools":
            _, calls, rnd, closed = seg
            keys = [(ix(), f"call_{next(ncall)}") for _ in calls]
            order = [c for c, chunks in enumerate(calls) for _ in chunks]
            rnd.shuffle(order)
            pos = [0] * len(calls)
            for c in order:
                i, call_id = keys[c]
                frag: Op = {"op": "tool_args_delta", "text": calls[c][pos[c]], **i}
                if pos[c] == 0 or not indexed:  # Chat style: id + name on the first fragment
                    frag["call_id"] = call_id
                if pos[c] == 0:
                    frag["name"] = f"fn{c}"
                pos[c] += 1
                ops.append(frag)
            if closed:
                ops += [{"op": "close", **i} for i, _ in keys] if indexed else [{"op": "close"}]
        elif kind == "tool_call":
            ops.append({"op": "tool_call", "name": "whole", "arguments": seg[1], **ix()})
        elif kind == "image":
            _, partials, final, mime = seg
            i = ix()
            for p in partials:
                ops.append({"op": "image_partial", "b64": base64.b64encode(p).decode(), **i})
            if final or not partials:
                img: Op = {"op": "image", "b64": "aW1n", "revised_prompt": "a cat", **i}
                if mime:
                    img["mime"] = mime
                ops.append(img)
        elif kind == "cited":
            for k, (text, n) in enumerate(seg[1]):
                sid = f"s{next(counter)}.{k}"
                ops.append({"op": "open_text", "segment": sid})
                ops += [{"op": "cite", "url": f"https://ex.com/{sid}/{c}"} for c in range(n)]
                ops.append({"op": "text_delta", "segment": sid, "text": text})
        elif kind == "search":
            _, query, sources, streamed, error, closed = seg
            i, key = ix(), f"srvtoolu_{next(ncall)}"
            start: Op = {"op": "search_start", "key": key, **i}
            ops.append(start)
            if streamed and i:
                arguments = orjson.dumps({"query": query}).decode()
                ops += [{"op": "tool_args_delta", "text": arguments[j : j + 5], **i}
                        for j in range(0, len(arguments), 5)]  # fmt: skip
            else:
                start["query"] = query
            if closed:
                ops.append({"op": "close", **i})
            done: Op = {"op": "search_done", "key": key, "sources": sources}
            if error:
                done["error"] = "max_uses_exceeded"
            ops += [done, dict(done)]
        elif kind == "spans":
            _, text, spans = seg
            ops.append({"op": "text_delta", "text": text})
            for begin, end, utf8 in spans:
                cite: Op = {"op": "cite", "url": "https://sp.example/", "start": begin, "end": end}
                if utf8:
                    cite["offsets"] = "utf8"
                ops.append(cite)
        elif kind == "usage":
            ops.append({"op": "usage", **seg[1]})
    if ending is not None:
        if ending[0] == "finish":
            ops.append({"op": "finish", "reason": ending[1]})
        else:
            ops.append({"op": "error", "code": ending[1], "message": ending[2]})
    ops.append({"op": "end"})
    return ops


op_sequences = st.builds(to_ops, st.lists(segments, max_size=8), st.booleans(), endings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op_sequences)
def test_random_op_sequences_make_valid_streams(ops: list[Op]) -> None:
    b, events = run(ops)
    check_stream(b, events)

    # (e) text in equals text out, per family
    final = b.response
    sent = "".join(o["text"] for o in ops if o["op"] == "text_delta")
    got = "".join(
        p["text"]
        for it in final["output"]
        if it["type"] == "message"
        for p in it["content"]
        if p["type"] == "output_text"
    )
    assert got == sent
    args_sent: dict[str, str] = {}
    by_index: dict[int, str] = {}
    searched = {o.get("index") for o in ops if o["op"] == "search_start"}
    for o in ops:
        if o["op"] == "tool_args_delta" and o.get("index", -1) not in searched:
            cid = o.get("call_id") or by_index[o["index"]]
            if "index" in o:
                by_index[o["index"]] = cid
            args_sent[cid] = args_sent.get(cid, "") + o["text"]
    for it in final["output"]:
        if it["type"] == "function_call" and it["call_id"] in args_sent:
            # A completed call with no argument text carries "{}" (valid JSON), never "".
            expected = args_sent[it["call_id"]]
            if expected == "" and it["status"] == "completed":
                expected = "{}"
            assert it["arguments"] == expected
    assert b.dropped_deltas == 0
    check_citations_and_searches(ops, final, events)

    # status follows the ending
    ending = ops[-2]
    if ending["op"] == "error":
        assert final["status"] == "failed"
        assert final["error"]["code"] in RESPONSE_ERROR_CODES
    elif ending["op"] == "finish":
        outcome = FINISH.get(ending["reason"], "completed")
        assert final["status"] == outcome.partition("/")[0]
        assert b.unknown_finish_reasons == (ending["reason"] not in FINISH)

    # (f) determinism: a fresh builder fed the same ops gives the same events and response
    b2, events2 = run(ops)
    assert events2 == events and b2.response == final
    # non-stream: feeding everything at once gives the same Response
    b3 = new_builder()
    b3.feed(ops)
    b3.finish()
    assert b3.response == final


# ---- explicit cases ----------------------------------------------------------------------------


def types(events: list[Event]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


def test_anchor3_reasoning_then_text_opens_message_before_deltas() -> None:
    b, events = run(
        [
            {"op": "reasoning_delta", "text": "hmm"},
            {"op": "text_delta", "text": "Hello"},
            {"op": "text_delta", "text": " world"},
            {"op": "finish", "reason": "stop"},
        ]
    )
    check_stream(b, events)
    assert types(events)[2:] == [
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert events[8]["item"]["type"] == "message" and events[8]["output_index"] == 1


def test_anchor4_tool_only_turn_has_no_message_item() -> None:
    # Anthropic-style: a text block is opened, stays empty, then a tool_use block follows.
    b, events = run(
        [
            {"op": "open_text", "index": 0},
            {"op": "text_delta", "index": 0, "text": ""},
            {"op": "close", "index": 0},
            {"op": "tool_call_start", "index": 1, "call_id": "toolu_1", "name": "get"},
            {"op": "tool_args_delta", "index": 1, "text": ""},
            {"op": "tool_args_delta", "index": 1, "text": '{"a":1}'},
            {"op": "close", "index": 1},
            {"op": "finish", "reason": "tool_use"},
        ]
    )
    check_stream(b, events)
    assert [it["type"] for it in b.response["output"]] == ["function_call"]
    assert not any(e["type"].startswith("response.content_part") for e in events)
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert [d["delta"] for d in deltas] == ['{"a":1}']  # empty text emits no delta
    item = b.response["output"][0]
    assert item["call_id"] == "toolu_1" and item["id"].startswith("fc_")


def test_anchor5_strict_fields_present() -> None:
    b, events = run([{"op": "text_delta", "text": "x"}, {"op": "usage", "output_tokens": 3}])
    check_stream(b, events)
    resp = b.response
    required = {
        "completed_at", "previous_response_id", "truncation", "text", "presence_penalty",
        "frequency_penalty", "top_logprobs", "reasoning", "usage", "max_output_tokens",
        "max_tool_calls", "store", "background", "service_tier", "safety_identifier",
        "prompt_cache_key", "conversation",
    }  # fmt: skip
    assert required <= set(resp)
    assert resp["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert resp["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert isinstance(resp["created_at"], int) and isinstance(resp["completed_at"], int)
    assert resp["tools"] == [
        {
            "type": "function",
            "name": "f",
            "description": None,
            "parameters": {"type": "object"},
            "strict": True,
        }
    ]


def test_anchor6_error_mid_stream_closes_items_then_fails() -> None:
    b, events = run(
        [
            {"op": "text_delta", "index": 0, "text": "par"},
            {"op": "tool_args_delta", "index": 1, "call_id": "c", "name": "f", "text": "{"},
            {"op": "error", "type": "overloaded_error", "message": "Overloaded"},
            {"op": "text_delta", "text": "ignored"},
        ]
    )
    check_stream(b, events)
    assert events[-1]["type"] == "response.failed"
    assert events[-2]["type"] == "response.output_item.done"
    resp = b.response
    # The provider first (behind an alias the client cannot tell who failed), then its code.
    message = "anthropic: [overloaded_error] Overloaded"
    assert resp["error"] == {"code": "server_error", "message": message}
    assert [it["status"] for it in resp["output"]] == ["completed", "incomplete"]
    assert resp["usage"] is not None and resp["completed_at"] is None


def test_incomplete_marks_in_flight_items() -> None:
    b, events = run([{"op": "text_delta", "text": "trunc"}, {"op": "finish", "reason": "length"}])
    check_stream(b, events)
    assert events[-1]["type"] == "response.incomplete"
    assert b.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert b.response["output"][0]["status"] == "incomplete"


def test_failed_finish_reason_and_unknown_reason() -> None:
    b, events = run([{"op": "finish", "reason": "malformed"}])
    check_stream(b, events)
    assert b.response["status"] == "failed" and b.response["error"]["code"] == "server_error"
    b, events = run([{"op": "text_delta", "text": "a"}, {"op": "finish", "reason": "??"}])
    assert b.response["status"] == "completed" and b.unknown_finish_reasons == 1


def test_parallel_tool_calls_interleaved_by_index() -> None:
    b, events = run(
        [
            {"op": "text_delta", "text": "Let me check."},
            {"op": "tool_args_delta", "index": 0, "call_id": "a", "name": "f", "text": '{"x"'},
            {"op": "tool_args_delta", "index": 1, "call_id": "b", "name": "g", "text": '{"y"'},
            {"op": "tool_args_delta", "index": 0, "text": ":1}"},
            {"op": "tool_args_delta", "index": 1, "text": ":2}"},
            {"op": "finish", "reason": "tool_use"},
        ]
    )
    check_stream(b, events)
    out = b.response["output"]
    assert [(it["type"], it.get("arguments")) for it in out] == [
        ("message", None),
        ("function_call", '{"x":1}'),
        ("function_call", '{"y":2}'),
    ]


def test_same_index_new_call_id_starts_new_call() -> None:
    b, events = run(
        [
            {"op": "tool_args_delta", "index": 0, "call_id": "a", "name": "f", "text": "{}"},
            {"op": "tool_args_delta", "index": 0, "call_id": "b", "name": "f", "text": "{}"},
        ]
    )
    check_stream(b, events)
    assert [it["call_id"] for it in b.response["output"]] == ["a", "b"]


def test_unindexed_parallel_calls_route_by_call_id() -> None:
    b, events = run(
        [
            {"op": "tool_args_delta", "call_id": "a", "name": "f", "text": "[1"},
            {"op": "tool_args_delta", "call_id": "b", "name": "g", "text": "[2"},
            {"op": "tool_args_delta", "call_id": "a", "text": "]"},
            {"op": "tool_args_delta", "call_id": "b", "text": "]"},
            {"op": "close"},
            {"op": "tool_args_delta", "call_id": "a", "text": "late"},  # finished call: dropped
            {"op": "tool_call_start", "call_id": "b", "name": "g"},  # no duplicate call_id
        ]
    )
    check_stream(b, events)
    assert [(it["call_id"], it["arguments"]) for it in b.response["output"]] == [
        ("a", "[1]"),
        ("b", "[2]"),
    ]
    assert b.dropped_deltas == 1


def test_orphan_tool_delta_after_close_is_dropped_and_counted() -> None:
    b, events = run(
        [
            {"op": "tool_call_start", "index": 0, "call_id": "a", "name": "f"},
            {"op": "tool_args_delta", "index": 0, "text": "{}"},
            {"op": "close", "index": 0},
            {"op": "tool_args_delta", "index": 0, "text": "late"},
        ]
    )
    check_stream(b, events)
    assert b.dropped_deltas == 1 and b.response["output"][0]["arguments"] == "{}"


def test_text_delta_after_close_opens_new_message() -> None:
    b, events = run(
        [
            {"op": "text_delta", "index": 0, "text": "a"},
            {"op": "close", "index": 0},
            {"op": "text_delta", "index": 0, "text": "b"},
        ]
    )
    check_stream(b, events)
    assert [it["content"][0]["text"] for it in b.response["output"]] == ["a", "b"]


def test_whole_tool_call_with_object_arguments() -> None:
    b, events = run(
        [{"op": "tool_call", "name": "f", "arguments": {"é": [1, 2]}, "state": {"sig": "s"}}]
    )
    check_stream(b, events)
    item = b.response["output"][0]
    assert item["arguments"] == '{"é":[1,2]}' and item["call_id"].startswith("call_")
    assert b.call_state == {item["call_id"]: {"sig": "s"}}
    assert types(events)[2:6] == [
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
    ]


def test_reasoning_state_minted_and_native_passthrough() -> None:
    b, events = run(
        [
            {"op": "open_reasoning", "index": 0},
            {"op": "reasoning_delta", "index": 0, "text": "t"},
            {"op": "reasoning_state", "index": 0, "state": {"signature": "sig"}},
            {"op": "close", "index": 0},
            {"op": "reasoning_state", "index": 1, "state": {}, "encrypted_content": "gAAA"},
            {"op": "close", "index": 1},
            {"op": "text_delta", "index": 2, "text": "ok"},
        ]
    )
    check_stream(b, events)
    r0, r1, _ = b.response["output"]
    assert decode_reasoning_state(r0["encrypted_content"]) == ("anthropic", {"signature": "sig"})
    assert r1["encrypted_content"] == "gAAA" and r1["summary"] == []
    assert decode_reasoning_state("gAAA") is None


def test_image_events() -> None:
    b, events = run(
        [
            {"op": "image_partial", "b64": "cDA=", "partial_index": 0},
            {"op": "image_partial", "b64": "cDE="},
            {"op": "image", "b64": "ZmluYWw=", "mime": "image/png", "revised_prompt": "cat"},
            {"op": "text_delta", "text": "Here."},
        ]
    )
    check_stream(b, events)
    assert types(events)[2:9] == [
        "output_item.added",
        "image_generation_call.in_progress",
        "image_generation_call.generating",
        "image_generation_call.partial_image",
        "image_generation_call.partial_image",
        "image_generation_call.completed",
        "output_item.done",
    ]
    assert [e["partial_image_index"] for e in events[5:7]] == [0, 1]
    assert b.response["output"][0] == {
        "id": "ig_0001",
        "type": "image_generation_call",
        "status": "completed",
        "result": "ZmluYWw=",
        "revised_prompt": "cat",
        "output_format": "png",
    }


def test_usage_last_non_null_wins() -> None:
    b, _ = run(
        [
            {"op": "usage", "input_tokens": 10, "cached_tokens": 4, "output_tokens": 1},
            {"op": "usage", "input_tokens": None, "output_tokens": 7, "reasoning_tokens": 2},
        ]
    )
    assert b.response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 17,
    }


def test_start_snapshots_and_fail() -> None:
    b = new_builder()
    evs = b.start()
    assert b.start() == []
    assert [e["response"]["status"] for e in evs] == ["in_progress", "in_progress"]
    assert evs[0]["response"] is not evs[1]["response"]
    assert evs[0]["response"]["output"] == [] and evs[0]["response"]["usage"] is None
    evs += b.feed([{"op": "text_delta", "text": "x"}])
    evs += b.fail("overloaded", "busy")
    assert b.fail("server_error", "again") == [] and b.finish() == []
    check_stream(b, evs)
    assert b.response["error"] == {"code": "server_error", "message": "[overloaded] busy"}


def test_feed_before_start_still_valid() -> None:
    b = new_builder()
    evs = b.feed([{"op": "text_delta", "text": "x"}]) + b.finish()
    check_stream(b, evs)


def test_response_error_mapping() -> None:
    assert response_error("rate_limit_error", "slow")["code"] == "rate_limit_exceeded"
    assert response_error(None, "q", "ThrottlingException")["code"] == "rate_limit_exceeded"
    assert response_error("429", "x") == {"code": "rate_limit_exceeded", "message": "[429] x"}
    assert response_error("invalid_prompt", "bad") == {"code": "invalid_prompt", "message": "bad"}
    assert response_error(None, None) == {"code": "server_error", "message": "upstream error"}
    # No native code is no "[None]"; a provider's failure names it first.
    assert response_error(None, "boom", provider="groq") == {
        "code": "server_error",
        "message": "groq: boom",
    }
    assert response_error(502, "boom", provider="openrouter")["message"] == "openrouter: [502] boom"


def test_a_failed_finish_reason_names_the_provider() -> None:
    b = new_builder("gemini")
    b.route({"SAFETY": "failed"}, "gemini")
    b.start()
    b.feed([{"op": "text_delta", "text": "x"}, {"op": "finish", "reason": "SAFETY"}])
    b.finish()
    message = "gemini: [SAFETY] upstream stopped with finish reason 'SAFETY'"
    assert b.response["error"] == {"code": "server_error", "message": message}


def test_make_echo_defaults_and_normalisation() -> None:
    echo = make_echo(
        {
            "tools": [
                {"type": "function", "name": "f", "strict": False},
                {"type": "image_generation"},
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "text": {"format": {"type": "json_object"}},
            "temperature": 0.2,
        }
    )
    assert echo["tools"][0] == {
        "type": "function",
        "name": "f",
        "description": None,
        "parameters": None,
        "strict": False,
    }
    assert echo["tools"][1] == {"type": "image_generation"}
    assert echo["tool_choice"] == {"type": "function", "name": "f"}
    assert echo["text"] == {"format": {"type": "json_object"}, "verbosity": "medium"}
    assert echo["temperature"] == 0.2 and echo["top_p"] == 1.0
    base = default_echo()
    assert base["service_tier"] == "default" and base["store"] is True
    assert base["parallel_tool_calls"] is True and base["truncation"] == "disabled"


def test_ids() -> None:
    ids = IdFactory()
    m = ids.message()
    assert m.startswith("msg_") and len(m) == 4 + 48 and m != ids.message()
    assert ids.call().startswith("call_") and ids.response().startswith("resp_")
    d = DeterministicIdFactory()
    assert [d.message(), d.message(), d.function_call()] == ["msg_0001", "msg_0002", "fc_0001"]


def test_ops_table() -> None:
    assert OPS["tool_call"].required == {"name", "arguments"}
    assert OPS["text_delta"].family == "text" and OPS["usage"].family is None
    assert check_op("text_delta", {"text", "index"}) == []
    assert check_op("text_delta", {"txt"}) == [
        "op 'text_delta' needs field 'text'",
        "op 'text_delta' has no field 'txt'",
    ]
    assert check_op("nope", set())[0].startswith("unknown op")
    assert set(FINISH) and set(FINISH.values()) <= FINISH_STATUSES


def test_mint_reasoning_state_roundtrip() -> None:
    blob = mint_reasoning_state("gemini", {"p": "spoof", "sig": "x"})
    assert blob.startswith("tnt1.")
    assert decode_reasoning_state(blob) == ("gemini", {"sig": "x"})
    assert decode_reasoning_state("tnt1.!!!") is None


# ---- web search and citations ----------------------------------------------------------------


def _search_builder(include: tuple[str, ...] = ()) -> ResponseBuilder:
    return ResponseBuilder(
        "resp_test", 1_700_000_000, make_echo(BODY), FINISH, "claude-x", DeterministicIdFactory(),
        provider="anthropic", clock=lambda: 1_700_000_005.0, include=include,
    )  # fmt: skip


def test_a_streamed_search_is_one_web_search_call_in_openais_event_order() -> None:
    b = _search_builder(("web_search_call.action.sources",))
    ops: list[Op] = [
        {"op": "search_start", "index": 0, "key": "srvtoolu_1"},
        {"op": "tool_args_delta", "index": 0, "text": '{"query": "tur'},
        {"op": "tool_args_delta", "index": 0, "text": 'nout"}'},
        {"op": "close", "index": 0},
        {"op": "search_done", "key": "srvtoolu_1", "sources": ["https://a.example/", "https://a.example/"]},
        {"op": "close", "index": 1},
        {"op": "usage", "input_tokens": 5, "output_tokens": 2, "web_searches": 1},
        {"op": "finish", "reason": "stop"},
    ]  # fmt: skip
    events = b.start() + b.feed(ops) + b.finish()
    check_stream(b, events)
    assert types(events)[2:-1] == [
        "output_item.added", "web_search_call.in_progress", "web_search_call.searching",
        "web_search_call.completed", "output_item.done",
    ]  # fmt: skip
    assert events[2]["item"] == {
        "id": "ws_0001", "type": "web_search_call", "status": "in_progress",
        "action": {"type": "search"},
    }  # fmt: skip
    assert b.response["output"] == [
        {"id": "ws_0001", "type": "web_search_call", "status": "completed",
         "action": {"type": "search", "query": "turnout", "queries": ["turnout"],
                    "sources": [{"type": "url", "url": "https://a.example/"}]}}
    ]  # fmt: skip
    assert b.web_searches == 1
    assert "web_searches" not in b.response["usage"]  # priced by the server, not OpenAI's field


def test_a_search_reported_again_is_skipped_and_a_failed_one_says_so() -> None:
    b = _search_builder()
    done: Op = {
        "op": "search_done",
        "key": "q1",
        "queries": ["q1", "q2"],
        "sources": ["https://a/"],
    }
    failed: Op = {"op": "search_done", "key": "k2", "query": "x", "error": "max_uses_exceeded"}
    events = b.start() + b.feed([done, dict(done), failed, {"op": "end"}]) + b.finish()
    check_stream(b, events)
    calls = b.response["output"]
    assert [(c["status"], c["action"].get("queries")) for c in calls] == [
        ("completed", ["q1", "q2"]), ("failed", ["x"]),
    ]  # fmt: skip
    assert "sources" not in calls[0]["action"]  # not asked for (include)
    assert types(events).count("web_search_call.completed") == 1


def test_a_text_segments_citations_cover_it_once_it_ends() -> None:
    """Anthropic: a text block's citations arrive before its text and cover the whole block."""
    b = _search_builder()
    ops: list[Op] = [
        {"op": "open_text", "segment": 2},
        {"op": "text_delta", "segment": 2, "text": "Lead. "},
        {"op": "open_text", "segment": 3},
        {"op": "cite", "url": "https://a.example/", "title": "A"},
        {"op": "cite", "url": "https://b.example/"},
        {"op": "text_delta", "segment": 3, "text": "Café "},
        {"op": "text_delta", "segment": 3, "text": "✓ 🦜."},
        {"op": "open_text", "segment": 4},
        {"op": "text_delta", "segment": 4, "text": " Tail."},
        {"op": "end"},
    ]
    events = b.start() + b.feed(ops) + b.finish()
    check_stream(b, events)
    (message,) = b.response["output"]
    (part,) = message["content"]
    assert part["text"] == "Lead. Café ✓ 🦜. Tail."
    spans = [part["text"][a["start_index"] : a["end_index"]] for a in part["annotations"]]
    assert spans == ["Café ✓ 🦜.", "Café ✓ 🦜."]
    assert [a["title"] for a in part["annotations"]] == ["A", "https://b.example/"]
    kinds = types(events)
    # Announced after the segment's last delta, before the next segment's first.
    first = kinds.index("output_text.annotation.added")
    assert kinds[first - 1] == "output_text.delta" and events[first - 1]["delta"] == "✓ 🦜."
    assert events[first + 2]["delta"] == " Tail."


def test_byte_offset_citations_become_character_offsets_and_repeats_go() -> None:
    """Gemini: offsets in UTF-8 bytes of the part, resent with every chunk."""
    b = _search_builder()
    text = "Ünïcode ✓ first. Second."
    first = len("Ünïcode ✓ first.".encode())
    cite: Op = {"op": "cite", "url": "https://g/", "title": "g", "start": 0, "end": first,
                "offsets": "utf8"}  # fmt: skip
    second: Op = {**cite, "start": first + 1, "end": len(text.encode()) + 40}  # clamped
    ops = [{"op": "text_delta", "text": text}, cite, second, dict(cite), {"op": "end"}]
    events = b.start() + b.feed(ops) + b.finish()
    check_stream(b, events)
    part = b.response["output"][0]["content"][0]
    assert [part["text"][a["start_index"] : a["end_index"]] for a in part["annotations"]] == [
        "Ünïcode ✓ first.", "Second.",
    ]  # fmt: skip
    kinds = types(events)
    assert kinds.index("output_text.annotation.added") < kinds.index("output_text.done")


def test_citations_with_no_text_to_annotate_are_dropped_and_counted() -> None:
    b = _search_builder()
    ops: list[Op] = [
        {"op": "cite", "url": "https://nowhere/"},  # no message
        {"op": "open_text", "segment": 1},
        {"op": "cite", "url": "https://empty/"},  # a segment that writes nothing
        {"op": "open_text", "segment": 2},
        {"op": "text_delta", "segment": 2, "text": "hi"},
        {"op": "cite", "url": "https://far/", "start": 5, "end": 9},  # past the text
        {"op": "end"},
    ]
    events = b.start() + b.feed(ops) + b.finish()
    check_stream(b, events)
    assert b.response["output"][0]["content"][0]["annotations"] == []
    assert b.dropped_citations == 2  # the out-of-range span resolves to nothing, uncounted
