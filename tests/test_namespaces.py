"""Namespace tools flattened for providers that know only flat function names, and restored
(engine/namespaces.py, engine/canonical.py, engine/builder.py)."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.engine.builder import ResponseBuilder, make_echo
from turnout.engine.canonical import normalize
from turnout.engine.errors import RequestError
from turnout.engine.namespaces import MAX_NAME, flat_name, namespace_map

CRM = {
    "type": "namespace",
    "name": "crm",
    "description": "Customer records.",
    "tools": [
        {"type": "function", "name": "find", "parameters": {"type": "object"}},
        {"type": "function", "name": "update", "description": "Change one."},
    ],
}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "groq/m", "input": "hi", "tools": [CRM], **extra}


def test_functions_of_a_namespace_go_upstream_under_flat_names() -> None:
    view = normalize(body()).view
    assert [t["name"] for t in view["tools"]] == ["crm__find", "crm__update"]
    assert view["tools"][1]["description"] == "[crm: Customer records.] Change one."
    assert view["hosted_tools"] == []  # a namespace is not a hosted tool
    assert view["tool_namespaces"] == {
        "crm__find": ("crm", "find"),
        "crm__update": ("crm", "update"),
    }


def test_a_long_flat_name_is_cut_with_a_hash_and_stays_unique() -> None:
    a, b = flat_name("n" * 40, "f" * 40 + "1"), flat_name("n" * 40, "f" * 40 + "2")
    assert len(a) == len(b) == MAX_NAME and a != b
    assert namespace_map([{**CRM, "name": "n" * 40, "tools": [{"name": "f" * 40 + "1"}]}]) == {
        a: ("n" * 40, "f" * 40 + "1")
    }


def test_a_namespaced_call_in_the_history_goes_upstream_flat() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "find", "namespace": "crm",
            "arguments": "{}"}  # fmt: skip
    canon = normalize(body(input=[call, {"type": "function_call_output", "call_id": "c1",
                                         "output": "ok"}]))  # fmt: skip
    entry = canon.view["entries"][0]
    assert (entry["name"], entry["namespace"], entry["plain_name"]) == ("crm__find", "crm", "find")
    assert canon.input_items[0]["namespace"] == "crm"  # stored as the client sent it


def test_the_builder_restores_name_and_namespace() -> None:
    b = ResponseBuilder("resp_1", 1, make_echo(body()), {}, "groq/m",
                        namespaces=normalize(body()).view["tool_namespaces"])  # fmt: skip
    b.start()
    b.feed([{"op": "tool_call", "call_id": "c1", "name": "crm__update", "arguments": "{}"},
            {"op": "finish", "reason": "tool_calls"}])  # fmt: skip
    (call,) = [i for i in b.finish() and b.response["output"] if i["type"] == "function_call"]
    assert (call["name"], call["namespace"]) == ("update", "crm")


def test_client_metadata_is_accepted() -> None:
    assert normalize(body(client_metadata={"session": "x"})).view["model"] == "groq/m"


@pytest.mark.parametrize("bad", [{"name": 3, "tools": []}, {"name": "crm", "tools": {}},
                                 {"name": "crm", "tools": [{"type": "web_search"}]}])  # fmt: skip
def test_a_malformed_namespace_is_a_400_naming_it(bad: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as err:
        normalize(body(tools=[{"type": "namespace", **bad}]))
    assert err.value.param is not None and err.value.param.startswith("tools[0]")
