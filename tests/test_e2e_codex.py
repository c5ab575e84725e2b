"""The Codex CLI's recorded request (tests/fixtures/clients/codex-0.171-request.json: every field,
its namespace tool and its web_search tool) replayed through every provider route (issue 13,
item 5).

Before: every route answered `400 Unknown parameter: 'client_metadata'` before any upstream call;
without that field, the `namespace` tool was refused as "a hosted tool" everywhere but OpenAI and
Azure, naming `tools` without an index. Now `client_metadata` is accepted (passed to
Responses-API upstreams, ignored by the others), a namespace's functions go upstream under flat
names (`multi_agent_v1__close_agent`) and come back as `name` + `namespace`, its `web_search`
tool becomes the provider's own search where the provider can search beside function tools
(Anthropic, Claude on Vertex: tests/test_e2e_web_search.py), and a hosted tool a route cannot
serve is refused naming `tools[i]` and the tool's type (Bedrock and Chat Completions have no
search; Gemini cannot search beside function tools).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from jsonpath_ng.ext import parse as parse_path

from tests import oas
from tests.conftest import PROVIDERS, Gateway, facts_of, label_for, model_for
from tests.paths import CLIENT_FIXTURES
from tests.simulators import Simulator, ToolCalls
from turnout.engine.namespaces import flat_name

CODEX: dict[str, Any] = orjson.loads((CLIENT_FIXTURES / "codex-0.171-request.json").read_bytes())
WEB_SEARCH = next(i for i, t in enumerate(CODEX["tools"]) if t["type"] == "web_search")
NAMESPACE = next(t for t in CODEX["tools"] if t["type"] == "namespace")
NATIVE = {"openai", "azure"}  # OpenAI's own Responses API: every tool as it is
# Perplexity's API takes no function tools at all (its own 400, tested elsewhere).
FUNCTION_ROUTES = [p for p in PROVIDERS if p != "perplexity"]
# Routes whose provider searches beside function tools (formats.yaml `web_search`).
SEARCHING = [
    p for p in PROVIDERS if (facts_of(p).web_search or {}).get("with_functions") and p not in NATIVE
]
SENT_BACK = ("type", "call_id", "name", "arguments", "namespace")  # what Codex replays


def codex_body(provider: str, *, web_search: bool = True) -> dict[str, Any]:
    tools = [t for t in CODEX["tools"] if web_search or t["type"] != "web_search"]
    return {**CODEX, "model": model_for(provider), "tools": tools}


def stream(gateway: Gateway, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]], Any]:
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json=body, timeout=30
    ) as reply:  # fmt: skip
        if reply.status_code != 200:
            return reply.status_code, [], orjson.loads(reply.read())
        events = [
            orjson.loads(line[6:])
            for line in reply.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    for event in events:
        oas.validate_event(event)
    return 200, events, None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_recorded_codex_request_is_served_or_refused_by_name(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    status, events, error = stream(gateway, codex_body(provider))
    if provider in NATIVE:
        assert status == 200, error
        assert events[-1]["type"] == "response.completed"
        sent = sim.last.json
        assert sent["client_metadata"] == CODEX["client_metadata"]  # passed through
        assert any(t["type"] == "namespace" for t in sent["tools"])
        return
    if provider in SEARCHING:
        # The web_search tool is the provider's own search, beside the flattened functions.
        assert status == 200, error
        assert events[-1]["type"] == "response.completed"
        search = facts_of(provider).web_search or {}
        assert len(parse_path(search["tool"]).find(sim.last.json)) == 1
        assert (
            flat_name(NAMESPACE["name"], NAMESPACE["tools"][0]["name"])
            in orjson.dumps(sim.last.json).decode()
        )
        return
    # No web search beside function tools on this route: refused before any upstream call,
    # naming the tool.
    assert status == 400, events[-1:] if events else error
    oas.validate_error_body(error)
    assert error["error"]["param"] == f"tools[{WEB_SEARCH}]"
    assert "'web_search'" in error["error"]["message"]
    assert "namespace" not in error["error"]["message"]
    assert sim.requests_for(label_for(provider)) == []


@pytest.mark.parametrize("provider", FUNCTION_ROUTES)
def test_codex_without_web_search_works_and_namespaced_calls_round_trip(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    inner = NAMESPACE["tools"][0]["name"]
    flat = flat_name(NAMESPACE["name"], inner)
    called = inner if provider in NATIVE else flat  # what the upstream knows the tool by
    sim.script(label_for(provider), ToolCalls([(called, {"target": "agent-1"})]))
    status, events, error = stream(gateway, codex_body(provider, web_search=False))
    assert status == 200, error
    done = events[-1]
    assert done["type"] == "response.completed", done
    calls = [i for i in done["response"]["output"] if i["type"] == "function_call"]
    if provider in NATIVE:
        # The simulator answers with a plain name: the namespace is OpenAI's to echo, not ours.
        assert [c["name"] for c in calls] == [inner]
    else:
        assert [(c["name"], c.get("namespace")) for c in calls] == [(inner, NAMESPACE["name"])]
        assert flat in orjson.dumps(sim.last.json).decode()  # the upstream saw the flat name
        assert "client_metadata" not in sim.last.json
    # The next turn sends the call back with its namespace: it reaches the upstream by the name
    # the upstream knows, and the output is matched to it.
    call = calls[0]
    follow = {
        **codex_body(provider, web_search=False),
        "input": [
            *CODEX["input"],
            {k: v for k, v in call.items() if k in SENT_BACK},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "closed"},
        ],
    }
    status, events, error = stream(gateway, follow)
    assert status == 200, error
    sent = orjson.dumps(sim.last.json).decode()
    assert called in sent and "closed" in sent
    if not facts_of(provider).call_ids_sent:
        return  # matched by name (Gemini): the flat name above is what matters
    assert call["call_id"] in sent
