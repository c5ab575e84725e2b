"""Mapping case files: one Responses request, the native request it must render, a native reply
and what the Response built from it must contain. Run purely in the engine (no sockets).

A case file (``mappings/cases/<provider>/<case>.yaml``, checked against ``schemas/case.yaml``)::

    description: one line
    request: {model: anthropic/claude-sonnet-4-5, input: Hi, stream: true}  # a Responses body
    upstream:
      match: subset                  # or exact: the rendered body has no other keys
      url: /v1/messages              # the rendered URL ends with this
      headers: {anthropic-version: "2023-06-01"}
      request: {model: claude-sonnet-4-5, max_tokens: 4096}
      response:
        status: 200                  # default 200; >= 400 goes through the mapping's `errors`
        body: {...}                  # or `sse: |` text, or `fixture: anthropic/text_stream.sse`
    expect:
      status: completed
      output: [{type: message, text: "2"}]
      usage: {input_tokens: 20, output_tokens: 5}
      events: [response.created, response.output_text.delta, response.completed]
      error: {status: 400, param: temperature, code: unsupported_parameter}

Comparison is semantic JSON (``1 == 1.0``, ``true != 1``, key order ignored). In subset mode
every key given must match and an expected ``null`` means "absent or null"; lists always match
element by element with the same length. ``run_case`` returns readable mismatch messages, each
naming the section and the JSON path (``expect $.output[0].text: expected ..., got ...``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from turnout.engine.builder import ResponseBuilder, make_echo
from turnout.engine.canonical import normalize
from turnout.engine.errors import MappingError, RequestError, UpstreamError
from turnout.engine.ids import DeterministicIdFactory
from turnout.engine.mapping import CompiledMapping, UpstreamRequest
from turnout.engine.registry import MappingRegistry
from turnout.engine.resources import bundled_dir
from turnout.engine.schema_check import check, load_schema
from turnout.engine.yamlstrict import load_yaml

__all__ = [
    "CASES_DIR",
    "DUMMY_API_BASE",
    "DUMMY_API_KEY",
    "Case",
    "compare_json",
    "find_cases",
    "fixtures_dir",
    "load_case",
    "run_case",
    "sse_from_chunks",
]

# Cases test the mappings; they live beside them in a source checkout and are not installed.
CASES_DIR = bundled_dir("turnout.mappings") / "cases"
# What templates see as credentials while a case runs: a case may assert the header that
# carries it (`x-api-key: test-key`) without any real secret anywhere.
DUMMY_API_KEY = "test-key"
DUMMY_API_BASE = "https://upstream.invalid"
_CREATED_AT = 1_700_000_000
_MAX_SHOWN = 160


@dataclass(frozen=True)
class Case:
    path: Path
    name: str  # "<provider>/<case>" relative to the cases folder, for test ids
    request: dict[str, Any]
    expect: dict[str, Any]
    upstream: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    endpoint: str = "create"  # or "input_tokens": the mapping's count_tokens request

    @property
    def provider(self) -> str:
        return str(self.request["model"]).split("/", 1)[0]

    @property
    def model(self) -> str:
        """The model id sent upstream: `request.model` without its `provider/` prefix."""
        return str(self.request["model"]).split("/", 1)[1]


def fixtures_dir() -> Path:
    """Recorded provider traffic that cases replay: ``$TURNOUT_FIXTURES`` or, in a source
    checkout, the repository's own copy ``tests/fixtures/providers``."""
    env = os.environ.get("TURNOUT_FIXTURES")
    return Path(env) if env else CASES_DIR.parents[1] / "tests" / "fixtures" / "providers"


def _case_name(path: Path) -> str:
    try:
        rel = path.resolve().relative_to(CASES_DIR)
    except ValueError:
        rel = Path(path.parent.name) / path.name
    name = rel.as_posix()
    for suffix in (".case.yaml", ".yaml"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_case(path: str | Path) -> Case:
    """Read and check one case file; a broken file raises MappingError with file:line:col."""
    path = Path(path)
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        from turnout.engine.diagnostics import Problem

        raise MappingError([Problem(display, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    loaded = load_yaml(text, display)
    problems = check(loaded, load_schema("case"), display)
    if problems:
        raise MappingError(problems)
    data: dict[str, Any] = loaded.data
    expect = data.get("expect") or {}
    upstream = data.get("upstream") or {}
    if "error" not in expect and "response" not in upstream:
        raise MappingError(
            [loaded.problem(("upstream",) if upstream else ("expect",),
                            "upstream.response is required unless expect.error is given")]
        )  # fmt: skip
    return Case(
        path=path,
        name=_case_name(path),
        request=data["request"],
        expect=expect,
        upstream=upstream,
        settings=dict(data.get("settings") or {}),
        description=data.get("description"),
        endpoint=str(data.get("endpoint") or "create"),
    )


def find_cases(folder: str | Path | None = None) -> list[Path]:
    root = Path(folder) if folder else CASES_DIR
    return sorted(root.rglob("*.yaml")) if root.is_dir() else []


# -- semantic JSON comparison -----------------------------------------------------------------


def _key(path: str, key: Any) -> str:
    text = str(key)
    if text.isidentifier():
        return f"{path}.{text}"
    return f"{path}[{orjson.dumps(text).decode()}]"


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def compare_json(expected: Any, actual: Any, path: str = "$", *, exact: bool = False) -> list[str]:
    """Mismatches between ``expected`` and ``actual``, one message per JSON path."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {_type(actual)} {_show(actual)}"]
        out: list[str] = []
        for key, want in expected.items():
            where = _key(path, key)
            if key not in actual:
                if want is None and not exact:
                    continue  # null in a subset: "must not be sent"
                out.append(f"{where}: missing (expected {_show(want)})")
                continue
            out.extend(compare_json(want, actual[key], where, exact=exact))
        if exact:
            for key in actual:
                if key not in expected:
                    out.append(f"{_key(path, key)}: unexpected key (got {_show(actual[key])})")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected an array, got {_type(actual)} {_show(actual)}"]
        out = []
        for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
            out.extend(compare_json(want, got, f"{path}[{i}]", exact=exact))
        if len(expected) != len(actual):
            extra = actual[len(expected) :] if len(actual) > len(expected) else None
            tail = f", extra: {_show(extra)}" if extra else ""
            out.append(f"{path}: expected {len(expected)} items, got {len(actual)}{tail}")
        return out
    if _scalar_equal(expected, actual):
        return []
    return [f"{path}: expected {_show(expected)}, got {_show(actual)}"]


def _scalar_equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return float(expected) == float(actual)
    return bool(type(expected) is type(actual) and expected == actual)


# -- running ------------------------------------------------------------------------------------


def _mapping(registry: MappingRegistry, provider: str, model: str) -> CompiledMapping | None:
    resolve = getattr(registry, "resolve", None)  # provider variants, where the registry has them
    if callable(resolve):
        try:
            found = resolve(provider, model)
        except (KeyError, LookupError):
            found = None
        if isinstance(found, CompiledMapping):
            return found
    return registry.get(provider)


def _dummy_credentials(mapping: CompiledMapping) -> dict[str, str]:
    creds = {"api_key": DUMMY_API_KEY}
    declared = mapping.defaults.get("credentials")
    if isinstance(declared, Mapping):
        for name in declared:
            creds[str(name)] = f"test-{name}"
    return creds


def _settings(mapping: CompiledMapping, case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {}
    declared = mapping.defaults.get("settings")
    if isinstance(declared, Mapping):
        for name, spec in declared.items():
            if isinstance(spec, Mapping) and spec.get("default") is not None:
                out[str(name)] = spec["default"]
    out.update(case.settings)
    return out


def sse_from_chunks(data: bytes) -> bytes:
    """vercel/ai recordings (``.chunks.txt``) hold one JSON per line; put the SSE framing back."""
    return b"".join(b"data: " + line + b"\n\n" for line in data.splitlines() if line.strip())


def _fixture_path(case: Case, name: str) -> Path:
    # `./x.sse` sits next to the case file (what `turnout record` writes); anything else is a
    # recording under fixtures_dir() (tests/fixtures/providers).
    if name.startswith(("./", "../")):
        return case.path.parent / name
    return fixtures_dir() / name


def _reply_bytes(case: Case, spec: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    """(body bytes, problem) of `upstream.response`."""
    if "fixture" in spec:
        path = _fixture_path(case, str(spec["fixture"]))
        if not path.is_file():
            return None, f"upstream.response.fixture: {path} not found (set TURNOUT_FIXTURES?)"
        data = path.read_bytes()
        return (sse_from_chunks(data) if path.name.endswith(".chunks.txt") else data), None
    if "sse" in spec:
        return str(spec["sse"]).encode(), None
    if "body" in spec:
        body = spec["body"]
        return (body.encode() if isinstance(body, str) else orjson.dumps(body)), None
    return None, "upstream.response: give body, sse or fixture"


def _check_error(case: Case, exc: RequestError | UpstreamError) -> list[str]:
    want = case.expect.get("error")
    kind = type(exc).__name__
    if want is None:
        return [
            f"unexpected {kind} {exc.status} (code {exc.code!r}, "
            f"param {getattr(exc, 'param', None)!r}): {exc.message}"
        ]
    got = {
        "status": exc.status, "param": getattr(exc, "param", None), "code": exc.code,
        "type": exc.type, "message": exc.message, "retry_after": getattr(exc, "retry_after", None),
    }  # fmt: skip
    out = [
        f"expect.error {m}"
        for m in compare_json({k: v for k, v in want.items() if k != "message_contains"}, got)
    ]
    needle = want.get("message_contains")
    if needle is not None and str(needle) not in exc.message:
        out.append(f"expect.error $.message: {exc.message!r} does not contain {needle!r}")
    return out


def _check_upstream_request(case: Case, call: UpstreamRequest) -> list[str]:
    spec = case.upstream
    out: list[str] = []
    if "request" in spec:
        try:
            body = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            return [f"upstream.request: the rendered body is not JSON: {call.body[:80]!r}"]
        exact = spec.get("match", "subset") == "exact"
        out += [f"upstream.request {m}" for m in compare_json(spec["request"], body, exact=exact)]
    if "url" in spec and not call.url.endswith(str(spec["url"])):
        out.append(f"upstream.url: {call.url!r} does not end with {spec['url']!r}")
    if "headers" in spec:
        want = {str(k).lower(): v for k, v in spec["headers"].items()}
        out += [f"upstream.headers {m}" for m in compare_json(want, dict(call.headers))]
    return out


def _message_text(item: Mapping[str, Any]) -> str:
    parts = item.get("content") or []
    return "".join(str(p.get("text") or p.get("refusal") or "") for p in parts)


def _item_view(item: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    """The output item with the derived fields a case may name (`text`, parsed `arguments`,
    a message's `citations`: each url_citation as {text: the span it covers, url, title})."""
    view = dict(item)
    kind = item.get("type")
    if kind == "message":
        view["text"] = _message_text(item)
        view["citations"] = [
            {"text": str(part.get("text", ""))[note["start_index"] : note["end_index"]],
             "url": note.get("url"), "title": note.get("title")}
            for part in item.get("content") or []
            for note in part.get("annotations") or []
            if note.get("type") == "url_citation"
        ]  # fmt: skip
    elif kind == "reasoning":
        view["text"] = "".join(str(p.get("text") or "") for p in item.get("summary") or [])
    if "arguments" in want and isinstance(item.get("arguments"), str):
        wanted = want["arguments"]
        try:
            parsed = orjson.loads(item["arguments"])
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(wanted, str):
            view["arguments"] = parsed if parsed is not None else item["arguments"]
        elif parsed is not None:
            try:  # both JSON strings: compare what they mean, not their spacing
                if orjson.loads(wanted) == parsed:
                    view["arguments"] = wanted
            except orjson.JSONDecodeError:
                pass
    return view


def _usage_view(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    if not usage:
        return {}
    view = dict(usage)
    view["cached_tokens"] = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    view["reasoning_tokens"] = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    return view


def _check_events(want: list[str], events: list[dict[str, Any]]) -> list[str]:
    types = [str(e.get("type")) for e in events]
    pos = 0
    for i, name in enumerate(want):
        try:
            pos = types.index(name, pos) + 1
        except ValueError:
            after = f" after {want[i - 1]!r}" if i else ""
            return [f"expect.events $[{i}]: {name!r} not emitted{after}; got {_show(types)}"]
    return []


def check_response(
    expect: Mapping[str, Any], response: Mapping[str, Any], events: list[dict[str, Any]]
) -> list[str]:
    """`expect` (minus `error`) against a built Response and its events."""
    out: list[str] = []

    def add(messages: list[str]) -> None:
        out.extend(f"expect {m}" for m in messages)

    if "status" in expect:
        add(compare_json(expect["status"], response.get("status"), "$.status"))
    if "output" in expect:
        items = list(response.get("output") or [])
        want_items = list(expect["output"])
        views = [_item_view(item, w) for item, w in zip(items, want_items, strict=False)]
        views += items[len(views) :]
        add(compare_json(want_items, views, "$.output"))
    if "text" in expect:
        text = "".join(
            _message_text(i) for i in response.get("output") or [] if i.get("type") == "message"
        )
        add(compare_json(expect["text"], text, "$.output_text"))
    if "usage" in expect:
        add(compare_json(expect["usage"], _usage_view(response.get("usage")), "$.usage"))
    if "response" in expect:
        add(compare_json(expect["response"], dict(response), "$"))
    if "events" in expect:
        out.extend(_check_events(list(expect["events"]), events))
    return out


def run_case(case: Case, registry: MappingRegistry) -> list[str]:
    """Run one case through the engine; an empty list means it passed."""
    mapping = _mapping(registry, case.provider, case.model)
    if mapping is None:
        return [f"request.model: no mapping for provider {case.provider!r}"]
    try:
        canon = normalize(copy.deepcopy(case.request))
        counting = case.endpoint == "input_tokens"
        build = mapping.build_count_request if counting else mapping.build_request
        call = build(
            canon,
            model=case.model,
            api_base=str(mapping.defaults.get("api_base") or DUMMY_API_BASE),
            credentials=_dummy_credentials(mapping),
            settings=_settings(mapping, case),
        )
    except (RequestError, UpstreamError) as exc:
        return _check_error(case, exc)
    failures = _check_upstream_request(case, call)
    spec = case.upstream.get("response")
    if spec is None:
        return [*failures, "expect.error: the request was accepted and rendered"]
    body, problem = _reply_bytes(case, spec)
    if body is None:
        return [*failures, problem or "upstream.response: no body"]
    status = int(spec.get("status", 200))
    if case.endpoint == "input_tokens":
        return failures + _check_count(case, mapping, status, body, spec)
    if status < 400 and call.stream and "body" in spec:
        return [*failures, "upstream.response: the request streams; give sse or an .sse fixture"]
    if status >= 400:
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        return failures + _check_error(case, mapping.parse_error(status, body, headers))
    try:
        ops, unknown = _ops(mapping, body, streamed=call.stream)
    except UpstreamError as exc:
        return failures + _check_error(case, exc)
    if unknown:
        failures.append(f"upstream.response: stream events with no rule in the mapping: {unknown}")
    if "error" in case.expect:
        failures.append("expect.error: the reply was accepted, no error was raised")
    builder = ResponseBuilder(
        "resp_case",
        _CREATED_AT,
        make_echo(case.request),
        mapping.finish_reasons,
        str(case.request["model"]),
        ids=DeterministicIdFactory(),
        provider=mapping.provider,
        include=case.request.get("include") or (),
    )
    events = builder.start() + builder.feed(ops) + builder.finish()
    return failures + check_response(case.expect, builder.response, events)


def _check_count(
    case: Case, mapping: CompiledMapping, status: int, body: bytes, spec: Mapping[str, Any]
) -> list[str]:
    """An input_tokens case: the count read from the reply, or the error it raised."""
    if status >= 400:
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        return _check_error(case, mapping.parse_error(status, body, headers))
    try:
        count = mapping.parse_count(body)
    except UpstreamError as exc:
        return _check_error(case, exc)
    if "error" in case.expect:
        return ["expect.error: the reply was accepted, no error was raised"]
    want = case.expect.get("input_tokens")
    if want is None:
        return ["expect.input_tokens: give the count the reply carries"]
    return [] if want == count else [f"expect.input_tokens: expected {want}, got {count}"]


def _ops(
    mapping: CompiledMapping, body: bytes, *, streamed: bool
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    if not streamed:
        return mapping.parse_response(body), {}
    decoder = mapping.stream_decoder()
    ops = decoder.feed(body)
    ops += decoder.close()
    return ops, dict(decoder.unknown_events)
