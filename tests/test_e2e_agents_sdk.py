"""The OpenAI Agents SDK (`openai-agents`) against `turnout serve`, on every provider route
(issue 13, item 5).

The SDK is one of the real clients users point at Turnout: its `OpenAIResponsesModel` over an
`AsyncOpenAI` client whose base URL is the gateway, with strict response validation. Every
scenario runs on every route the other end-to-end modules cover (tests/conftest.py `PROVIDERS`;
those with function tools on every route that takes them, and Perplexity, which takes none, is
checked to refuse an agent's tool by name):

1. a plain agent with instructions (`Runner.run`);
2. a function-tool loop: the provider asks for the tool, the SDK runs it and sends its output
   back, the provider answers with text;
3. streaming (`Runner.run_streamed` + `stream_events()`), the same final output as (2);
4. `previous_response_id` chaining, the second turn's upstream request holding the first's;
5. `conversation_id=` on a conversation made with the SDK, both turns listed as its items;
6. `OpenAIConversationsSession`: history kept across runs, `get_items`, `clear_session`;
7. a handoff to an agent without tools: its request carries the handoff call as history and
   no tools (Bedrock refused that until its dialect declared the tools the history calls);
8. the SDK's WebSocket transport (`OpenAIResponsesWSModel`, WebSocket mode on the gateway): a
   tool loop, then a streamed turn chained with `previous_response_id` on the same socket (the
   gateway refused every message until it let the SDK's `"stream": true` through).

Nothing leaves the machine: tracing is off (and a trace processor checks that no trace
starts), every request the SDK's client sends goes to the gateway, and a name lookup for any
host but the loopback fails the test. Every reply the SDK read is validated against OpenAI's
specs (tests/oas.py), streamed events one by one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
import orjson
import pytest
from agents import (
    Agent,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    OpenAIResponsesWSModel,
    RawResponsesStreamEvent,
    RunItemStreamEvent,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.tracing import Span, Trace, TracingProcessor, add_trace_processor
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from tests import oas
from tests.conftest import PROVIDERS, Gateway, facts_of, label_for, model_for
from tests.simulators import Simulator, ToolCalls
from turnout.engine.sse import SSEDecoder

T = TypeVar("T")

INSTRUCTIONS = "You are a terse assistant."
# Perplexity's API takes no function tools (its own 400, tests/test_e2e_providers.py).
TOOL_ROUTES = [p for p in PROVIDERS if p != "perplexity"]
NO_TOOL_ROUTES = [p for p in PROVIDERS if p not in TOOL_ROUTES]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# -- nothing leaves the machine ------------------------------------------------------------------


class TraceRecorder(TracingProcessor):
    """Every trace and span the SDK starts: none while tracing is disabled."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_trace_start(self, trace: Trace) -> None:
        self.started.append(f"trace {trace.name}")

    def on_trace_end(self, trace: Trace) -> None:
        pass

    def on_span_start(self, span: Span[Any]) -> None:
        self.started.append(f"span {span.span_data.type}")

    def on_span_end(self, span: Span[Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


TRACES = TraceRecorder()
add_trace_processor(TRACES)  # once per process: it only records, and records nothing when off


FOREIGN: list[str] = []  # hosts something tried to look up during the current test


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tracing off; any name lookup of a host but the loopback (api.openai.com…) refused."""
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK:
            FOREIGN.append(name)
            raise OSError(f"test refused a lookup of {name!r}: nothing may leave the machine")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    set_tracing_disabled(True)
    FOREIGN.clear()
    TRACES.started.clear()
    yield
    assert_offline()


def assert_offline() -> None:
    assert FOREIGN == [], f"something tried to reach {FOREIGN}"
    assert TRACES.started == [], f"tracing ran: {TRACES.started}"


# -- the SDK's client, with every exchange recorded ----------------------------------------------


@dataclass
class Exchange:
    method: str
    url: str
    request: bytes
    status: int = 0
    content_type: str = ""
    body: bytearray = field(default_factory=bytearray)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def sent(self) -> Any:
        return orjson.loads(self.request) if self.request else None


class _Tee(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, exchange: Exchange) -> None:
        self.inner = inner
        self.exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.exchange.body.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class Tap(httpx2.AsyncBaseTransport):
    """The real transport, keeping each request and the reply bytes the SDK read."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        exchange = Exchange(request.method, str(request.url), await request.aread())
        self.exchanges.append(exchange)
        response = await self.inner.handle_async_request(request)
        exchange.status = response.status_code
        exchange.content_type = response.headers.get("content-type", "")
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    def creates(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path == "/v1/responses"]


def events_of(exchange: Exchange) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    found = [*decoder.feed(bytes(exchange.body)), *decoder.close()]
    return [orjson.loads(e.data) for e in found if e.data and e.data != "[DONE]"]


def validate_traffic(gateway: Gateway, tap: Tap) -> None:
    """Every request went to the gateway; every reply matches OpenAI's spec for its path."""
    assert tap.exchanges, "the SDK sent nothing"
    for exchange in tap.exchanges:
        assert exchange.url.startswith(f"{gateway.url}/v1/"), exchange.url
        where = f"{exchange.method} {exchange.path}"
        if exchange.status >= 400:
            oas.validate_error_body(orjson.loads(exchange.body))
            continue
        assert exchange.status == 200, (where, exchange.status, bytes(exchange.body))
        parts = exchange.path.strip("/").split("/")[1:]  # after "v1"
        if parts[0] == "responses" and exchange.content_type.startswith("text/event-stream"):
            events = events_of(exchange)
            assert events, where
            for event in events:
                oas.validate_event(event)
            continue
        body = orjson.loads(exchange.body)
        if parts[0] == "responses":
            oas.validate_response(body)
        elif parts[0] != "conversations":
            raise AssertionError(f"the SDK called {where}, which no scenario expects")
        elif len(parts) == 2 and exchange.method == "DELETE":
            oas.validate_conversation_deleted(body)
        elif len(parts) <= 2 or (len(parts) == 4 and exchange.method == "DELETE"):
            oas.validate_conversation(body)  # an item's DELETE answers the conversation
        elif len(parts) == 3 and (body["data"] or exchange.method == "POST"):
            oas.validate_conversation_item_list(body)
        elif len(parts) == 3:  # an empty page: the spec's list wants first_id/last_id strings
            assert body["data"] == [] and body["has_more"] is False, body
        elif len(parts) == 4:
            oas.validate_conversation_item(body)
        else:
            raise AssertionError(f"the SDK called {where}, which no scenario expects")


def run_sdk(gateway: Gateway, scenario: Callable[[AsyncOpenAI, Tap], Awaitable[T]]) -> T:
    """One event loop per test: the SDK's client is built, used and closed inside it."""

    async def main() -> T:
        tap = Tap()
        http = httpx2.AsyncClient(transport=tap, timeout=30)
        client = AsyncOpenAI(
            base_url=f"{gateway.url}/v1",
            api_key="client-key-not-used-upstream",
            max_retries=0,
            http_client=http,
            _strict_response_validation=True,
        )
        async with client:
            result = await scenario(client, tap)
        validate_traffic(gateway, tap)
        assert_offline()
        return result

    return asyncio.run(main())


def agent_for(provider: str, client: AsyncOpenAI, tools: list[Any] | None = None) -> Agent[Any]:
    return Agent(
        name="Assistant",
        instructions=INSTRUCTIONS,
        model=OpenAIResponsesModel(model=model_for(provider), openai_client=client),
        tools=tools or [],
    )


def upstream(sim: Simulator, provider: str) -> list[Any]:
    """The bodies the provider received, oldest first (token counts aside)."""
    return [r.json for r in sim.requests_for(label_for(provider)) if r.operation == "create"]


def dumped(body: Any) -> str:
    return orjson.dumps(body).decode()


@dataclass
class Weather:
    """A function tool with a side effect the test can see."""

    asked: list[str] = field(default_factory=list)

    def tool(self) -> Any:
        @function_tool
        def get_weather(city: str) -> str:
            """The weather in a city.

            Args:
                city: The city's name.
            """
            self.asked.append(city)
            return f"Sunny in {city}"

        return get_weather


# -- (1) a plain agent ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_plain_agent_runs(provider: str, gateway: Gateway, sim: Simulator) -> None:
    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        return await Runner.run(agent_for(provider, client), "Say hello to Ada.")

    result = run_sdk(gateway, scenario)
    assert result.final_output == "Say hello to Ada."  # the simulator echoes the user's text
    [sent] = upstream(sim, provider)
    assert facts_of(provider).instructions(sent) == INSTRUCTIONS
    assert result.last_response_id is not None and result.last_response_id.startswith("resp_")
    assert result.context_wrapper.usage.requests == 1
    assert result.context_wrapper.usage.output_tokens == len("Say hello to Ada.")


# -- (2) a function-tool loop --------------------------------------------------------------------


def _tool_loop(provider: str, gateway: Gateway, sim: Simulator, *, stream: bool) -> Any:
    weather = Weather()
    sim.script(label_for(provider), ToolCalls([("get_weather", {"city": "Paris"})]))

    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        agent = agent_for(provider, client, [weather.tool()])
        if not stream:
            return await Runner.run(agent, "What is the weather in Paris?"), []
        result = Runner.run_streamed(agent, "What is the weather in Paris?")
        events = [event async for event in result.stream_events()]
        return result, events

    result, events = run_sdk(gateway, scenario)
    assert weather.asked == ["Paris"]  # the tool ran, once
    assert result.final_output == "What is the weather in Paris?"
    first, second = upstream(sim, provider)
    assert "Sunny in Paris" not in dumped(first)
    assert "Sunny in Paris" in dumped(second)  # the tool's output went back up
    call_id, name, args = facts_of(provider).call(second)
    assert name == "get_weather"
    assert (orjson.loads(args) if isinstance(args, str) else args) == {"city": "Paris"}
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    if call_id is not None:
        assert call_id == result.new_items[0].raw_item.call_id
    return result, events


@pytest.mark.parametrize("provider", TOOL_ROUTES)
def test_a_function_tool_loop(provider: str, gateway: Gateway, sim: Simulator) -> None:
    result, _ = _tool_loop(provider, gateway, sim, stream=False)
    assert len(result.raw_responses) == 2


@pytest.mark.parametrize("provider", NO_TOOL_ROUTES)
def test_a_function_tool_is_refused_by_name_where_the_provider_has_none(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    weather = Weather()

    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        with pytest.raises(BadRequestError) as info:
            await Runner.run(agent_for(provider, client, [weather.tool()]), "Weather in Oslo?")
        return info.value

    error = run_sdk(gateway, scenario)
    assert error.param == "tools"
    assert weather.asked == [] and upstream(sim, provider) == []


# -- (3) streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", TOOL_ROUTES)
def test_a_streamed_run_ends_as_the_plain_one(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    plain, _ = _tool_loop(provider, gateway, sim, stream=False)
    sim.reset()
    streamed, events = _tool_loop(provider, gateway, sim, stream=True)
    assert streamed.final_output == plain.final_output
    raw = [e.data for e in events if isinstance(e, RawResponsesStreamEvent)]
    kinds = [e.type for e in raw]
    # One response per model call, each from its `response.created` to `response.completed`.
    assert kinds.count("response.created") == kinds.count("response.completed") == 2
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    calls = [
        e.item
        for e in raw
        if e.type == "response.output_item.done" and e.item.type == "function_call"
    ]
    assert [(c.name, orjson.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    text = "".join(e.delta for e in raw if e.type == "response.output_text.delta")
    assert text == streamed.final_output
    items = [e.name for e in events if isinstance(e, RunItemStreamEvent)]
    assert items == ["tool_called", "tool_output", "message_output_created"]


# -- (4) previous_response_id --------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_previous_response_id_chains_turns(provider: str, gateway: Gateway, sim: Simulator) -> None:
    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        agent = agent_for(provider, client)
        first = await Runner.run(agent, "My name is Ada.")
        second = await Runner.run(
            agent, "What is my name?", previous_response_id=first.last_response_id
        )
        return first, second, tap.creates()

    first, second, creates = run_sdk(gateway, scenario)
    assert second.final_output == "What is my name?"
    sent = creates[-1].sent()
    assert sent["previous_response_id"] == first.last_response_id
    assert "My name is Ada." not in dumped(sent["input"])  # the SDK sent the new turn only
    first_up, second_up = upstream(sim, provider)
    assert dumped(first_up).count("My name is Ada.") == 1
    # The gateway put turn 1 back: its input and its (echoed) output.
    assert dumped(second_up).count("My name is Ada.") == 2


# -- (5) conversation_id -------------------------------------------------------------------------


def message_texts(items: list[Any]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        assert item["type"] == "message", item
        content = item["content"]
        text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
        out.append((item["role"], text))
    return out


@pytest.mark.parametrize("provider", PROVIDERS)
def test_conversation_id_keeps_both_turns(provider: str, gateway: Gateway, sim: Simulator) -> None:
    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        conv = await client.conversations.create()
        agent = agent_for(provider, client)
        first = await Runner.run(agent, "My name is Ada.", conversation_id=conv.id)
        second = await Runner.run(agent, "What is my name?", conversation_id=conv.id)
        items = [i.model_dump(mode="json") async for i in client.conversations.items.list(
            conv.id, order="asc"
        )]  # fmt: skip
        return conv, first, second, items, tap.creates()

    conv, first, second, items, creates = run_sdk(gateway, scenario)
    assert [c.sent()["conversation"] for c in creates] == [conv.id, conv.id]
    assert first.final_output == "My name is Ada."
    assert second.final_output == "What is my name?"
    assert dumped(upstream(sim, provider)[-1]).count("My name is Ada.") == 2
    assert message_texts(items) == [
        ("user", "My name is Ada."), ("assistant", "My name is Ada."),
        ("user", "What is my name?"), ("assistant", "What is my name?"),
    ]  # fmt: skip


# -- (6) OpenAIConversationsSession --------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_conversations_session_keeps_history(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        session = OpenAIConversationsSession(openai_client=client)
        agent = agent_for(provider, client)
        first = await Runner.run(agent, "My name is Ada.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
        conversation_id = session.session_id
        items = await session.get_items()
        await session.clear_session()
        with pytest.raises(NotFoundError):
            await client.conversations.retrieve(conversation_id)
        fresh = await session.get_items()  # a new, empty conversation
        return first, second, items, conversation_id, session.session_id, fresh

    first, second, items, conversation_id, new_id, fresh = run_sdk(gateway, scenario)
    assert first.final_output == "My name is Ada."
    assert second.final_output == "What is my name?"
    # The session sent the first turn as history: its input and its output.
    assert dumped(upstream(sim, provider)[-1]).count("My name is Ada.") == 2
    assert message_texts(items) == [
        ("user", "My name is Ada."), ("assistant", "My name is Ada."),
        ("user", "What is my name?"), ("assistant", "What is my name?"),
    ]  # fmt: skip
    assert all(str(i["id"]).startswith("msg_") for i in items)
    assert fresh == [] and new_id != conversation_id


# -- (7) a handoff -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", TOOL_ROUTES)
def test_a_handoff_to_an_agent_without_tools(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        model = OpenAIResponsesModel(model=model_for(provider), openai_client=client)
        writer = Agent(name="Writer", instructions="You write the answer.", model=model)
        triage = Agent(name="Triage", instructions=INSTRUCTIONS, model=model, handoffs=[writer])
        sim.script(label_for(provider), ToolCalls([("transfer_to_writer", {})]))
        return await Runner.run(triage, "Write a haiku about tea."), tap.creates()

    result, creates = run_sdk(gateway, scenario)
    assert result.last_agent.name == "Writer"
    assert result.final_output == "Write a haiku about tea."
    assert "tools" not in creates[-1].sent() or not creates[-1].sent()["tools"]
    first, second = upstream(sim, provider)
    assert "transfer_to_writer" in dumped(first)
    facts = facts_of(provider)
    assert facts.instructions(second) == "You write the answer."
    assert facts.call(second)[1] == "transfer_to_writer"  # the handoff went up as history
    assert "Writer" in dumped(facts.call_output(second)[2])


# -- (8) the WebSocket transport -----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_websocket_transport(provider: str, gateway: Gateway, sim: Simulator) -> None:
    weather = Weather()
    tools = [weather.tool()] if provider in TOOL_ROUTES else []
    if tools:
        sim.script(label_for(provider), ToolCalls([("get_weather", {"city": "Paris"})]))

    async def scenario(client: AsyncOpenAI, tap: Tap) -> Any:
        model = OpenAIResponsesWSModel(model=model_for(provider), openai_client=client)
        agent = Agent(name="Assistant", instructions=INSTRUCTIONS, model=model, tools=tools)
        try:
            first = await Runner.run(agent, "What is the weather in Paris?")
            second = Runner.run_streamed(
                agent, "And tomorrow?", previous_response_id=first.last_response_id
            )
            events = [e async for e in second.stream_events()]
        finally:
            await model.close()
        # Over HTTP, through the tap (validated there): what the socket's turns stored.
        stored = [await client.responses.retrieve(str(r.last_response_id)) for r in (first, second)]
        return first, second, events, stored

    first, second, events, stored = run_sdk(gateway, scenario)
    assert weather.asked == (["Paris"] if tools else [])
    assert first.final_output == "What is the weather in Paris?"
    assert second.final_output == "And tomorrow?"
    raw = [e.data for e in events if isinstance(e, RawResponsesStreamEvent)]
    for event in raw:
        oas.validate_event(event.model_dump(mode="json", exclude_unset=True))
    assert raw[0].type == "response.created" and raw[-1].type == "response.completed"
    assert [s.status for s in stored] == ["completed", "completed"]
    assert stored[1].previous_response_id == first.last_response_id
    last = dumped(upstream(sim, provider)[-1])
    assert "What is the weather in Paris?" in last  # the chain went up with the new turn
    assert ("Sunny in Paris" in last) is bool(tools)
