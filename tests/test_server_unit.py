"""The Litestar shell and the gateway orchestration, with a scripted mapping and no sockets.

Fakes: `FakeMapping` (a CompiledMapping look-alike whose upstream speaks one JSON object per line)
and an `httpx.MockTransport` upstream. Everything else is real: routes, error handlers, the
gateway, `engine.canonical`, `engine.builder`, `MemoryStore`, `server.config.Settings`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.oas import (
    validate_deleted,
    validate_error_body,
    validate_event,
    validate_item_list,
    validate_response,
)
from turnout.engine.canonical import CanonicalRequest
from turnout.engine.errors import UpstreamError
from turnout.engine.mapping import UpstreamRequest
from turnout.server.app import create_app
from turnout.server.cli import RedactingFormatter, main, redact
from turnout.server.config import Deployment, LimitsSettings, ModelAlias, Settings
from turnout.server.gateway import DONE, Gateway, JsonReply, StreamReply
from turnout.server.stores import MemoryStore, StoredResponse
from turnout.server.upstream import Upstream

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"
ENV = {"FAKE_API_KEY": KEY}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- fakes -------------------------------------------------------------------------------------


class FakeDecoder:
    """One JSON object per line: {"t": text} | {"stop": reason} | {"err": message}."""

    def __init__(self) -> None:
        self._buf = b""

    def _line(self, line: bytes) -> list[dict[str, Any]]:
        obj = orjson.loads(line)
        if "t" in obj:
            return [{"op": "text_delta", "text": obj["t"]}]
        if "err" in obj:
            return [{"op": "error", "code": "overloaded", "message": obj["err"]}]
        return [
            {"op": "usage", "input_tokens": 3, "output_tokens": 2},
            {"op": "finish", "reason": obj["stop"]},
            {"op": "end"},
        ]

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [op for line in lines if line.strip() for op in self._line(line)]

    def close(self) -> list[dict[str, Any]]:
        return self._line(self._buf) if self._buf.strip() else []


class FakeMapping:
    provider = "fake"
    defaults: Mapping[str, Any] = {"api_base": "http://upstream.test"}
    finish_reasons: Mapping[str, str] = {
        "end": "completed",
        "length": "incomplete/max_output_tokens",
    }

    def __init__(self) -> None:
        self.seen: list[CanonicalRequest] = []
        self.fail_render = False

    def build_request(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: Mapping[str, str],
        settings: Mapping[str, Any] | None = None,
    ) -> UpstreamRequest:
        if self.fail_render:
            raise RuntimeError(f"boom with {credentials['api_key']}")
        self.seen.append(req)
        texts = [e.get("text") for e in req.view["entries"] if e["kind"] == "text"]
        return UpstreamRequest(
            method="POST",
            url=f"{api_base}/chat",
            headers={"authorization": f"Bearer {credentials['api_key']}"},
            body=orjson.dumps({"model": model, "texts": texts, "stream": req.stream}),
            stream=req.stream,
        )

    def parse_response(self, body: bytes) -> list[dict[str, Any]]:
        decoder = FakeDecoder()
        return decoder.feed(body) + decoder.close()

    def stream_decoder(self) -> FakeDecoder:
        return FakeDecoder()

    def parse_error(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> UpstreamError:
        retry = (headers or {}).get("retry-after")
        return UpstreamError(
            status,
            f"fake: {orjson.loads(body)['message']}",
            code="rate_limit_exceeded" if status == 429 else "upstream_error",
            type="rate_limit_error" if status == 429 else "server_error",
            retry_after=float(retry) if retry else None,
            provider="fake",
        )


class FakeRegistry:
    def __init__(self, mapping: FakeMapping) -> None:
        self.mapping = mapping

    def get(self, provider: str) -> FakeMapping | None:
        return self.mapping if provider == "fake" else None

    @property
    def providers(self) -> list[str]:
        return ["fake"]


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self._chunks = chunks
        self._error = error
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._error is not None:
            raise self._error


REPLY = [b'{"t": "Hel"}\n', b'{"t": "lo"}\n{"t": " there"}\n', b'{"stop": "end"}\n']


class FakeUpstream:
    """What the provider answers next; records the requests it got (headers included)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.chunks = list(REPLY)
        self.error: Exception | None = None
        self.status = 200
        self.headers: dict[str, str] = {}
        self.raise_on_send: Exception | None = None
        self.last: _Chunks | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.raise_on_send is not None:
            raise self.raise_on_send
        if self.status != 200:
            return httpx.Response(self.status, json={"message": "slow down"}, headers=self.headers)
        self.last = _Chunks(self.chunks, self.error)
        return httpx.Response(200, stream=self.last)


class RecordingStore(MemoryStore):
    """MemoryStore that writes every put into a shared log (to check ordering)."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def put(self, record: StoredResponse) -> None:
        self.log.append(f"put:{record.id}")
        await super().put(record)


# -- fixtures ----------------------------------------------------------------------------------


def make_settings(**kw: Any) -> Settings:
    default = {"smart": ModelAlias(deployments=[Deployment(model="fake/fake-large")])}
    models = kw.pop("models", default)
    return Settings(store="memory://", models=models, env=dict(kw.pop("env", ENV)), **kw)


class Env:
    def __init__(self, **settings_kw: Any) -> None:
        self.mapping = FakeMapping()
        self.upstream = FakeUpstream()
        self.log: list[str] = []
        self.store = RecordingStore(self.log)
        self.settings = make_settings(**settings_kw)

    def app(self) -> Litestar:
        return create_app(
            self.settings,
            registry=FakeRegistry(self.mapping),
            store=self.store,
            transport=httpx.MockTransport(self.upstream),
        )

    def gateway(self) -> Gateway:
        up = Upstream(transport=httpx.MockTransport(self.upstream))
        return Gateway(self.settings, FakeRegistry(self.mapping), self.store, up)


@pytest.fixture
def env() -> Env:
    return Env()


@pytest.fixture
async def client(env: Env) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=env.app()) as c:
        yield c


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip() or block == "data: [DONE]":
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        event = orjson.loads(lines[1][6:])
        assert lines[0][7:] == event["type"]
        events.append(event)
    return events


def assert_error(resp: httpx.Response, status: int, code: str | None, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    validate_error_body(body)
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert "Traceback" not in resp.text and KEY not in resp.text
    return str(body["error"]["message"])


# -- error bodies ------------------------------------------------------------------------------


async def test_malformed_json_is_400_invalid_json(client: AsyncTestClient[Litestar]) -> None:
    resp = await client.post("/v1/responses", content=b'{"model": "fake/x", ')
    assert_error(resp, 400, "invalid_json", None)


async def test_missing_model_and_wrong_types(client: AsyncTestClient[Litestar]) -> None:
    assert_error(await client.post("/v1/responses", json={"input": "hi"}), 400,
                 "missing_required_parameter", "model")  # fmt: skip
    resp = await client.post("/v1/responses", json={"model": "fake/x", "input": 5})
    assert_error(resp, 400, "invalid_type", "input")
    resp = await client.post("/v1/responses", json=["not", "an", "object"])
    assert_error(resp, 400, "invalid_type", None)
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "hi", "previous_response_id": 3}
    )
    assert_error(resp, 400, "invalid_type", "previous_response_id")


async def test_unknown_model_lists_providers(client: AsyncTestClient[Litestar]) -> None:
    resp = await client.post("/v1/responses", json={"model": "nope/x", "input": "hi"})
    message = assert_error(resp, 400, "model_not_found", "model")
    assert "fake" in message and "smart" in message
    resp = await client.post("/v1/responses", json={"model": "gpt-4o", "input": "hi"})
    assert_error(resp, 400, "model_not_found", "model")
    # A misspelt provider or alias: the closest one is named first.
    resp = await client.post("/v1/responses", json={"model": "fkae/x", "input": "hi"})
    assert "Did you mean 'fake/x'?" in assert_error(resp, 400, "model_not_found", "model")
    resp = await client.post("/v1/responses", json={"model": "smrat", "input": "hi"})
    assert "Did you mean 'smart'?" in assert_error(resp, 400, "model_not_found", "model")


async def test_models_lists_aliases_else_provider_patterns() -> None:
    env = Env()
    env.settings = make_settings(
        models={
            "smart": ModelAlias(deployments=[Deployment(model="fake/fake-large")]),
            "mixed": ModelAlias(
                deployments=[Deployment(model="fake/a"), Deployment(model="other/b")]
            ),
        }
    )
    async with AsyncTestClient(app=env.app()) as c:
        listed = (await c.get("/v1/models")).json()
        assert [(m["id"], m["owned_by"]) for m in listed["data"]] == [
            ("smart", "fake"),
            ("mixed", "fake, other"),
        ]
        assert (await c.get("/v1/models/smart")).json()["owned_by"] == "fake"
        assert (await c.get("/v1/models/fake/any-model")).json()["owned_by"] == "fake"
    env.settings = make_settings(models={})
    async with AsyncTestClient(app=env.app()) as c:
        listed = (await c.get("/v1/models")).json()
    assert [(m["id"], m["owned_by"]) for m in listed["data"]] == [("fake/*", "fake")]


async def test_missing_key_names_the_variable() -> None:
    env = Env(env={})
    async with AsyncTestClient(app=env.app()) as c:
        resp = await c.post("/v1/responses", json={"model": "fake/x", "input": "hi"})
    assert "FAKE_API_KEY" in assert_error(resp, 401, "missing_api_key", None)


async def test_method_route_and_size_errors(env: Env) -> None:
    env.settings = make_settings(limits=LimitsSettings(max_body_bytes=200))
    async with AsyncTestClient(app=env.app()) as c:
        assert_error(await c.get("/v1/responses"), 405, "method_not_allowed", None)
        assert_error(await c.get("/v1/nothing"), 404, "not_found", None)
        big = orjson.dumps({"model": "fake/x", "input": "x" * 500})
        assert_error(await c.post("/v1/responses", content=big), 413, "request_too_large", None)


async def test_unexpected_error_is_generic_500(
    env: Env, client: AsyncTestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    env.mapping.fail_render = True
    with caplog.at_level(logging.ERROR, logger="turnout.errors"):
        resp = await client.post("/v1/responses", json={"model": "fake/x", "input": "hi"})
    message = assert_error(resp, 500, None, None)
    assert "boom" not in message
    assert "RuntimeError" in caplog.text  # the traceback went to the log


# -- auth --------------------------------------------------------------------------------------


async def test_master_key() -> None:
    env = Env(master_key="tnt-master-secret")
    body = {"model": "fake/x", "input": "hi"}
    async with AsyncTestClient(app=env.app()) as c:
        assert_error(await c.post("/v1/responses", json=body), 401, "invalid_api_key", None)
        bad = {"authorization": "Bearer wrong"}
        assert_error(await c.post("/v1/responses", json=body, headers=bad), 401,
                     "invalid_api_key", None)  # fmt: skip
        assert_error(await c.get("/v1/responses/resp_x"), 401, "invalid_api_key", None)
        good = {"authorization": "Bearer tnt-master-secret"}
        resp = await c.post("/v1/responses", json=body, headers=good)
        assert resp.status_code == 200
        assert (await c.get("/health")).json() == {"status": "ok", "store": "ok"}
    # The client's key never travels upstream; the provider key does.
    assert env.upstream.requests[0].headers["authorization"] == f"Bearer {KEY}"


# -- create / get / delete / input_items -------------------------------------------------------


async def test_create_get_delete(env: Env, client: AsyncTestClient[Litestar]) -> None:
    resp = await client.post(
        "/v1/responses", json={"model": "smart", "input": "hi", "temperature": 0.5}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    response = resp.json()
    validate_response(response)
    assert response["status"] == "completed" and response["model"] == "smart"
    assert response["temperature"] == 0.5
    assert response["output"][0]["content"][0]["text"] == "Hello there"
    assert orjson.loads(env.upstream.requests[0].content)["model"] == "fake-large"

    got = await client.get(f"/v1/responses/{response['id']}", params={"include[]": "x"})
    assert got.json() == response
    got = await client.get(f"/v1/responses/{response['id']}?include=reasoning.encrypted_content")
    assert got.status_code == 200

    deleted = await client.delete(f"/v1/responses/{response['id']}")
    assert deleted.status_code == 200
    validate_deleted(deleted.json())
    assert deleted.json() == {"id": response["id"], "object": "response", "deleted": True}
    for resp in (
        await client.get(f"/v1/responses/{response['id']}"),
        await client.delete(f"/v1/responses/{response['id']}"),
        await client.get(f"/v1/responses/{response['id']}/input_items"),
    ):
        assert "not found" in assert_error(resp, 404, "not_found", None)


async def test_input_items_paging(client: AsyncTestClient[Litestar]) -> None:
    items = [{"role": "user", "content": f"m{i}", "id": f"msg_{i}"} for i in range(5)]
    rid = (await client.post("/v1/responses", json={"model": "fake/x", "input": items})).json()[
        "id"
    ]
    url = f"/v1/responses/{rid}/input_items"
    page = (await client.get(url)).json()
    validate_item_list(page)
    assert [it["id"] for it in page["data"]] == [f"msg_{i}" for i in (4, 3, 2, 1, 0)]
    page = (await client.get(url, params={"limit": 2, "order": "asc"})).json()
    assert [it["id"] for it in page["data"]] == ["msg_0", "msg_1"]
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("msg_0", "msg_1", True)
    page = (await client.get(url, params={"limit": 2, "order": "asc", "after": "msg_3"})).json()
    assert [it["id"] for it in page["data"]] == ["msg_4"] and page["has_more"] is False
    assert_error(await client.get(url, params={"limit": 0}), 400, "invalid_value", "limit")
    assert_error(await client.get(url, params={"limit": 101}), 400, "invalid_value", "limit")
    assert_error(await client.get(url, params={"order": "up"}), 400, "invalid_value", "order")
    assert_error(await client.get(url, params={"after": "msg_9"}), 400, "invalid_value", "after")


async def test_input_items_get_minted_ids(client: AsyncTestClient[Litestar]) -> None:
    rid = (await client.post("/v1/responses", json={"model": "fake/x", "input": "hi"})).json()["id"]
    (item,) = (await client.get(f"/v1/responses/{rid}/input_items")).json()["data"]
    assert item["id"].startswith("msg_") and item["role"] == "user"


# -- streaming ---------------------------------------------------------------------------------


async def test_stream_framing(client: AsyncTestClient[Litestar]) -> None:
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "hi", "stream": True}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.text.endswith("data: [DONE]\n\n")
    events = sse_events(resp.text)
    for event in events:
        validate_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1


async def test_chunks_hold_whole_events_and_store_before_terminal(env: Env) -> None:
    """One chunk per upstream batch (whole events only), and the store write lands after every
    event before the terminal one and before the terminal event (with [DONE]) is sent."""
    reply = await env.gateway().create({"model": "fake/x", "input": "hi", "stream": True})
    assert isinstance(reply, StreamReply)
    chunks = []
    async for chunk in reply.chunks:
        chunks.append(chunk)
        env.log.append("chunk")
        assert chunk.endswith(b"\n\n")
        for event in sse_events(chunk.decode()):
            env.log.append(f"event:{event['type']}")
    assert len(chunks) >= 3  # the start events leave before the upstream is read
    assert sse_events(chunks[0].decode())[-1]["type"] == "response.in_progress"
    assert chunks[-1].endswith(b"\n\n" + DONE)
    assert sse_events(chunks[-1].decode())[0]["type"] == "response.completed"
    puts = [i for i, entry in enumerate(env.log) if entry.startswith("put:")]
    assert len(puts) == 1  # written once
    assert env.log[puts[0] + 1 :] == ["chunk", "event:response.completed"]


async def test_client_disconnect_closes_upstream_and_stores_nothing(env: Env) -> None:
    reply = await env.gateway().create({"model": "fake/x", "input": "hi", "stream": True})
    assert isinstance(reply, StreamReply) and isinstance(reply.chunks, AsyncGenerator)
    for _ in range(3):
        await anext(reply.chunks)
    await reply.chunks.aclose()
    assert env.upstream.last is not None and env.upstream.last.closed
    assert env.log == []


async def test_stream_and_json_give_the_same_response(env: Env) -> None:
    gw = env.gateway()
    plain = await gw.create({"model": "fake/x", "input": "hi"})
    streamed = await gw.create({"model": "fake/x", "input": "hi", "stream": True})
    assert isinstance(plain, JsonReply) and isinstance(streamed, StreamReply)
    events = sse_events(b"".join([c async for c in streamed.chunks]).decode())
    final = events[-1]["response"]

    def strip(r: dict[str, Any]) -> dict[str, Any]:
        drop = {"id", "created_at", "completed_at"}
        out = {k: v for k, v in r.items() if k not in drop}
        out["output"] = [{k: v for k, v in it.items() if k != "id"} for it in r["output"]]
        return out

    assert strip(final) == strip(plain.response)
    stored = await env.store.get(final["id"])
    assert stored is not None and stored.response == final and stored.events == events


async def test_replay_from_zero_and_starting_after(client: AsyncTestClient[Litestar]) -> None:
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "hi", "stream": True}
    )
    original = sse_events(resp.text)
    rid = original[0]["response"]["id"]
    replay = await client.get(f"/v1/responses/{rid}", params={"stream": "true"})
    assert replay.headers["content-type"].startswith("text/event-stream")
    assert sse_events(replay.text) == original and replay.text.endswith("data: [DONE]\n\n")
    tail = await client.get(f"/v1/responses/{rid}?stream=true&starting_after=3")
    assert sse_events(tail.text) == original[4:]
    bad = await client.get(f"/v1/responses/{rid}?stream=true&starting_after=x")
    assert_error(bad, 400, "invalid_value", "starting_after")


async def test_upstream_error_before_first_byte_is_json(
    env: Env, client: AsyncTestClient[Litestar]
) -> None:
    env.upstream.status, env.upstream.headers = 429, {"retry-after": "7"}
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "hi", "stream": True}
    )
    assert "slow down" in assert_error(resp, 429, "rate_limit_exceeded", None)
    assert resp.headers["retry-after"] == "7" and resp.headers["retry-after-ms"] == "7000"
    assert env.log == []  # nothing stored


async def test_network_errors(env: Env, client: AsyncTestClient[Litestar]) -> None:
    body = {"model": "fake/x", "input": "hi"}
    env.upstream.raise_on_send = httpx.ConnectError("refused")
    assert_error(await client.post("/v1/responses", json=body), 502, "upstream_unreachable", None)
    env.upstream.raise_on_send = httpx.ReadTimeout("slow")
    assert_error(await client.post("/v1/responses", json=body), 504, "upstream_timeout", None)


async def test_mid_stream_failure_is_response_failed_and_stored(
    env: Env, client: AsyncTestClient[Litestar]
) -> None:
    env.upstream.chunks = REPLY[:2]
    env.upstream.error = httpx.ReadError("connection reset")
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "hi", "stream": True}
    )
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    events = sse_events(resp.text)
    assert events[-1]["type"] == "response.failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and "fake" in failed["error"]["message"]
    assert (await client.get(f"/v1/responses/{failed['id']}")).json()["status"] == "failed"


async def test_in_band_error_mid_stream(env: Env, client: AsyncTestClient[Litestar]) -> None:
    env.upstream.chunks = [REPLY[0], b'{"err": "overloaded, try later"}\n']
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "hi", "stream": True}
    )
    events = sse_events(resp.text)
    assert events[-1]["type"] == "response.failed"
    assert "overloaded" in events[-1]["response"]["error"]["message"]


# -- store and chaining ------------------------------------------------------------------------


async def test_store_false_keeps_nothing(env: Env, client: AsyncTestClient[Litestar]) -> None:
    for stream in (False, True):
        resp = await client.post(
            "/v1/responses",
            json={"model": "fake/x", "input": "hi", "store": False, "stream": stream},
        )
        assert resp.status_code == 200
    assert env.log == []
    rid = sse_events(resp.text)[0]["response"]["id"]
    assert_error(await client.get(f"/v1/responses/{rid}"), 404, "not_found", None)


async def test_unknown_previous_response_is_404(client: AsyncTestClient[Litestar]) -> None:
    resp = await client.post(
        "/v1/responses",
        json={"model": "fake/x", "input": "hi", "previous_response_id": "resp_missing"},
    )
    assert_error(resp, 404, "previous_response_not_found", "previous_response_id")


async def test_a_deleted_ancestor_is_named_when_a_chain_breaks(
    client: AsyncTestClient[Litestar],
) -> None:
    ids: list[str] = []
    for text in ("a", "b", "c"):
        body: dict[str, Any] = {"model": "fake/x", "input": text}
        if ids:
            body["previous_response_id"] = ids[-1]
        ids.append((await client.post("/v1/responses", json=body)).json()["id"])
    assert (await client.delete(f"/v1/responses/{ids[1]}")).status_code == 200
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "d", "previous_response_id": ids[2]}
    )
    message = assert_error(resp, 404, "previous_response_not_found", "previous_response_id")
    assert ids[1] in message and ids[2] in message


async def test_chain_immediately_and_merge_idempotently(
    env: Env, client: AsyncTestClient[Litestar]
) -> None:
    first = (await client.post("/v1/responses", json={"model": "fake/x", "input": "one"})).json()
    # Chained at once (no waiting for a writer: anchor-failures 1), streaming this time.
    second = await client.post(
        "/v1/responses",
        json={
            "model": "fake/x",
            "input": "two",
            "previous_response_id": first["id"],
            "stream": True,
        },
    )
    second_id = sse_events(second.text)[0]["response"]["id"]
    assert sse_events(second.text)[-1]["response"]["previous_response_id"] == first["id"]
    texts = [e.get("text") for e in env.mapping.seen[-1].view["entries"]]
    assert texts == ["one", "Hello there", "two"]

    # The client replays the whole history it already has and chains as well (anchor-failures 9).
    one_item = (await client.get(f"/v1/responses/{first['id']}/input_items")).json()["data"][0]
    replayed = [one_item, *first["output"], {"role": "user", "content": "three"}]
    third = await client.post(
        "/v1/responses",
        json={"model": "fake/x", "input": replayed, "previous_response_id": second_id},
    )
    assert third.status_code == 200, third.text
    texts = [e.get("text") for e in env.mapping.seen[-1].view["entries"]]
    assert texts == ["one", "Hello there", "two", "Hello there", "three"]
    items = (await client.get(f"/v1/responses/{third.json()['id']}/input_items")).json()["data"]
    assert [it["content"][0]["text"] for it in items] == ["three"]


async def test_branches_from_one_parent_keep_their_own_history(
    env: Env, client: AsyncTestClient[Litestar]
) -> None:
    """The gateway keeps the normalized history of the chains it continued (server/history.py):
    branches from one parent, and a request that changes what the mapping was handed, must not
    see each other's turns."""

    async def turn(text: str, prev: str | None) -> str:
        body: dict[str, Any] = {"model": "fake/x", "input": text}
        if prev is not None:
            body["previous_response_id"] = prev
        resp = await client.post("/v1/responses", json=body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["id"])

    def texts() -> list[Any]:
        return [e.get("text") for e in env.mapping.seen[-1].view["entries"]]

    a = await turn("a", None)
    b = await turn("b", a)
    left = await turn("left", b)
    assert texts() == ["a", "Hello there", "b", "Hello there", "left"]
    for entry in env.mapping.seen[-1].view["entries"]:
        entry["text"] = "changed by a mapping"  # the cached history is not the one handed out
    right = await turn("right", b)
    assert texts() == ["a", "Hello there", "b", "Hello there", "right"]
    await turn("after left", left)
    assert texts() == ["a", "Hello there", "b", "Hello there", "left", "Hello there", "after left"]
    await turn("after right", right)
    assert texts()[-3:] == ["right", "Hello there", "after right"]
    # A deleted link breaks every chain through it, however warm.
    assert (await client.delete(f"/v1/responses/{b}")).status_code == 200
    resp = await client.post(
        "/v1/responses", json={"model": "fake/x", "input": "x", "previous_response_id": left}
    )
    assert_error(resp, 404, "previous_response_not_found", "previous_response_id")


async def test_a_store_false_turn_cannot_be_continued(client: AsyncTestClient[Litestar]) -> None:
    first = (await client.post("/v1/responses", json={"model": "fake/x", "input": "a"})).json()
    body = {"model": "fake/x", "input": "b", "previous_response_id": first["id"], "store": False}
    unstored = (await client.post("/v1/responses", json=body)).json()
    resp = await client.post(
        "/v1/responses",
        json={"model": "fake/x", "input": "c", "previous_response_id": unstored["id"]},
    )
    assert_error(resp, 404, "previous_response_not_found", "previous_response_id")


# -- CLI and logging ---------------------------------------------------------------------------


def test_lint_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "ok: 0 mappings"
    assert main(["lint", str(tmp_path / "missing")]) == 1
    assert "mappings folder not found" in capsys.readouterr().out


def test_serve_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text("store: memory://\nstore: memory://\n")
    with _restore_logging():
        assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "Traceback" not in err


def test_redaction() -> None:
    text = (
        "key sk-ant-api03-abcdefgh Authorization: Bearer abc.def x-api-key: zzzz1234 sekrit-value-1"
    )
    out = redact(text, ["sekrit-value-1"])
    for secret in ("sk-ant-api03-abcdefgh", "abc.def", "zzzz1234", "sekrit-value-1"):
        assert secret not in out
    fmt = RedactingFormatter("%(message)s", env={"MY_API_KEY": "plain-words-key"})
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "got %s", ("plain-words-key",), None
    )
    assert fmt.format(record) == "got ***"


class _restore_logging:
    """`turnout serve` configures the root logger; put it back for the other tests."""

    def __enter__(self) -> None:
        root = logging.getLogger()
        self._state: tuple[list[logging.Handler], int] = (root.handlers[:], root.level)

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.handlers[:], level = self._state
        root.setLevel(level)


def test_serve_freezes_the_start_up_heap_with_the_price_data_loaded() -> None:
    """`turnout serve` moves the start-up objects (mappings, price data) out of the collector's
    reach before it accepts requests; run in a child so this process's GC is left alone."""
    import subprocess
    import sys

    code = (
        "import gc, sys\n"
        "from turnout.server.cli import _settle_heap\n"
        "_settle_heap()\n"
        "from genai_prices import data_snapshot\n"
        "snapshot = data_snapshot.get_snapshot()\n"
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "frozen = snapshot.providers\n"
        "assert gc.is_tracked(frozen) and all(o is not frozen for o in gc.get_objects())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_a_model_name_no_header_can_carry_is_percent_encoded(
    client: AsyncTestClient[Litestar],
) -> None:
    for stream in (False, True):
        body = {"model": "fake/模型 ü", "input": "hi", "stream": stream}
        resp = await client.post("/v1/responses", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-turnout-deployment"] == "fake/%E6%A8%A1%E5%9E%8B%20%C3%BC"


def test_in_band_error_ops_are_masked_whatever_their_types() -> None:
    from turnout.server.redaction import mask_ops as _masked

    ops = _masked(
        [
            {"op": "text_delta", "text": "sk-test-0123456789abcdef stays: it is the answer"},
            {"op": "error", "message": {"detail": f"bad {KEY}"}, "code": f"key {KEY}"},
        ],
        lambda: (KEY,),
    )
    assert ops[0]["text"].startswith("sk-test")  # only errors are masked: output is data
    assert KEY not in str(ops[1]) and "***" in ops[1]["message"] and "***" in ops[1]["code"]
