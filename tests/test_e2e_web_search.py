"""OpenAI's hosted web search on providers that have a search of their own (issue 13, item 5).

Through the official SDK (strict) and `turnout serve`: a `web_search` tool reaches Anthropic
(Claude on Vertex too) as its `web_search_20250305` server tool and Gemini (AI Studio and
Vertex) as Google Search grounding. The simulators answer in the providers' documented shapes
(tests/simulators/render_anthropic.py, render_gemini.py; modes.WebSearch) and the client gets a
`web_search_call` item and `url_citation` annotations whose span is the cited text, streamed
in OpenAI's event order and equal to the non-streamed answer. Routes without a search of their
own still refuse the tool naming `tools[i]`. What each format does is data:
tests/simulators/formats.yaml `web_search`.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from jsonpath_ng.ext import parse as parse_path
from openai import OpenAI

from tests import oas
from tests.conftest import PROVIDERS, Gateway, dialect, facts_of, label_for, model_for
from tests.simulators import Simulator, WebSearch
from tests.simulators.render_gemini import grounding_uri
from turnout.server.pricing import PriceBook, UsageCounts

SEARCHING = [p for p in PROVIDERS if facts_of(p).web_search]
NATIVE = [p for p in PROVIDERS if dialect(p) == "responses"]  # OpenAI's own web search
REFUSING = [p for p in PROVIDERS if p not in SEARCHING and p not in NATIVE]
SOURCES = "web_search_call.action.sources"
REPLY = WebSearch()
QUESTION = "What does Turnout do with a web search? Cite your sources."
TOOL = {"type": "web_search"}
FUNCTION = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


def spec(provider: str) -> dict[str, Any]:
    found = facts_of(provider).web_search
    assert found is not None
    return found


def body(provider: str, **extra: Any) -> dict[str, Any]:
    return {"model": model_for(provider), "input": QUESTION, "tools": [TOOL], **extra}


def expected_source(provider: str, n: int) -> tuple[str, str]:
    """(url, title) a url_citation of result `n` carries on this route."""
    url, title = REPLY.results[n]
    fmt = spec(provider)
    shown = grounding_uri(url) if fmt["source"] == "redirect" else url
    named = httpx.URL(url).host if fmt["title"] == "domain" else title
    return shown, named


def expected_citations(provider: str) -> list[tuple[str, str, str]]:
    """(cited text, url, title) in the order the answer cites them."""
    return [(text, *expected_source(provider, n)) for text, cited in REPLY.answer for n in cited]


def tool_sent(provider: str, sim: Simulator) -> Any:
    """The provider's own search tool in the last request it got (exactly one)."""
    sent = sim.requests_for(label_for(provider))[-1].json
    found = parse_path(spec(provider)["tool"]).find(sent)
    assert len(found) == 1, f"{spec(provider)['tool']} in {sent}"
    return found[0].value


def check_answer(provider: str, response: dict[str, Any], *, sources: bool = True) -> None:
    """A web_search_call with the query and (asked for) sources, a message whose annotations
    cover exactly the cited text, in the order the format puts the two."""
    oas.validate_response(response)
    kinds = [item["type"] for item in response["output"]]
    first = spec(provider)["call_first"]
    assert kinds == (["web_search_call", "message"] if first else ["message", "web_search_call"])
    call = next(i for i in response["output"] if i["type"] == "web_search_call")
    message = next(i for i in response["output"] if i["type"] == "message")
    assert call["id"].startswith("ws_") and call["status"] == "completed"
    action = {"type": "search", "query": REPLY.query, "queries": [REPLY.query]}
    if sources:
        urls = [expected_source(provider, n)[0] for n in range(len(REPLY.results))]
        action["sources"] = [{"type": "url", "url": url} for url in urls]
    assert call["action"] == action
    (part,) = message["content"]
    text = part["text"]
    assert text == "".join(piece for piece, _ in REPLY.answer)
    got = [
        (text[a["start_index"] : a["end_index"]], a["url"], a["title"]) for a in part["annotations"]
    ]
    assert got == expected_citations(provider)
    assert all(a["type"] == "url_citation" for a in part["annotations"])


def raw_stream(gateway: Gateway, payload: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json={**payload, "stream": True}, timeout=30
    ) as reply:
        assert reply.status_code == 200, reply.read()
        events = [
            orjson.loads(line[6:])
            for line in reply.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    for event in events:
        oas.validate_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def comparable(response: Any) -> Any:
    """A Response as data minus its ids and times (and the SDK's client-side `parsed*`)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("parsed")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    data = strip(response if isinstance(response, dict) else response.model_dump())
    for key in ("id", "created_at", "completed_at"):
        data.pop(key)
    for item in data["output"]:
        item.pop("id")
    return data


@pytest.mark.parametrize("provider", SEARCHING)
def test_web_search_is_the_providers_own_search_with_citations(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    sim.script(label_for(provider), REPLY)
    reply = httpx.post(
        f"{gateway.url}/v1/responses", json=body(provider, include=[SOURCES]), timeout=30
    )
    assert reply.status_code == 200, reply.text
    tool_sent(provider, sim)  # the provider's own search tool went up, once
    response = reply.json()
    check_answer(provider, response)
    # The searches the provider billed are priced where the price list knows them.
    usage = response["usage"]
    details = usage["input_tokens_details"]
    counts = UsageCounts(
        input_tokens=usage["input_tokens"], cached_tokens=details["cached_tokens"],
        cache_write_tokens=details["cache_write_tokens"], output_tokens=usage["output_tokens"],
        web_searches=1,
    )  # fmt: skip
    provider_id, model = model_for(provider).split("/", 1)
    price = PriceBook().cost(provider_id, model, counts)
    assert usage["cost"] == (None if price is None else price.cost)
    # Without include, the sources stay out (as at OpenAI).
    sim.script(label_for(provider), REPLY)
    again = httpx.post(f"{gateway.url}/v1/responses", json=body(provider), timeout=30)
    check_answer(provider, again.json(), sources=False)


@pytest.mark.parametrize("provider", SEARCHING)
def test_web_search_streams_in_openais_order_and_equals_the_json_answer(
    provider: str, client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    sim.script(label_for(provider), REPLY)
    events = raw_stream(gateway, body(provider, include=[SOURCES]))
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    check_answer(provider, final)
    call = next(i for i in final["output"] if i["type"] == "web_search_call")
    mine = [
        e["type"]
        for e in events
        if e.get("item_id") == call["id"] or e.get("item", {}).get("id") == call["id"]
    ]
    assert mine == [
        "response.output_item.added", "response.web_search_call.in_progress",
        "response.web_search_call.searching", "response.web_search_call.completed",
        "response.output_item.done",
    ]  # fmt: skip
    added = next(e for e in events if e["type"] == "response.output_item.added"
                 and e["item"]["id"] == call["id"])  # fmt: skip
    assert added["item"]["status"] == "in_progress"
    # Each annotation is announced once its span has streamed, before the text is done.
    message = next(i for i in final["output"] if i["type"] == "message")
    notes = message["content"][0]["annotations"]
    streamed, announced = "", []
    for event in events:
        if event["type"] == "response.output_text.delta":
            streamed += event["delta"]
        elif event["type"] == "response.output_text.annotation.added":
            note = event["annotation"]
            assert event["annotation_index"] == len(announced)
            assert event["item_id"] == message["id"] and event["content_index"] == 0
            assert len(streamed) >= note["end_index"]
            announced.append(note)
        elif event["type"] == "response.output_text.done":
            assert announced == notes
    assert announced == notes
    # The SDK accumulates the same answer; the JSON reply is the same answer.
    sim.script(label_for(provider), REPLY)
    with client.responses.stream(**body(provider, include=[SOURCES])) as stream:
        list(stream)
        accumulated = stream.get_final_response()
    sim.script(label_for(provider), REPLY)
    direct = client.responses.create(**body(provider, include=[SOURCES]))
    assert comparable(direct) == comparable(accumulated)
    sim.script(label_for(provider), REPLY)
    raw = httpx.post(
        f"{gateway.url}/v1/responses", json=body(provider, include=[SOURCES]), timeout=30
    )
    assert comparable(raw.json()) == comparable(final)


@pytest.mark.parametrize("provider", SEARCHING)
def test_a_conversation_goes_on_after_a_web_search(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    """The web_search_call item, chained or sent back by the client, is not a 400: the
    provider gets the answer's text and nothing of the search (docs/behaviour.md)."""
    sim.script(label_for(provider), REPLY)
    first = client.responses.create(**body(provider))
    chained = client.responses.create(
        model=model_for(provider), previous_response_id=first.id, input="Thanks!", tools=[TOOL]
    )
    assert chained.status == "completed"
    sent = orjson.dumps(sim.last.json).decode()
    assert "Turnout maps a hosted web search" in sent  # the answer went back as text
    assert "srvtoolu_" not in sent and "web_search_call" not in sent
    replayed = client.responses.create(
        model=model_for(provider),
        input=[
            {"role": "user", "content": QUESTION},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"role": "user", "content": "Thanks!"},
        ],
    )
    assert replayed.status == "completed" and replayed.output_text == "Thanks!"


@pytest.mark.parametrize("provider", SEARCHING)
@pytest.mark.parametrize(
    "kind", ["web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"]
)
def test_every_spelling_of_the_tool_is_the_same_search(
    provider: str, kind: str, client: OpenAI, sim: Simulator
) -> None:
    sim.script(label_for(provider), REPLY)
    response = client.responses.create(**body(provider, tools=[{"type": kind}]))
    tool_sent(provider, sim)
    assert [i.type for i in response.output].count("web_search_call") == 1


@pytest.mark.parametrize("provider", SEARCHING)
def test_search_options_reach_the_provider_or_are_refused_by_name(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    fmt = spec(provider)
    tool = {
        "type": "web_search",
        "filters": {"allowed_domains": ["example.com"]},
        "user_location": {"type": "approximate", "city": "Lyon", "country": "FR"},
        "search_context_size": "high",  # no counterpart anywhere: not sent
    }
    payload = {"model": model_for(provider), "input": QUESTION, "tools": [tool]}
    before = len(sim.requests_for(label_for(provider)))
    reply = httpx.post(f"{gateway.url}/v1/responses", json=payload, timeout=30)
    if fmt["allowed_domains"] == "refused":
        assert reply.status_code == 400, reply.text
        oas.validate_error_body(reply.json())
        assert reply.json()["error"]["param"] == "tools[0].filters.allowed_domains"
        assert len(sim.requests_for(label_for(provider))) == before
        tool.pop("filters")
        reply = httpx.post(f"{gateway.url}/v1/responses", json=payload, timeout=30)
    assert reply.status_code == 200, reply.text
    sent = tool_sent(provider, sim)
    assert "search_context_size" not in orjson.dumps(sent).decode()
    if fmt["allowed_domains"] != "refused":
        assert parse_path(fmt["allowed_domains"]).find(sent)[0].value == ["example.com"]
    if fmt["user_location"] != "ignored":
        location = parse_path(fmt["user_location"]).find(sent)[0].value
        assert location == {"type": "approximate", "city": "Lyon", "country": "FR"}
    else:
        assert sent == {}


@pytest.mark.parametrize("provider", SEARCHING)
def test_web_search_beside_function_tools(provider: str, gateway: Gateway, sim: Simulator) -> None:
    """Anthropic searches beside function tools; Gemini cannot (its own 400), so Turnout refuses
    naming the search tool before calling it."""
    payload = {"model": model_for(provider), "input": QUESTION, "tools": [FUNCTION, TOOL]}
    sim.script(label_for(provider), REPLY)
    before = len(sim.requests_for(label_for(provider)))
    reply = httpx.post(f"{gateway.url}/v1/responses", json=payload, timeout=30)
    if spec(provider)["with_functions"]:
        assert reply.status_code == 200, reply.text
        check_answer(provider, reply.json(), sources=False)
        assert len(sim.last.json["tools"]) == 2
        return
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    oas.validate_error_body(reply.json())
    assert error["param"] == "tools[1]" and error["code"] == "unsupported_parameter"
    assert "function tools" in error["message"]
    assert len(sim.requests_for(label_for(provider))) == before


@pytest.mark.parametrize("provider", SEARCHING)
def test_without_a_search_the_answer_has_no_search_item(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    """The model may answer without searching: no web_search_call, no annotation, no search
    billed."""
    response = client.responses.create(**body(provider))
    assert [i.type for i in response.output] == ["message"]
    assert response.output_text == QUESTION
    assert response.output[0].content[0].annotations == []  # type: ignore[union-attr]


@pytest.mark.parametrize("provider", REFUSING)
def test_routes_without_a_search_refuse_the_tool_by_name(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    payload = {"model": model_for(provider), "input": QUESTION, "tools": [FUNCTION, TOOL]}
    reply = httpx.post(f"{gateway.url}/v1/responses", json=payload, timeout=30)
    assert reply.status_code == 400, reply.text
    oas.validate_error_body(reply.json())
    error = reply.json()["error"]
    assert error["param"] == "tools[1]" and "'web_search'" in error["message"]
    assert sim.requests_for(label_for(provider)) == []


@pytest.mark.parametrize("provider", NATIVE)
def test_openais_own_search_gets_the_tool_as_sent(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    tool = {"type": "web_search", "filters": {"allowed_domains": ["example.com"]}}
    payload = {"model": model_for(provider), "input": QUESTION, "tools": [tool]}
    reply = httpx.post(f"{gateway.url}/v1/responses", json=payload, timeout=30)
    assert reply.status_code == 200, reply.text
    assert sim.last.json["tools"] == [tool]
