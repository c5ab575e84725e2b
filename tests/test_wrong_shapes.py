"""No 500 for a client's mistake: wrong types and shapes anywhere in a request get a 4xx.

Properties over the running gateway (the session `gateway` fixture, providers on the loopback
simulators): every field of the create body (the list comes from OpenAI's OpenAPI document) and
every nested field of a body that uses them all is replaced by a value of the wrong type or
shape (arrays, objects, strings, numbers, booleans, null, nesting past any limit, huge strings),
and every other endpoint gets odd ids and query parameters. A weird but valid request may well
be answered 200 by a simulator; the property is that the reply is never a 5xx and always a
well-formed body, an error in OpenAI's shape. The regressions for each 500 these found are at
the end, each naming its input.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import oas
from tests.conftest import Gateway
from turnout.engine.nesting import MAX_DEPTH
from turnout.server.http_protocol import MAX_URL_BYTES

# Bounded so the whole file stays well under a minute; derandomized so a failure reproduces.
_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MODELS = ("groq/llama", "anthropic/claude-sonnet-4-5", "openai/gpt-4.1", "gemini/gemini-2.5-flash")
# The routes that take the whole rich body (Chat Completions, and OpenAI's Responses, which
# passes the raw body on): a wrong value there travels as far as the provider request.
RICH_MODELS = ("groq/llama", "openai/gpt-4.1")


def _spec_fields() -> frozenset[str]:
    """The create body's top-level fields, as OpenAI's OpenAPI document lists them."""
    path = oas.fixtures_root() / oas.OPENAI_SPEC
    with path.open("rb") as f:
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = doc["components"]["schemas"]
    fields: set[str] = set()

    def walk(schema: dict[str, Any]) -> None:
        if "$ref" in schema:
            walk(schemas[schema["$ref"].rsplit("/", 1)[1]])
        for part in schema.get("allOf", []):
            walk(part)
        fields.update(schema.get("properties", {}))

    walk(schemas["CreateResponse"])
    return frozenset(fields)


SPEC_FIELDS = _spec_fields()

_CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
# A body using every field Turnout accepts, each nested field present once, all valid: each of
# its paths is a place a wrong value goes.
RICH: dict[str, Any] = {
    "input": [
        {"type": "message", "role": "developer", "content": "be brief"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=",
                 "filename": "a.pdf"},
            ],
        },
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "hello", "annotations": []},
                     {"type": "refusal", "refusal": "no"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}],
         "encrypted_content": "opaque"},
        {**_CALL, "id": "fc_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "image_generation_call", "id": "ig_1", "status": "completed",
         "result": "iVBORw0KGgo=", "output_format": "png"},
        {"type": "message", "role": "user", "content": "and now?"},
    ],
    "instructions": "answer",
    "tools": [
        {"type": "function", "name": "f", "description": "d", "strict": False,
         "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}},
    ],
    "tool_choice": {"type": "function", "name": "f"},
    "parallel_tool_calls": True,
    "max_tool_calls": 3,
    "text": {"format": {"type": "json_schema", "name": "out", "strict": True,
                        "schema": {"type": "object", "properties": {}}},
             "verbosity": "low"},
    "reasoning": {"effort": "low", "summary": "auto"},
    "max_output_tokens": 64,
    "temperature": 0.5,
    "top_p": 0.9,
    "truncation": "auto",
    "store": True,
    "stream": False,
    "include": ["reasoning.encrypted_content"],
    "metadata": {"k": "v"},
    "user": "u",
    "safety_identifier": "s",
    "prompt_cache_key": "p",
    "prompt_cache_retention": "24h",
    "service_tier": "auto",
}  # fmt: skip
# Fields whose valid values no simulator route takes (OpenAI-only features, the unsupported
# Conversations API, modes): present only as the value being replaced.
EXTRA: dict[str, Any] = {
    "prompt": {"id": "pmpt_1", "version": "1", "variables": {"name": "x"}},
    "conversation": {"id": "conv_1"},
    "stream_options": {"include_obfuscation": False},
    "context_management": [{"type": "compaction"}],
    "moderation": {"model": "omni"},
    "background": False,
    "top_logprobs": 2,
    "previous_response_id": "resp_unknown",
    "prompt_cache_options": {},
    "model": "groq/llama",
}

Path = tuple[str | int, ...]


def _paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


PATHS: list[Path] = sorted(
    {p for p in _paths(RICH) if p} | {(f,) for f in SPEC_FIELDS} | {p for p in _paths(EXTRA) if p},
    key=repr,
)


def _deep(levels: int, leaf: Any) -> Any:
    value = leaf
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "x" * 200_000, "\x00", "\ud7ff", "null", "{}", "[]", "-1", "1e999"]),
    st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(
        st.text(max_size=5), st.one_of(st.none(), st.integers(), st.text()), max_size=3
    ),
    st.builds(_deep, st.sampled_from([MAX_DEPTH - 5, MAX_DEPTH + 1, 200, 300, 900]), st.just(1)),
    st.just([[]]),
    st.just([{}]),
    st.just({"type": "function"}),
    st.just({"type": []}),
)


def _with(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out: Any = json.loads(json.dumps(body))
    holder = out
    for key in path[:-1]:
        if isinstance(key, str) and key not in holder:
            holder[key] = json.loads(json.dumps(EXTRA.get(key, {})))
        holder = holder[key]
    holder[path[-1]] = value
    return dict(out)


def _check(reply: httpx.Response, what: str) -> None:
    assert reply.status_code < 500, f"{what}: {reply.status_code} {reply.text[:500]}"
    content_type = reply.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        assert reply.status_code == 200, what
        return
    assert content_type.startswith("application/json"), f"{what}: {content_type} {reply.text[:200]}"
    body = reply.json()
    if reply.status_code >= 400:
        oas.validate_error_body(body)


def _post(gateway: Gateway, body: Any, path: str = "/v1/responses") -> httpx.Response:
    # json, not orjson: orjson refuses to write past 254 levels, and deep bodies are the point.
    return httpx.post(
        f"{gateway.url}{path}",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )


def test_every_field_of_the_spec_is_exercised() -> None:
    # The generator must not silently lose the spec's fields (a renamed schema, a new field).
    assert {"input", "tools", "text", "reasoning", "include", "metadata"} <= SPEC_FIELDS
    # Each has a valid value here, so its nested fields are swept too.
    assert set(RICH) | set(EXTRA) >= SPEC_FIELDS


# Every path with one value of each kind it must not be, exhaustively (the random search below
# rarely lands on one path with one kind).
SWEEP = {"array": [1], "object": {"x": 1}, "number": 1.5, "boolean": True, "string": "x",
         "null": None, "nested": _deep(MAX_DEPTH + 1, 1)}  # fmt: skip


# Hosted tools only reach providers that run them: the image tool has a body of its own.
IMAGE: dict[str, Any] = {
    "input": "draw a turnout",
    "tools": [{"type": "image_generation", "size": "1024x1024", "quality": "high",
               "output_format": "png", "partial_images": 1, "background": "auto",
               "output_compression": 90, "moderation": "auto", "model": "gpt-image-1",
               "input_image_mask": {"file_id": "file_1"}}],
    "tool_choice": {"type": "image_generation"},
}  # fmt: skip
# (base body, model): every base with a route that answers it whole.
SWEPT = [
    ("rich", "groq/llama"),
    ("rich", "openai/gpt-4.1"),
    ("image", "gemini/gemini-2.5-flash"),
    ("image", "openai/gpt-4.1"),
]
BASES = {"rich": RICH, "image": IMAGE}


@pytest.mark.parametrize(("base", "model"), SWEPT)
def test_each_swept_body_is_answered(gateway: Gateway, base: str, model: str) -> None:
    # Else every wrong value below would stop at the same early 400 and prove nothing.
    reply = _post(gateway, {**BASES[base], "model": model})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(("base", "model"), SWEPT)
@pytest.mark.parametrize("kind", sorted(SWEEP))
def test_each_field_of_the_wrong_kind_is_never_a_5xx(
    gateway: Gateway, kind: str, base: str, model: str
) -> None:
    failures = []
    paths = PATHS if base == "rich" else sorted({p for p in _paths(IMAGE) if p}, key=repr)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for path in paths:
            body = _with({**BASES[base], "model": model}, path, SWEEP[kind])
            reply = http.post(
                "/v1/responses",
                content=json.dumps(body).encode(),
                headers={"content-type": "application/json"},
            )
            try:
                _check(reply, f"{path}={kind}")
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
    assert not failures, "\n".join(failures)


@_SETTINGS
@given(path=st.sampled_from(PATHS), value=WRONG, model=st.sampled_from(MODELS), rich=st.booleans())
def test_a_wrong_value_anywhere_in_the_create_body_is_never_a_5xx(
    gateway: Gateway, path: Path, value: Any, model: str, rich: bool
) -> None:
    # A nested path lives in the rich body; a top-level field also goes into a minimal one.
    if rich or len(path) > 1:
        base = {**RICH, "model": model if model in RICH_MODELS else RICH_MODELS[0]}
    else:
        base = {"model": model, "input": "hi"}
    body = _with(base, path, value)
    _check(_post(gateway, body), f"{path}={str(value)[:80]}")


@_SETTINGS
@given(body=WRONG)
def test_a_body_of_the_wrong_shape_is_never_a_5xx(gateway: Gateway, body: Any) -> None:
    _check(_post(gateway, body), f"body={str(body)[:80]}")


TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "-1", "0", "101", "1e3", "true", "asc", "x" * 5000, "%00", "..", "/"]),
)
QUERY_NAMES = ("limit", "order", "after", "include", "include[]", "starting_after", "stream")


@_SETTINGS
@given(
    response_id=TEXT,
    query=st.lists(st.tuples(st.sampled_from(QUERY_NAMES), TEXT), max_size=4),
    endpoint=st.sampled_from(
        [("GET", ""), ("DELETE", ""), ("GET", "/input_items"), ("POST", "/cancel")]
    ),
)
def test_odd_ids_and_query_parameters_are_never_a_5xx(
    gateway: Gateway, response_id: str, query: list[tuple[str, str]], endpoint: tuple[str, str]
) -> None:
    method, tail = endpoint
    url = f"{gateway.url}/v1/responses/{quote(response_id, safe='')}{tail}"
    reply = httpx.request(method, url, params=query, timeout=30)
    _check(reply, f"{method} {url[:200]} {query}")


@_SETTINGS
@given(
    query=st.lists(
        st.tuples(
            st.sampled_from(("group_by", "start", "end", "model")),
            st.one_of(TEXT, st.sampled_from(["metadata:", "metadata:a.b", "metadata:$[0]"])),
        ),
        max_size=4,
    )
)
def test_odd_spend_queries_are_never_a_5xx(gateway: Gateway, query: list[tuple[str, str]]) -> None:
    _check(httpx.get(f"{gateway.url}/v1/spend", params=query, timeout=30), f"spend {query}")


@_SETTINGS
@given(model_id=TEXT)
def test_odd_model_ids_are_never_a_5xx(gateway: Gateway, model_id: str) -> None:
    reply = httpx.get(f"{gateway.url}/v1/models/{quote(model_id, safe='/')}", timeout=30)
    _check(reply, f"model {model_id!r}")


# -- regressions: each 500 the properties (or issue 12) found, by its exact input -------------


def _error(reply: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    oas.validate_error_body(body)
    assert body["error"]["type"] == "invalid_request_error"
    return dict(body["error"])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"reasoning": {"effort": []}}, "reasoning.effort"),
        ({"reasoning": {"summary": {}}}, "reasoning.summary"),
        ({"input": [{"type": "function_call_output", "call_id": [], "output": "x"}]},
         "input[0].call_id"),
        ({"input": [{**_CALL, "call_id": {}}]}, "input[0].call_id"),
        ({"input": [{"type": "message", "role": "user", "content": "hi", "id": ["x"]}]},
         "input[0].id"),
        ({"input": [{"type": ["message"], "role": "user", "content": "hi"}]}, "input[0].type"),
    ],
)  # fmt: skip
def test_unhashable_values_are_400s_naming_the_parameter(
    gateway: Gateway, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "groq/llama", "input": "hi", **extra}
    assert _error(_post(gateway, body))["param"] == param


@pytest.mark.parametrize("size", [[1], {"a": 1}])
def test_an_image_tool_size_that_is_not_a_string_is_a_400_on_gemini(
    gateway: Gateway, size: Any
) -> None:
    # `"size": [1]` was a 500 mapping_error: Gemini's mapping looks it up in a table of strings.
    tool = {"type": "image_generation", "size": size}
    body = {"model": "gemini/gemini-2.5-flash", "input": "draw", "tools": [tool]}
    assert _error(_post(gateway, body))["param"] == "tools[0].size"


@pytest.mark.parametrize(
    ("where", "param"),
    [
        (("tools", 0, "parameters"), "tools[0].parameters"),
        (("text", "format", "schema"), "text.format.schema"),
        (("metadata", "k"), "metadata.k"),
        (("input", 1, "content"), "input[1].content"),
    ],
)
@pytest.mark.parametrize("levels", [MAX_DEPTH + 30, 300])
def test_json_nested_past_the_limit_is_a_400(
    gateway: Gateway, where: Path, param: str, levels: int
) -> None:
    # {"a": {"a": ...}} 130 and 300 levels deep: 300 was a 500 (orjson refuses past 254 when
    # the provider request is written), 130 reached the provider.
    deep: Any = 1
    for _ in range(levels):
        deep = {"a": deep}
    error = _error(_post(gateway, _with(RICH | {"model": "groq/llama"}, where, deep)))
    assert error["param"].startswith(param)
    assert error["code"] == "nesting_too_deep"


def test_json_just_within_the_limit_is_answered(gateway: Gateway) -> None:
    # The body is level 1, tools 2, the tool 3, its parameters 4: 97 more levels fit.
    deep: Any = {"type": "object"}
    for _ in range(MAX_DEPTH - 4):
        deep = {"a": deep}
    tool = {"type": "function", "name": "f", "parameters": deep}
    reply = _post(gateway, {"model": "groq/llama", "input": "hi", "tools": [tool]})
    assert reply.status_code == 200, reply.text


def test_deep_function_call_arguments_are_a_400(gateway: Gateway) -> None:
    # The arguments string is parsed and the parsed value rendered into the provider request.
    arguments = "[" * 300 + "]" * 300
    body = {"model": "groq/llama", "input": [{**_CALL, "arguments": arguments}]}
    assert _error(_post(gateway, body))["param"] == "input[0].arguments"


@pytest.mark.parametrize("levels", [1025, 100_000])
def test_a_body_past_the_json_parsers_depth_is_a_400_not_invalid_json(
    gateway: Gateway, levels: int
) -> None:
    # orjson parses at most 1024 levels: valid JSON deeper than that is not "malformed".
    raw = b'{"model": "groq/llama", "input": ' + b"[" * levels + b"]" * levels + b"}"
    reply = httpx.post(
        f"{gateway.url}/v1/responses",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert _error(reply)["code"] == "nesting_too_deep"


def _raw_get(gateway: Gateway, target: str) -> tuple[int, dict[str, str], bytes]:
    """A request line httpx would refuse to send (it caps URLs itself)."""
    parts = urlsplit(gateway.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "target",
    [
        "/v1/responses/" + "a" * 100_000,
        "/v1/responses/resp_x/input_items?after=" + "a" * 100_000,
        "/v1/models/" + "a" * (MAX_URL_BYTES + 1),
    ],
)
def test_a_url_over_the_limit_is_a_json_414(gateway: Gateway, target: str) -> None:
    # uvicorn answered these itself, in plain text: "Invalid HTTP request received."
    status, headers, body = _raw_get(gateway, target)
    assert status == 414
    assert headers["content-type"] == "application/json"
    error = orjson.loads(body)
    oas.validate_error_body(error)
    assert error["error"]["code"] == "url_too_long"


def test_a_url_at_the_limit_reaches_the_app(gateway: Gateway) -> None:
    target = "/v1/responses/" + "a" * (MAX_URL_BYTES - len("/v1/responses/"))
    status, headers, _ = _raw_get(gateway, target)
    assert (status, headers["content-type"]) == (404, "application/json")
