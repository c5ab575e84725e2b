"""The wire-contract validators (tests/oas.py) must accept real OpenAI traffic and catch mutations.

Real events come from ``tests/fixtures/providers/openai_responses``. Those recordings predate
parts of the contract the validators enforce (OAS 2.3.0, openai-python 3.57), so each recorded
event is *upgraded* (``upgrade``) by filling in exactly the gaps listed in ``GAPS`` before the
strict validators see it. The validators themselves are never loosened for this: Turnout's own
output is held to the full contract. ``test_recorded_events_lack_only_known_fields`` pins the
gaps per file, so a new kind of deviation in a recording fails loudly instead of being
silently upgraded away.

What the recordings lack (and why we tolerate it in recordings only):

* ``sequence_number`` on every event - pydantic-ai's ``.sse`` cassettes (March 2025) predate it.
  Required by OAS and by the SDK's strict validation.
* ``logprobs`` on ``output_text.delta``/``.done`` and on ``output_text`` parts - same cassettes.
* ``name`` on ``response.function_call_arguments.done`` - every recording, including the
  December 2025 vercel one; OAS requires it (openai-python 3.57 does not).
* ``usage.input_tokens_details.cache_write_tokens`` - every recording; the field is newer than
  all of them. Required by OAS 2.3.0 and by the 3.57 SDK under strict validation.
* ``user: null`` in Response snapshots - every recording. OAS types ``user`` as a string
  (nullable nowhere), so Turnout omits an unset ``user``; the upgrade drops the null.
* ``result`` on the in-progress ``image_generation_call`` item of ``output_item.added`` - OAS
  requires the key (nullable); Turnout sends ``"result": null``.

One further gap is not tolerated but fixed in the validator: ``usage: null`` before the terminal
event, see ``oas.OAS_ERRATA`` (``test_usage_null_erratum_is_needed``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema.exceptions import ValidationError, relevance

from tests import oas

FIXTURES = oas.fixtures_root() / "providers/openai_responses"


# -- loading recordings ----------------------------------------------------------------------


def _sse_payloads(text: str) -> list[dict[str, Any]]:
    # Deliberately tiny (LF framing only, as these files are); engine/sse.py is the real decoder.
    out = []
    for block in text.split("\n\n"):
        data = [
            line[5:].removeprefix(" ") for line in block.splitlines() if line.startswith("data:")
        ]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def _streams(path: Path) -> list[list[dict[str, Any]]]:
    """The file's events, split into streams (a .chunks.txt may hold several back to back)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".sse":
        events = _sse_payloads(text)
    else:
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
    streams: list[list[dict[str, Any]]] = []
    for ev in events:
        if ev["type"] == "response.created" or not streams:
            streams.append([])
        streams[-1].append(ev)
    return streams


RECORDINGS = sorted([*FIXTURES.glob("*.sse"), *FIXTURES.glob("*.chunks.txt")])
assert RECORDINGS, f"no recordings under {FIXTURES}"


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def upgrade(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in exactly the documented GAPS; nothing else is touched."""
    out = copy.deepcopy(stream)
    names: dict[str, str] = {}
    for position, ev in enumerate(out):
        ev.setdefault("sequence_number", position)
        if ev["type"] in ("response.output_text.delta", "response.output_text.done"):
            ev.setdefault("logprobs", [])
        if ev["type"] == "response.output_item.added" and ev["item"]["type"] == "function_call":
            names[ev["item"]["id"]] = ev["item"]["name"]
        if ev["type"] == "response.function_call_arguments.done":
            ev.setdefault("name", names[ev["item_id"]])
        for node in _walk(ev):
            if node.get("type") == "output_text":
                node.setdefault("logprobs", [])
            if "cached_tokens" in node:
                node.setdefault("cache_write_tokens", 0)
            if node.get("type") == "image_generation_call":
                node.setdefault("result", None)
            if node.get("object") == "response" and "user" in node and node["user"] is None:
                del node["user"]
    return out


# -- classifying what a raw recording lacks ----------------------------------------------------

GAPS = {
    "sequence_number": (r"\$", "'sequence_number' is a required property"),
    "logprobs": (r"\$.*", "'logprobs' is a required property"),
    "name": (r"\$", "'name' is a required property"),
    "cache_write_tokens": (
        r"\$\.response\.usage\.input_tokens_details",
        "'cache_write_tokens' is a required property",
    ),
    "user-null": (r"\$\.response\.user", "None is not of type 'string'"),
    "image-result": (r"\$\.item", "'result' is a required property"),
}

EXPECTED_GAPS = {
    "function_call_stream.sse": {"sequence_number", "name", "cache_write_tokens", "user-null"},
    "text_stream_after_function_output.sse": {
        "sequence_number",
        "logprobs",
        "cache_write_tokens",
        "user-null",
    },
    "reasoning_summary_stream.chunks.txt": {"name", "cache_write_tokens", "user-null"},
    "image_generation_stream.chunks.txt": {"image-result", "cache_write_tokens", "user-null"},
}


def _leaf_errors(errors: list[ValidationError]) -> Iterator[ValidationError]:
    """Every leaf error, following only the union branch that best fits (as the report does)."""
    for e in errors:
        if not e.context:
            yield e
            continue
        # best_match's own descent rule: the deepest context error marks the best branch
        branch = min(e.context, key=relevance).relative_schema_path[0]
        yield from _leaf_errors([c for c in e.context if c.relative_schema_path[0] == branch])


def _raw_errors(ev: dict[str, Any], errata: bool = True) -> list[ValidationError]:
    name = oas.event_schema_name(ev["type"])
    assert name is not None
    validator = oas._openai(errata).validator(name)
    return list(_leaf_errors(list(validator.iter_errors(ev))))


def _classify(error: ValidationError) -> str:
    path = oas._json_path(error)
    for label, (path_re, message) in GAPS.items():
        if re.fullmatch(path_re, path) and error.message == message:
            return label
    raise AssertionError(f"undocumented deviation at {path}: {error.message}")


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_recorded_events_lack_only_known_fields(path: Path) -> None:
    found: set[str] = set()
    for stream in _streams(path):
        for ev in stream:
            found |= {_classify(e) for e in _raw_errors(ev)}
    assert found == EXPECTED_GAPS[path.name]


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_upgraded_recordings_pass_both_judges(path: Path) -> None:
    for stream in _streams(path):
        for ev in upgrade(stream):
            oas.validate_event(ev)
            oas.validate_event_sdk(ev)
            if ev["type"] in ("response.completed", "response.created"):
                oas.validate_response(ev["response"])
                oas.validate_response_sdk(ev["response"])


def test_sdk_rejects_what_the_old_recordings_lack() -> None:
    # The official client in strict mode refuses these raw events: the gaps are real contract.
    stream = _streams(FIXTURES / "text_stream_after_function_output.sse")[0]
    delta = next(ev for ev in stream if ev["type"] == "response.output_text.delta")
    with pytest.raises(AssertionError, match=r"\$\.(sequence_number|logprobs)"):
        oas.validate_event_sdk(delta)
    completed = stream[-1]
    with pytest.raises(AssertionError, match="cache_write_tokens"):
        oas.validate_response_sdk(completed["response"])


def test_usage_null_erratum_is_needed() -> None:
    created = _streams(FIXTURES / "function_call_stream.sse")[0][0]
    (ev,) = upgrade([created])
    assert ev["response"]["usage"] is None
    raw = [(oas._json_path(e), e.message) for e in _raw_errors(ev, errata=False)]
    assert raw == [("$.response.usage", "None is not of type 'object'")]
    oas.validate_event(ev)  # with the erratum


# -- mutations of real events must fail --------------------------------------------------------


def _upgraded(name: str) -> list[dict[str, Any]]:
    return upgrade(_streams(FIXTURES / name)[0])


def _first(stream: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    return copy.deepcopy(next(ev for ev in stream if ev["type"] == event_type))


STREAM = "text_stream_after_function_output.sse"


@pytest.mark.parametrize(
    "event_type",
    ["response.created", "response.output_text.delta", "response.output_item.done"],
)
def test_missing_sequence_number_fails(event_type: str) -> None:
    ev = _first(_upgraded(STREAM), event_type)
    del ev["sequence_number"]
    with pytest.raises(AssertionError, match=r"at \$: 'sequence_number' is a required property"):
        oas.validate_event(ev)
    with pytest.raises(AssertionError, match=r"at \$\.sequence_number: Field required"):
        oas.validate_event_sdk(ev)


def test_wrong_types_fail() -> None:
    stream = _upgraded(STREAM)
    ev = _first(stream, "response.output_text.delta")
    ev["delta"] = 5
    with pytest.raises(AssertionError, match=r"at \$\.delta: 5 is not of type 'string'"):
        oas.validate_event(ev)
    with pytest.raises(AssertionError, match=r"\$\.delta"):
        oas.validate_event_sdk(ev)

    ev = _first(stream, "response.output_text.delta")
    ev["output_index"] = None
    with pytest.raises(AssertionError, match=r"\$\.output_index"):
        oas.validate_event(ev)
    with pytest.raises(AssertionError, match=r"\$\.output_index"):
        oas.validate_event_sdk(ev)

    # The SDK (pydantic lax mode) coerces "3" to 3; the schema does not. Hence two judges.
    ev = _first(stream, "response.output_text.delta")
    ev["sequence_number"] = "3"
    with pytest.raises(AssertionError, match=r"\$\.sequence_number: '3' is not of type"):
        oas.validate_event(ev)
    oas.validate_event_sdk(ev)


def test_unknown_event_type_fails() -> None:
    ev = _first(_upgraded(STREAM), "response.output_text.delta")
    ev["type"] = "response.output_text.delt"
    with pytest.raises(AssertionError, match="not a ResponseStreamEvent type"):
        oas.validate_event(ev)
    with pytest.raises(AssertionError, match="rejected by the openai SDK"):
        oas.validate_event_sdk(ev)
    with pytest.raises(AssertionError, match="string 'type'"):
        oas.validate_event(["not", "an", "event"])


def test_usage_without_output_tokens_details_fails() -> None:
    ev = _first(_upgraded(STREAM), "response.completed")
    del ev["response"]["usage"]["output_tokens_details"]
    expected = r"at \$\.response\.usage: 'output_tokens_details' is a required property"
    with pytest.raises(AssertionError, match=expected):
        oas.validate_event(ev)
    with pytest.raises(AssertionError, match=r"\$\.response\.usage\.output_tokens_details"):
        oas.validate_event_sdk(ev)
    with pytest.raises(AssertionError, match=r"at \$\.usage: 'output_tokens_details'"):
        oas.validate_response(ev["response"])
    with pytest.raises(AssertionError, match=r"\$\.usage\.output_tokens_details"):
        oas.validate_response_sdk(ev["response"])


def test_union_errors_name_the_branch_not_all_branches() -> None:
    ev = _first(_upgraded(STREAM), "response.completed")
    ev["response"]["output"][0]["type"] = "mesage"
    with pytest.raises(AssertionError, match=r"\$\.response\.output\[0\]\.type: 'mesage' is not"):
        oas.validate_event(ev)
    ev = _first(_upgraded(STREAM), "response.completed")
    del ev["response"]["output"][0]["content"][0]["annotations"]
    with pytest.raises(
        AssertionError,
        match=r"at \$\.response\.output\[0\]\.content\[0\]: 'annotations' is a required",
    ):
        oas.validate_event(ev)


# -- a Turnout-shaped Response satisfies all three Response judges --------------------------------


def turnout_response() -> dict[str, Any]:
    """What Turnout's builder should produce: OAS + SDK + Open Responses all accept it."""
    return {
        "id": "resp_0123",
        "object": "response",
        "created_at": 1765552659,
        "completed_at": 1765552661,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "claude-sonnet-4",
        "output": [
            {
                "type": "message",
                "id": "msg_0123",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12,
        },
        "metadata": {},
    }


def test_turnout_response_passes_every_judge() -> None:
    resp = turnout_response()
    oas.validate_response(resp)
    oas.validate_response_sdk(resp)
    oas.validate_open_responses(resp)
    in_progress = {**resp, "status": "in_progress", "usage": None, "completed_at": None}
    in_progress["output"] = []
    oas.validate_response(in_progress)
    oas.validate_response_sdk(in_progress)
    oas.validate_open_responses(in_progress)


def test_response_mutations_fail() -> None:
    resp = turnout_response()
    resp["created_at"] = 1765552659.5  # OAS allows a number; Open Responses wants an integer
    oas.validate_response(resp)
    with pytest.raises(AssertionError, match=r"at \$\.created_at: .* is not of type 'integer'"):
        oas.validate_open_responses(resp)

    resp = turnout_response()
    resp["user"] = None  # strict: Turnout omits an unset user
    with pytest.raises(AssertionError, match=r"at \$\.user: None is not of type 'string'"):
        oas.validate_response(resp)

    resp = turnout_response()
    del resp["output"]
    for judge in (oas.validate_response, oas.validate_open_responses):
        with pytest.raises(AssertionError, match="'output' is a required property"):
            judge(resp)
    with pytest.raises(AssertionError, match=r"\$\.output: Field required"):
        oas.validate_response_sdk(resp)

    resp = turnout_response()
    del resp["frequency_penalty"]  # optional for OpenAI, required by Open Responses
    oas.validate_response(resp)
    with pytest.raises(AssertionError, match="'frequency_penalty' is a required property"):
        oas.validate_open_responses(resp)

    resp = turnout_response()
    resp["status"] = "done"
    with pytest.raises(AssertionError, match=r"at \$\.status: 'done' is not one of"):
        oas.validate_response(resp)


# -- error bodies, input item lists, deletions ---------------------------------------------


def test_error_body() -> None:
    body = json.loads((FIXTURES / "error_400.json").read_text())
    oas.validate_error_body(body)
    mutations: list[Callable[[dict[str, Any]], object]] = [
        lambda b: b["error"].pop("param"),
        lambda b: b["error"].update(code=400),
        lambda b: b.pop("error"),
    ]
    for mutate in mutations:
        bad = copy.deepcopy(body)
        mutate(bad)
        with pytest.raises(AssertionError, match="error body violates the schema at"):
            oas.validate_error_body(bad)
    oas.validate_error_body({"error": {"message": "m", "type": "t", "param": None, "code": None}})


def _item_list() -> dict[str, Any]:
    item = {
        "id": "msg_1",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "hi"}],
    }
    return {"object": "list", "data": [item], "first_id": "msg_1", "last_id": "msg_1",
            "has_more": False}  # fmt: skip


def test_item_list() -> None:
    oas.validate_item_list(_item_list())
    bad = _item_list()
    del bad["has_more"]
    with pytest.raises(AssertionError, match="'has_more' is a required property"):
        oas.validate_item_list(bad)
    bad = _item_list()
    bad["data"][0]["content"][0]["type"] = "output_txt"
    with pytest.raises(AssertionError, match=r"\$\.data\[0\]"):
        oas.validate_item_list(bad)
    # Note for the route: OAS types first_id/last_id as strings even for an empty page.
    empty: dict[str, Any] = {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    with pytest.raises(AssertionError, match=r"\$\.first_id"):
        oas.validate_item_list(empty)


def test_deleted() -> None:
    oas.validate_deleted({"id": "resp_1", "object": "response", "deleted": True})
    for bad in (
        {"id": "resp_1", "object": "response", "deleted": False},
        {"object": "response", "deleted": True},
        {"id": "resp_1", "object": "response.deleted", "deleted": True},
    ):
        with pytest.raises(AssertionError, match="deleted response violates"):
            oas.validate_deleted(bad)


# -- the loader -------------------------------------------------------------------------------


def test_every_stream_event_branch_is_tagged() -> None:
    branches = oas._openai().schema("ResponseStreamEvent")["anyOf"]
    names = {b["$ref"].rsplit("/", 1)[1] for b in branches}
    tagged = {oas.event_schema_name(t) for t in oas._event_schemas()}
    assert tagged == names
    # The SDK knows one event more than this OAS snapshot; nothing the other way round.
    sdk = set(oas._sdk_event_models())
    assert sdk - set(oas._event_schemas()) == {"response.compaction.compacting"}
    assert set(oas._event_schemas()) <= sdk


def test_translate_nullable() -> None:
    doc = {
        "a": {"type": "string", "nullable": True},
        "b": {"type": "string", "enum": ["x"], "nullable": True},
        "c": {"$ref": "#/x", "nullable": True},
        "d": {"type": "integer", "nullable": False},
        "e": {"items": [{"type": ["number", "null"], "nullable": True}]},
    }
    assert oas.translate_nullable(doc) == {
        "a": {"type": ["string", "null"]},
        "b": {"type": ["string", "null"], "enum": ["x", None]},
        "c": {"anyOf": [{"$ref": "#/x"}, {"type": "null"}]},
        "d": {"type": "integer"},
        "e": {"items": [{"type": ["number", "null"]}]},
    }


def test_openapi_version_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oas, "fixtures_root", lambda: tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("swagger: '2.0'\n")
    with pytest.raises(RuntimeError, match="unsupported openapi version"):
        oas._load_document("spec.yaml")
    spec.write_text(
        "openapi: 3.0.3\ncomponents:\n  schemas:\n    X: {type: string, nullable: true}\n"
    )
    doc = oas._load_document("spec.yaml")
    assert doc["components"]["schemas"]["X"] == {"type": ["string", "null"]}
