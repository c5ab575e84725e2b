"""Isolation and model access end to end (issue 14, points 3 and 4; issue 13's per-key
`unsupported_tools`): a real `turnout serve` with a master key and a SQLite store, virtual keys
written into that store (tests/keys.py), the official SDK in strict mode.

* A response, its input items, its event replay, its delete and cancel, a live background
  response and any `previous_response_id` chain are the creator key's and its team's: another
  key gets exactly the 404 of an unknown id, on every endpoint (HTTP and WebSocket), and nothing
  reaches a provider. Conversations alike. A team-mate and the master key see them.
* `GET /v1/spend`: a key its own, or its team's; the master key everything.
* Model allow-lists (a key's, its team's, both) are 403 `model_not_allowed`, on create, stream,
  background, input_tokens and compact; `GET /v1/models` lists only what the caller may use;
  `access.models: aliases_only` narrows the gateway for everyone, the master key included.
* A key with `unsupported_tools: drop` drops the hosted tools a provider lacks on any model.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import NotFoundError, OpenAI, PermissionDeniedError
from websockets.sync.client import connect

from tests import oas
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.keys import make_key, make_team
from tests.simulators import Simulator, Slow

MASTER_KEY = "mk-isolation-master-0123456789"
GROQ = "groq/test-model"  # a Chat Completions provider: the simulator echoes the input
ANTHROPIC = "anthropic/claude-sonnet-4-5"
TERMINAL = {"completed", "failed", "incomplete", "cancelled"}
_serial = count()


@dataclass
class Party:
    """One virtual key: its id, its secret and an SDK client holding it."""

    id: str
    secret: str
    sdk: OpenAI
    team: str | None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def sdk(gw: Gateway, secret: str) -> OpenAI:
    return OpenAI(
        base_url=f"{gw.url}/v1", api_key=secret, max_retries=0, timeout=30,
        _strict_response_validation=True,
    )  # fmt: skip


@dataclass
class Shared:
    gw: Gateway
    db: Path

    def party(self, team: str | None = None, **settings: Any) -> Party:
        key, secret = make_key(self.db, name=f"k{next(_serial)}", team=team, **settings)
        return Party(key.id, secret, sdk(self.gw, secret), team)

    @property
    def master(self) -> OpenAI:
        return sdk(self.gw, MASTER_KEY)


@pytest.fixture(scope="module")
def shared(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    folder = tmp_path_factory.mktemp("isolation")
    db = folder / "turnout.db"
    config = folder / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{db}\n"
        f"auth: {{master_key: {MASTER_KEY}}}\n"
        "models:\n"
        f"  claude: {{deployments: [{{model: {ANTHROPIC}}}]}}\n"
        f"  fast: {{deployments: [{{model: {GROQ}}}]}}\n",
        encoding="utf-8",
    )
    make_team(db, "green", models=["claude"])  # a team that may use one alias only
    gw = start_gateway(config, gateway_env(provider_sim_session), folder / "gateway.log")
    yield Shared(gw, db)
    stop_gateway(gw)


def raw(method: str, gw: Gateway, path: str, party: Party, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.url}/v1{path}", headers=party.auth, timeout=30, **kwargs)


def same_as_unknown(
    gw: Gateway, method: str, path: str, owned_id: str, stranger: Party, **kwargs: Any
) -> dict[str, Any]:
    """The stranger's reply for `owned_id` is the reply for an id that never existed, byte for
    byte but for the id: a 404 that gives nothing away. Returns the error."""
    unknown_id = owned_id[: owned_id.index("_") + 1] + "0" * (
        len(owned_id) - owned_id.index("_") - 1
    )
    foreign = raw(method, gw, path.format(owned_id), stranger, **kwargs)
    unknown = raw(method, gw, path.format(unknown_id), stranger, **kwargs)
    assert foreign.status_code == unknown.status_code == 404, (path, foreign.text)
    oas.validate_error_body(foreign.json())
    assert foreign.text == unknown.text.replace(unknown_id, owned_id), path
    error: dict[str, Any] = foreign.json()["error"]
    return error


def poll(client: OpenAI, response_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in TERMINAL or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def sse(reply: httpx.Response) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for line in reply.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


# -- responses ----------------------------------------------------------------------------------


def test_another_keys_response_is_an_unknown_id_on_every_endpoint(
    shared: Shared, sim: Simulator
) -> None:
    gw = shared.gw
    alice, mate, bob = shared.party("red"), shared.party("red"), shared.party("blue")
    first = alice.sdk.responses.create(model=GROQ, input="Ada's secret is 42")
    rid = first.id
    upstream = len(sim.requests_for("groq"))

    for method, path, kwargs in [
        ("GET", "/responses/{}", {}),
        ("GET", "/responses/{}?stream=true", {}),
        ("GET", "/responses/{}/input_items", {}),
        ("DELETE", "/responses/{}", {}),
        ("POST", "/responses/{}/cancel", {}),
    ]:
        error = same_as_unknown(gw, method, path, rid, bob, **kwargs)
        assert error["code"] == "not_found"
    with pytest.raises(NotFoundError):
        bob.sdk.responses.retrieve(rid)
    with pytest.raises(NotFoundError):
        bob.sdk.responses.input_items.list(rid)
    with pytest.raises(NotFoundError):
        bob.sdk.responses.delete(rid)

    # Chaining from it: the 404 of an unknown previous_response_id, on create, input_tokens
    # and compact alike, and the provider never hears of it.
    for path, body in [
        ("/responses", {"model": GROQ, "input": "What is the secret?"}),
        ("/responses", {"model": GROQ, "input": "What is it?", "stream": True}),
        ("/responses", {"model": GROQ, "input": "What is it?", "background": True}),
        ("/responses/input_tokens", {"model": ANTHROPIC, "input": "Count it"}),
        ("/responses/compact", {"model": GROQ}),
    ]:
        foreign = raw("POST", gw, path, bob, json={**body, "previous_response_id": rid})
        unknown = raw("POST", gw, path, bob, json={**body, "previous_response_id": "resp_000"})
        assert foreign.status_code == unknown.status_code == 404, (path, foreign.text)
        assert foreign.text == unknown.text.replace("resp_000", rid), path
        error = foreign.json()["error"]
        assert (error["code"], error["param"]) == (
            "previous_response_not_found", "previous_response_id"
        ), path  # fmt: skip
    with pytest.raises(NotFoundError) as chained:
        bob.sdk.responses.create(model=GROQ, input="And?", previous_response_id=rid)
    assert chained.value.code == "previous_response_not_found"
    assert len(sim.requests_for("groq")) == upstream
    assert len(sim.requests_for("anthropic")) == 0

    # Nothing the stranger did touched it; the owner, a team-mate and the master key see it.
    assert alice.sdk.responses.retrieve(rid).output_text == "Ada's secret is 42"
    assert mate.sdk.responses.retrieve(rid).id == rid
    assert [i.type for i in mate.sdk.responses.input_items.list(rid).data] == ["message"]
    replay = sse(raw("GET", gw, f"/responses/{rid}?stream=true", mate))
    assert replay[0]["type"] == "response.created" and replay[-1]["type"] == "response.completed"
    follow = mate.sdk.responses.create(model=GROQ, input="Go on", previous_response_id=rid)
    sent = sim.requests_for("groq")[-1].json
    assert "Ada's secret is 42" in orjson.dumps(sent["messages"]).decode()
    assert shared.master.responses.retrieve(follow.id).previous_response_id == rid
    # A foreground response: the owner's cancel is OpenAI's 400, the stranger's was a 404.
    assert raw("POST", gw, f"/responses/{rid}/cancel", alice).status_code == 400
    shared.master.responses.delete(rid)
    with pytest.raises(NotFoundError):
        alice.sdk.responses.retrieve(rid)


def test_a_live_background_response_is_its_owners_too(shared: Shared, sim: Simulator) -> None:
    gw = shared.gw
    alice, mate, bob = shared.party("red"), shared.party("red"), shared.party("blue")
    sim.script("groq", Slow(5))
    job = alice.sdk.responses.create(model=GROQ, input="slow work", background=True)
    rid = job.id
    for method, path in [
        ("GET", "/responses/{}"),
        ("GET", "/responses/{}?stream=true"),
        ("GET", "/responses/{}/input_items"),
        ("POST", "/responses/{}/cancel"),
        ("DELETE", "/responses/{}"),
    ]:
        same_as_unknown(gw, method, path, rid, bob)
    # Not "still in progress" (which would say it exists): the unknown id's 404.
    with pytest.raises(NotFoundError) as chained:
        bob.sdk.responses.create(model=GROQ, input="and?", previous_response_id=rid)
    assert chained.value.code == "previous_response_not_found"
    # Still running, for its owner; a team-mate may cancel it.
    assert alice.sdk.responses.retrieve(rid).status in ("queued", "in_progress")
    assert mate.sdk.responses.cancel(rid).status == "cancelled"
    assert alice.sdk.responses.retrieve(rid).status == "cancelled"
    # The record carries its owner's key and team (written by the background task).
    with sqlite3.connect(shared.db) as conn:
        row = conn.execute("SELECT api_key_id, team FROM responses WHERE id = ?", (rid,))
        assert row.fetchone() == (alice.id, "red")


def test_the_master_key_sees_and_cancels_any_background_response(
    shared: Shared, sim: Simulator
) -> None:
    alice = shared.party("red")
    sim.script("groq", Slow(5))
    job = alice.sdk.responses.create(model=GROQ, input="slow", background=True)
    with shared.master.responses.stream(response_id=job.id) as followed:
        first = next(iter(followed))
        assert first.type == "response.created"
        assert shared.master.responses.cancel(job.id).status == "cancelled"


# -- conversations ------------------------------------------------------------------------------


def test_another_keys_conversation_is_an_unknown_id(shared: Shared, sim: Simulator) -> None:
    gw = shared.gw
    alice, mate, bob = shared.party("red"), shared.party("red"), shared.party("blue")
    conv = alice.sdk.conversations.create(items=[user("Ada's plan")], metadata={"k": "v"})
    cid = conv.id
    (item,) = alice.sdk.conversations.items.list(cid).data
    item_id = str(item.id)  # type: ignore[union-attr]
    items = {"items": [user("more")]}
    for method, path, kwargs in [
        ("GET", "/conversations/{}", {}),
        ("POST", "/conversations/{}", {"json": {"metadata": {"x": "y"}}}),
        ("GET", "/conversations/{}/items", {}),
        ("POST", "/conversations/{}/items", {"json": items}),
        ("GET", "/conversations/{}/items/" + item_id, {}),
        ("DELETE", "/conversations/{}/items/" + item_id, {}),
        ("DELETE", "/conversations/{}", {}),
    ]:
        error = same_as_unknown(gw, method, path, cid, bob, **kwargs)
        assert error["code"] == "conversation_not_found", path
    for call in (
        lambda: bob.sdk.conversations.retrieve(cid),
        lambda: bob.sdk.conversations.items.list(cid),
        lambda: bob.sdk.conversations.delete(cid),
    ):
        with pytest.raises(NotFoundError):
            call()
    upstream = len(sim.requests_for("groq"))
    for body in ({"conversation": cid}, {"conversation": {"id": cid}}):
        with pytest.raises(NotFoundError) as refused:
            bob.sdk.responses.create(model=GROQ, input="hi", **body)  # type: ignore[arg-type]
        assert (refused.value.code, refused.value.param) == ("conversation_not_found",
                                                             "conversation")  # fmt: skip
    assert len(sim.requests_for("groq")) == upstream

    # Untouched; a team-mate adds to it and runs a turn in it; the master key reads it.
    assert alice.sdk.conversations.retrieve(cid).metadata == {"k": "v"}
    mate.sdk.conversations.items.create(cid, items=[user("Step two")])
    mate.sdk.responses.create(model=GROQ, input="Go", conversation=cid)
    sent = orjson.dumps(sim.requests_for("groq")[-1].json["messages"]).decode()
    assert "Ada's plan" in sent and "Step two" in sent
    listed = shared.master.conversations.items.list(cid, order="asc").data
    assert len(listed) == 4  # plan, step two, the turn's input and output
    alice.sdk.conversations.delete(cid)


# -- spend -------------------------------------------------------------------------------------


def spend(gw: Gateway, secret: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{gw.url}/v1/spend", params=params, headers={"Authorization": f"Bearer {secret}"}
    )


def test_spend_a_key_sees_its_own_or_its_teams_the_master_key_all(
    shared: Shared, sim: Simulator
) -> None:
    gw, n = shared.gw, next(_serial)
    red, blue = f"spend-red-{n}", f"spend-blue-{n}"
    alice, mate, bob = shared.party(red), shared.party(red), shared.party(blue)
    for party in (alice, alice, mate, bob):
        party.sdk.responses.create(model=GROQ, input="count me")

    def rows(reply: httpx.Response) -> dict[str | None, int]:
        assert reply.status_code == 200, reply.text
        return {row["key"]: row["requests"] for row in reply.json()["data"]}

    assert rows(spend(gw, bob.secret, group_by="api_key")) == {bob.id: 1}
    assert rows(spend(gw, alice.secret, group_by="api_key")) == {alice.id: 2}
    assert spend(gw, alice.secret).json()["total"]["requests"] == 2
    mine = rows(spend(gw, alice.secret, group_by="api_key", team=red))
    assert mine == {alice.id: 2, mate.id: 1}
    assert rows(spend(gw, mate.secret, group_by="team", team=red)) == {red: 3}
    for params in ({"team": blue}, {"api_key_id": bob.id}):
        refused = spend(gw, alice.secret, **params)
        assert refused.status_code == 403, params
        assert refused.json()["error"]["code"] == "permission_denied"
    teams = rows(spend(gw, MASTER_KEY, group_by="team"))
    assert (teams[red], teams[blue]) == (3, 1)
    assert rows(spend(gw, MASTER_KEY, group_by="api_key", team=blue)) == {bob.id: 1}
    assert rows(spend(gw, MASTER_KEY, group_by="api_key", api_key_id=mate.id)) == {mate.id: 1}


# -- model access ------------------------------------------------------------------------------


def test_a_keys_model_list_is_a_403_elsewhere_and_the_model_list_shows_it(
    shared: Shared, sim: Simulator
) -> None:
    limited = shared.party(models=["claude", "groq/*"])
    assert limited.sdk.responses.create(model="claude", input="hi").status == "completed"
    assert limited.sdk.responses.create(model=GROQ, input="hi").status == "completed"
    upstream = len(sim.requests)
    for call in (
        lambda: limited.sdk.responses.create(model="openai/gpt-4o", input="hi"),
        lambda: limited.sdk.responses.create(model="openai/gpt-4o", input="hi", stream=True),
        lambda: limited.sdk.responses.create(model="fast", input="hi", background=True),
        lambda: limited.sdk.responses.input_tokens.count(model="openai/gpt-4o", input="hi"),
        lambda: limited.sdk.responses.compact(model="openai/gpt-4o", input="hi"),
        lambda: limited.sdk.responses.compact(model=ANTHROPIC, input="hi"),
    ):
        with pytest.raises(PermissionDeniedError) as refused:
            call()
        oas.validate_error_body(refused.value.response.json())
        error = refused.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"], error["type"]) == (
            "model_not_allowed", "model", "invalid_request_error"
        )  # fmt: skip
        assert limited.id in error["message"]
    assert len(sim.requests) == upstream  # nothing reached a provider
    with pytest.raises(PermissionDeniedError) as named:
        limited.sdk.responses.create(model="openai/gpt-4o", input="hi")
    assert "'openai/gpt-4o'" in named.value.message

    assert [m.id for m in limited.sdk.models.list()] == ["claude", "groq/*"]
    assert limited.sdk.models.retrieve("claude").owned_by == "anthropic"
    assert limited.sdk.models.retrieve(GROQ).owned_by == "groq"
    for name in ("fast", "openai/gpt-4o"):
        with pytest.raises(NotFoundError) as hidden:
            limited.sdk.models.retrieve(name)
        assert hidden.value.code == "model_not_found"
    master = shared.master
    assert [m.id for m in master.models.list()] == ["claude", "fast"]
    assert master.models.retrieve("openai/gpt-4o").owned_by == "openai"


def test_a_teams_model_list_binds_its_keys_and_a_keys_list_narrows_it(
    shared: Shared, sim: Simulator
) -> None:
    carol = shared.party("green")  # the team allows claude only
    dave = shared.party("green", models=["claude", "groq/*"])
    for party in (carol, dave):
        assert party.sdk.responses.create(model="claude", input="hi").status == "completed"
        with pytest.raises(PermissionDeniedError) as refused:
            party.sdk.responses.create(model=GROQ, input="hi")
        assert refused.value.code == "model_not_allowed"
        assert "team 'green'" in refused.value.message
        assert [m.id for m in party.sdk.models.list()] == ["claude"]


def test_aliases_only_serves_the_configured_models_to_everyone(
    provider_sim_session: Simulator, sim: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "turnout.db"
    config = tmp_path / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{db}\n"
        f"auth: {{master_key: {MASTER_KEY}}}\n"
        f"models:\n  claude: {{deployments: [{{model: {ANTHROPIC}}}]}}\n"
        "access: {models: aliases_only, allow: ['groq/llama-*']}\n",
        encoding="utf-8",
    )
    _key, secret = make_key(db, models=["anthropic/*", "claude"])
    gw = start_gateway(config, gateway_env(provider_sim_session), tmp_path / "gateway.log")
    try:
        master, keyed = sdk(gw, MASTER_KEY), sdk(gw, secret)
        assert master.responses.create(model="claude", input="hi").status == "completed"
        assert master.responses.create(model="groq/llama-3.3-70b", input="hi").output_text == "hi"
        upstream = len(sim.requests)
        for client in (master, keyed):
            with pytest.raises(PermissionDeniedError) as refused:
                client.responses.create(model=ANTHROPIC, input="hi")
            assert refused.value.code == "model_not_allowed"
            assert f"'{ANTHROPIC}' is not served by this gateway" in refused.value.message
        assert len(sim.requests) == upstream
        assert [m.id for m in master.models.list()] == ["claude", "groq/llama-*"]
        assert [m.id for m in keyed.models.list()] == ["claude"]  # its anthropic/* is not served
        with pytest.raises(NotFoundError):
            master.models.retrieve(ANTHROPIC)
        assert keyed.responses.create(model="claude", input="hi").status == "completed"
    finally:
        stop_gateway(gw)


# -- WebSocket mode ----------------------------------------------------------------------------


def test_a_socket_cannot_chain_from_another_keys_response(shared: Shared, sim: Simulator) -> None:
    alice, bob = shared.party("red"), shared.party("blue")
    theirs = bob.sdk.responses.create(model=GROQ, input="Bob's secret")
    url = shared.gw.url.replace("http://", "ws://") + "/v1/responses"
    with connect(url, additional_headers=alice.auth, open_timeout=10) as socket:

        def create(**body: Any) -> None:
            message = {"type": "response.create", "model": GROQ, **body}
            oas.validate_websocket_create(message)
            socket.send(orjson.dumps(message).decode())

        def receive() -> dict[str, Any]:
            message: dict[str, Any] = orjson.loads(socket.recv(timeout=30))
            return message

        create(input="What is Bob's secret?", previous_response_id=theirs.id)
        error = receive()
        oas.validate_websocket_error(error)
        assert error["status"] == 404
        assert error["error"]["code"] == "previous_response_not_found"
        assert error["error"]["message"] == f"Previous response with id '{theirs.id}' not found."
        # The socket goes on, with the key's own (and unstored) responses.
        create(input="mine", store=False)
        events = [receive()]
        while events[-1]["type"] != "response.completed":
            events.append(receive())
        own = events[0]["response"]["id"]
        create(input="again", previous_response_id=own)
        while (event := receive())["type"] != "response.completed":
            assert event["type"] != "error", event
    assert "Bob's secret" not in orjson.dumps(sim.requests_for("groq")[-1].json).decode()


# -- unsupported_tools per key -----------------------------------------------------------------

TOOLS = [
    {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}},
    {"type": "code_interpreter", "container": {"type": "auto"}},
]


def test_a_key_that_opts_in_drops_the_hosted_tools_a_provider_lacks(
    shared: Shared, sim: Simulator
) -> None:
    gw = shared.gw
    dropper, plain = shared.party(unsupported_tools="drop"), shared.party()
    refused = raw(
        "POST", gw, "/responses", plain, json={"model": GROQ, "input": "x", "tools": TOOLS}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools[1]"
    for body in (
        {"model": GROQ},  # a provider/model name
        {"model": "fast"},  # an alias that does not opt in itself
        {"model": GROQ, "stream": True},
        {"model": GROQ, "background": True},
        {"model": "fast", "background": True},
    ):
        reply = raw(
            "POST", gw, "/responses", dropper, json={**body, "input": "run", "tools": TOOLS}
        )
        assert reply.status_code == 200, (body, reply.text)
        if not body.get("background") or body["model"] == GROQ:
            assert reply.headers["x-turnout-dropped-tools"] == "code_interpreter", body
        if body.get("background"):
            assert poll(dropper.sdk, reply.json()["id"]).status == "completed", body
        (sent,) = sim.requests_for("groq")[-1:]
        assert [t["function"]["name"] for t in sent.json["tools"]] == ["f"], body
    plain_reply = raw("POST", gw, "/responses", dropper, json={"model": GROQ, "input": "no tools"})
    assert "x-turnout-dropped-tools" not in plain_reply.headers


# -- an open gateway ---------------------------------------------------------------------------


def test_an_open_gateway_tells_nobody_apart(gateway: Gateway) -> None:
    """No master key: any bearer sees everything (documented; the master key is recommended)."""
    with (
        OpenAI(base_url=f"{gateway.url}/v1", api_key="one", max_retries=0) as one,
        OpenAI(base_url=f"{gateway.url}/v1", api_key="two", max_retries=0) as two,
    ):
        made = one.responses.create(model=GROQ, input="shared")
        assert two.responses.retrieve(made.id).output_text == "shared"
        assert two.responses.create(model=GROQ, input="on", previous_response_id=made.id).id
