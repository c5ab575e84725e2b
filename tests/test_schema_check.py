"""Cerberus errors become located, dotted, hinted problems."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.engine.diagnostics import Problem, dotted, nearest
from turnout.engine.schema_check import check, load_schema
from turnout.engine.yamlstrict import load_yaml

SCHEMA: dict[str, Any] = {
    "request": {
        "type": "dict",
        "schema": {
            "path": {"type": "string", "required": True},
            "body": {
                "type": "dict",
                "schema": {
                    "messages": {
                        "type": "list",
                        "schema": {"type": "dict", "schema": {"role": {"type": "string"}}},
                    },
                    "max_tokens": {"type": "integer", "min": 1},
                },
            },
        },
    },
    "headers": {
        "type": "dict",
        "keysrules": {"type": "string", "regex": "[a-z-]+"},
        "valuesrules": {"type": "string"},
    },
    "framing": {"type": "string", "allowed": ["sse", "ndjson"]},
    "format": {"anyof": [{"type": "string"}, {"type": "integer"}]},
    "version": {"type": "integer", "meta": {"hint": "version: 1"}},
}


def _check(text: str) -> list[str]:
    return [str(p) for p in check(load_yaml(text, "m.yaml"), SCHEMA, "m.yaml")]


def test_problem_format() -> None:
    p = Problem("f.yaml", 3, 7, "request.body", "bad thing")
    assert str(p) == "f.yaml:3:7: request.body: bad thing"
    assert str(Problem("f.yaml", 1, 1, "", "x", "try y")) == "f.yaml:1:1: <root>: x (try y)"


def test_dotted_and_nearest() -> None:
    assert dotted(("request", "body", "messages", 0, "role")) == "request.body.messages[0].role"
    assert dotted((0, "a.b")) == '[0]["a.b"]'
    assert nearest("strategie", ["strategy", "retries"]) == "strategy"
    assert nearest("API_BASE", ["api_base"]) == "api_base"
    assert nearest("zzz", ["strategy"]) is None


def test_valid_document_has_no_problems() -> None:
    assert _check("request:\n  path: /v1\n  body: {messages: [{role: user}]}\n") == []


def test_nested_list_error_path_and_line() -> None:
    text = "request:\n  path: /v1\n  body:\n    messages:\n      - role: user\n      - role: 5\n"
    assert _check(text) == [
        "m.yaml:6:9: request.body.messages[1].role: must be of string type, got integer"
    ]


def test_wrong_type_reports_right_line() -> None:
    text = "request:\n  path: /v1\n  body:\n    max_tokens: many\n"
    (problem,) = check(load_yaml(text, "m.yaml"), SCHEMA, "m.yaml")
    assert (problem.line, problem.col, problem.key_path) == (4, 5, "request.body.max_tokens")


def test_bool_is_not_an_integer() -> None:
    assert _check("version: true\n") == [
        "m.yaml:1:1: version: must be of integer type, got boolean (version: 1)"
    ]


def test_unknown_key_did_you_mean() -> None:
    text = "request:\n  path: /v1\n  bdy: {}\n"
    assert _check(text) == ["m.yaml:3:3: request.bdy: unknown key (did you mean 'body'?)"]


def test_unknown_key_at_root_without_close_match_lists_keys() -> None:
    (problem,) = check(load_yaml("zzzzzz: 1\n", "m.yaml"), SCHEMA, "m.yaml")
    assert problem.key_path == "zzzzzz"
    assert problem.hint is not None and "framing" in problem.hint


def test_allow_unknown_at_root() -> None:
    loaded = load_yaml("zzzzzz: 1\n", "m.yaml")
    assert check(loaded, SCHEMA, "m.yaml", allow_unknown=True) == []


def test_missing_required_key_points_at_parent() -> None:
    assert _check("request:\n  body: {}\n") == ["m.yaml:1:1: request.path: required key is missing"]


def test_keysrules_and_valuesrules() -> None:
    text = "headers:\n  Bad_Key: a\n  ok: 3\n"
    assert _check(text) == [
        "m.yaml:2:3: headers.Bad_Key: value does not match regex '[a-z-]+'",
        "m.yaml:3:3: headers.ok: must be of string type, got integer",
    ]


def test_unallowed_value_hint() -> None:
    assert _check("framing: nsjson\n") == [
        "m.yaml:1:1: framing: unallowed value 'nsjson' (did you mean 'ndjson'?)"
    ]


def test_anyof_summarised_once() -> None:
    (line,) = _check("format: [1]\n")
    assert line.startswith("m.yaml:1:1: format: no definitions validate: (1) ")
    assert "string" in line and "integer" in line


@pytest.mark.parametrize(("text", "got"), [("- 1\n", "list"), ("", "an empty document")])
def test_root_must_be_mapping(text: str, got: str) -> None:
    assert _check(text) == [f"m.yaml:1:1: <root>: must be a mapping, got {got}"]


def test_load_schema_is_cached_and_is_a_dict() -> None:
    schema = load_schema("config")
    assert schema is load_schema("config")
    assert {"store", "providers", "models", "auth", "router"} <= set(schema)


def test_load_schema_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        load_schema("no-such-schema")
