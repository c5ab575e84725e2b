"""The admin API in process (server/admin.py over server/access/key_admin.py) and the CLI's
checks (server/keys_cli.py), without sockets: what is validated and how it is refused, who may
call it, what the audit log holds, what a key's or a team's spend in its period is (fake
clock). tests/test_e2e_keys.py runs the same through a real gateway and the openai SDK.
"""

from __future__ import annotations

import getpass
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.test_store_contract import priced
from turnout.engine.errors import RequestError
from turnout.engine.registry import MappingRegistry
from turnout.server.access.key_admin import KeyAdmin
from turnout.server.access.secrets import secret_hash
from turnout.server.app import create_app
from turnout.server.cli import main
from turnout.server.config import Settings
from turnout.server.stores import MemoryStore

pytestmark = pytest.mark.anyio

MASTER = "mk-admin-tests-0123456789"
AS_MASTER = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry() -> MappingRegistry:
    return MappingRegistry.load(Settings().mappings_dir)  # compiled once for the module


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def app_for(registry: MappingRegistry, store: MemoryStore, master_key: str | None) -> Litestar:
    settings = Settings(store="memory://", master_key=master_key)
    return create_app(settings, registry=registry, store=store)


@pytest.fixture
async def client(
    registry: MappingRegistry, store: MemoryStore
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app_for(registry, store, MASTER)) as c:
        c.headers.update(AS_MASTER)
        yield c


def error_of(reply: Any, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def create(client: AsyncTestClient[Litestar], **body: Any) -> dict[str, Any]:
    reply = await client.post("/admin/keys", json=body)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


# -- creating, showing, changing, revoking --------------------------------------------------------


async def test_create_shows_the_secret_once_and_stores_only_its_hash(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    made = await create(
        client,
        name="ci",
        team="search",
        models=["claude", "openai/*"],
        max_budget_usd=5,
        budget_period="30d",
        rpm=60,
        tpm=10_000,
        max_background=2,
        expires_at=2_000_000_000,
        metadata={"owner": "ada"},
        unsupported_tools="drop",
    )
    secret = made["key"]
    assert made["object"] == "api_key" and made["id"].startswith("key_")
    assert secret.startswith("sk-tnt-") and len(secret) >= 7 + 43  # 256 random bits
    assert made["prefix"] == secret[:11] and made["status"] == "active"
    assert made["max_budget_usd"] == 5.0 and isinstance(made["max_budget_usd"], float)
    assert made["models"] == ["claude", "openai/*"] and made["metadata"] == {"owner": "ada"}
    assert (made["blocked"], made["revoked_at"], made["unsupported_tools"]) == (False, None, "drop")
    assert "secret_hash" not in made
    stored = await store.get_key(made["id"])
    assert stored is not None and stored.secret_hash == secret_hash(secret)
    # The secret is in this reply only: not in the list, the key, or any store table.
    for path in ("/admin/keys", f"/admin/keys/{made['id']}", "/admin/audit"):
        text = (await client.get(path)).text
        assert secret not in text and stored.secret_hash not in text, path
    assert secret not in b"".join(store._key_rows.values()).decode()
    assert secret not in orjson.dumps([(e.before, e.after) for e in store._audit]).decode()
    # And the secret is a working key.
    models = await client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert models.status_code == 200


async def test_an_empty_body_makes_a_key_with_no_limits(client: AsyncTestClient[Litestar]) -> None:
    reply = await client.post("/admin/keys")
    assert reply.status_code == 201, reply.text
    made = reply.json()
    assert all(made[f] is None for f in ("name", "team", "models", "rpm", "budget_period"))
    assert made["metadata"] == {}


async def test_list_show_patch_block_and_revoke(client: AsyncTestClient[Litestar]) -> None:
    a = await create(client, name="a", team="t1", rpm=5)
    b = await create(client, name="b", team="t2")
    listed = (await client.get("/admin/keys")).json()
    oldest_first = sorted((a, b), key=lambda k: (k["created_at"], k["id"]))
    assert listed["object"] == "list"
    assert [k["id"] for k in listed["data"]] == [k["id"] for k in oldest_first]
    assert all("key" not in k and "secret_hash" not in k for k in listed["data"])
    only_t2 = (await client.get("/admin/keys", params={"team": "t2"})).json()["data"]
    assert [k["id"] for k in only_t2] == [b["id"]]

    shown = (await client.get(f"/admin/keys/{a['id']}")).json()
    assert shown["spend"] == 0.0 and shown["requests"] == 0 and shown["status"] == "active"
    assert (shown["period_start"], shown["resets_at"]) == (None, None)  # a lifetime budget

    as_a = {"authorization": f"Bearer {a['key']}"}
    patched = (
        await client.patch(
            f"/admin/keys/{a['id']}", json={"blocked": True, "rpm": None, "name": "renamed"}
        )
    ).json()
    assert (patched["status"], patched["rpm"], patched["name"]) == ("blocked", None, "renamed")
    # Seen at once by this process (the admin call invalidated the key cache).
    assert error_of(await client.get("/v1/models", headers=as_a), 401)["code"] == "key_blocked"
    unblocked = await client.patch(f"/admin/keys/{a['id']}", json={"blocked": False})
    assert unblocked.json()["status"] == "active"
    assert (await client.get("/v1/models", headers=as_a)).status_code == 200

    revoked = (await client.delete(f"/admin/keys/{a['id']}")).json()
    assert revoked["status"] == "revoked" and isinstance(revoked["revoked_at"], int)
    assert "revoked" in error_of(await client.get("/v1/models", headers=as_a), 401)["message"]
    again = await client.delete(f"/admin/keys/{a['id']}")  # idempotent: same answer, no entry
    assert again.status_code == 200 and again.json() == revoked
    refused = error_of(await client.patch(f"/admin/keys/{a['id']}", json={"rpm": 1}), 409)
    assert refused["code"] == "key_revoked"
    actions = [e["action"] for e in (await client.get("/admin/audit")).json()["data"]]
    assert actions == ["key.revoke", "key.update", "key.update", "key.create", "key.create"]


async def test_a_patch_that_changes_nothing_writes_no_audit_entry(
    client: AsyncTestClient[Litestar],
) -> None:
    made = await create(client, rpm=5)
    for body in ({}, {"rpm": 5}, None):
        reply = await (
            client.patch(f"/admin/keys/{made['id']}", json=body)
            if body is not None
            else client.patch(f"/admin/keys/{made['id']}")
        )
        assert reply.status_code == 200 and reply.json()["rpm"] == 5
    assert len((await client.get("/admin/audit")).json()["data"]) == 1


@pytest.mark.parametrize("path", ["/admin/keys/key_000000000000000000000000", "/admin/keys/x"])
async def test_an_unknown_key_is_a_404_key_not_found(
    client: AsyncTestClient[Litestar], path: str
) -> None:
    for reply in (
        await client.get(path),
        await client.patch(path, json={"rpm": 1}),
        await client.delete(path),
    ):
        assert error_of(reply, 404)["code"] == "key_not_found"
    assert (await client.get("/admin/audit")).json()["data"] == []


# -- validation: Cerberus, OpenAI-shaped 400s naming the field ------------------------------------

BAD_KEY_BODIES = [
    ({"rmp": 5}, "rmp", "unknown_parameter", "did you mean 'rpm'"),
    ({"secret_hash": "00"}, "secret_hash", "unknown_parameter", "Unknown parameter"),
    ({"key": "sk-tnt-chosen"}, "key", "unknown_parameter", "Unknown parameter"),
    ({"revoked_at": 1}, "revoked_at", "unknown_parameter", "Unknown parameter"),
    ({"rpm": 0}, "rpm", "invalid_value", "min value is 1"),
    ({"rpm": "5"}, "rpm", "invalid_value", "integer"),
    ({"rpm": True}, "rpm", "invalid_value", "got boolean"),
    ({"tpm": 1.5}, "tpm", "invalid_value", "integer"),
    ({"max_budget_usd": -1}, "max_budget_usd", "invalid_value", "min value is 0"),
    ({"budget_period": "1 month"}, "budget_period", "invalid_value", "'30d'"),
    ({"budget_period": "0d"}, "budget_period", "invalid_value", "a number and a unit"),
    ({"team": "a team"}, "team", "invalid_value", "letters, digits"),
    ({"team": ""}, "team", "invalid_value", "letters, digits"),
    ({"models": "claude"}, "models", "invalid_value", "list"),
    ({"models": ["claude", ""]}, "models[1]", "invalid_value", "empty"),
    ({"metadata": {"n": 1}}, "metadata.n", "invalid_value", "string"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value", "16"),
    ({"unsupported_tools": "dorp"}, "unsupported_tools", "invalid_value", "did you mean 'drop'"),
    ({"expires_at": "tomorrow"}, "expires_at", "invalid_value", "integer"),
    ({"blocked": None}, "blocked", "invalid_value", "null"),
    ({"name": ""}, "name", "invalid_value", "empty"),
]


@pytest.mark.parametrize(("body", "param", "code", "words"), BAD_KEY_BODIES)
async def test_a_bad_key_setting_is_a_400_naming_it(
    client: AsyncTestClient[Litestar], body: Any, param: str, code: str, words: str
) -> None:
    made = await create(client)
    for reply in (
        await client.post("/admin/keys", json=body),
        await client.patch(f"/admin/keys/{made['id']}", json=body),
    ):
        error = error_of(reply, 400)
        assert (error["param"], error["code"]) == (param, code), error
        assert words in error["message"], error["message"]
        assert error["type"] == "invalid_request_error"
    keys = (await client.get("/admin/keys")).json()["data"]
    assert keys == [{k: v for k, v in made.items() if k != "key"}]  # unchanged
    assert len((await client.get("/admin/audit")).json()["data"]) == 1  # nothing written


@pytest.mark.parametrize(
    ("raw", "code"), [(b"[1, 2]", "invalid_type"), (b'"x"', "invalid_type"), (b"{", "invalid_json")]
)
async def test_a_body_that_is_no_object_is_a_400(
    client: AsyncTestClient[Litestar], raw: bytes, code: str
) -> None:
    for path in ("/admin/keys", "/admin/teams"):
        error = error_of(await client.post(path, content=raw), 400)
        assert error["code"] == code and error["param"] is None


async def test_teams_create_show_patch_delete_and_their_400s(
    client: AsyncTestClient[Litestar],
) -> None:
    reply = await client.post(
        "/admin/teams", json={"name": "ops", "rpm": 10, "metadata": {"a": "b"}}
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["object"] == "team" and reply.json()["rpm"] == 10
    assert error_of(await client.post("/admin/teams", json={"name": "ops"}), 409)["code"] == (
        "team_exists"
    )
    for body, param in (
        ({}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "x", "team": "y"}, "team"),
        ({"name": "x", "blocked": True}, "blocked"),
    ):
        assert error_of(await client.post("/admin/teams", json=body), 400)["param"] == param
    renamed = error_of(await client.patch("/admin/teams/ops", json={"name": "ops2"}), 400)
    assert renamed["code"] == "unknown_parameter"
    patched = (
        await client.patch(
            "/admin/teams/ops", json={"rpm": None, "max_budget_usd": 3, "budget_period": "1d"}
        )
    ).json()
    assert (patched["rpm"], patched["max_budget_usd"], patched["budget_period"]) == (
        None,
        3.0,
        "1d",
    )
    assert patched["resets_at"] == patched["period_start"] + 86400
    listed = (await client.get("/admin/teams")).json()
    assert listed["object"] == "list" and [t["name"] for t in listed["data"]] == ["ops"]
    gone = (await client.delete("/admin/teams/ops")).json()
    assert gone == {"name": "ops", "object": "team.deleted", "deleted": True}
    for reply in (
        await client.get("/admin/teams/ops"),
        await client.delete("/admin/teams/ops"),
        await client.patch("/admin/teams/ops", json={}),
    ):
        assert error_of(reply, 404)["code"] == "team_not_found"
    entries = (await client.get("/admin/audit")).json()["data"]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("team.delete", "ops"),
        ("team.update", "ops"),
        ("team.create", "ops"),
    ]
    assert entries[1]["before"]["rpm"] == 10 and entries[1]["after"]["rpm"] is None
    assert entries[0]["after"] is None and entries[2]["before"] is None


# -- who may call it -----------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys/key_x"),
    ("PATCH", "/admin/keys/key_x"),
    ("DELETE", "/admin/keys/key_x"),
    ("GET", "/admin/teams"),
    ("POST", "/admin/teams"),
    ("GET", "/admin/teams/t"),
    ("PATCH", "/admin/teams/t"),
    ("DELETE", "/admin/teams/t"),
    ("GET", "/admin/audit"),
]


async def test_only_the_master_key_may_call_the_admin_api(
    client: AsyncTestClient[Litestar],
) -> None:
    made = await create(client)
    for method, path in ADMIN_CALLS:
        for headers, status, code in (
            ({"authorization": ""}, 401, "invalid_api_key"),
            ({"authorization": "Bearer sk-tnt-not-a-key"}, 401, "invalid_api_key"),
            ({"authorization": f"Bearer {made['key']}"}, 403, "master_key_required"),
        ):
            reply = await client.request(method, path, headers=headers, json={})
            assert error_of(reply, status)["code"] == code, (method, path, headers)
    assert len((await client.get("/admin/audit")).json()["data"]) == 1


async def test_without_a_master_key_the_admin_api_is_off(
    registry: MappingRegistry, store: MemoryStore
) -> None:
    async with AsyncTestClient(app=app_for(registry, store, None)) as open_gateway:
        for method, path in ADMIN_CALLS:
            for headers in ({}, {"authorization": "Bearer anything"}):
                reply = await open_gateway.request(method, path, headers=headers, json={})
                error = error_of(reply, 403)
                assert (
                    error["code"] == "admin_api_disabled" and "auth.master_key" in error["message"]
                )
    assert await store.list_keys() == [] and await store.audit_log() == []


# -- the audit log ------------------------------------------------------------------------------


async def test_audit_pages_newest_first_and_holds_no_secret(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    made = [await create(client, name=f"k{i}") for i in range(5)]
    await client.patch(f"/admin/keys/{made[0]['id']}", json={"rpm": 7})
    page = (await client.get("/admin/audit", params={"limit": 4})).json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 4
    first = page["data"][0]
    assert set(first) == {"object", "seq", "at", "actor", "action", "target", "before", "after"}
    assert (first["actor"], first["action"], first["target"]) == (
        "master_key",
        "key.update",
        made[0]["id"],
    )
    assert (first["before"]["rpm"], first["after"]["rpm"]) == (None, 7)
    rest = (await client.get("/admin/audit", params={"before": page["next_before"]})).json()
    assert rest["has_more"] is False and rest["next_before"] is None
    seqs = [e["seq"] for e in page["data"] + rest["data"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 6
    text = (await client.get("/admin/audit")).text
    for key in made:
        assert key["key"] not in text and key["key"][11:20] not in text
    hashes = [k.secret_hash for k in await store.list_keys()]
    assert not any(h in text for h in hashes)
    for params in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"before": "-1"}):
        assert error_of(await client.get("/admin/audit", params=params), 400)["param"] in params


# -- spend in the period (fake clock) -------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_keys_spend_is_its_own_in_the_current_period(store: MemoryStore) -> None:
    t0 = 1_800_000_000
    clock = Clock(t0)
    admin = KeyAdmin(store, actor="test", clock=clock)
    key = await admin.create_key({"budget_period": "1h", "max_budget_usd": 2, "team": "t"})
    other = await admin.create_key({"team": "t"})
    for rid, at, cost, owner in (
        ("r1", t0 + 10, 0.5, key["id"]),
        ("r2", t0 + 20, 0.25, key["id"]),
        ("r3", t0 + 30, None, key["id"]),  # unpriced: a request, no cost
        ("r4", t0 + 40, 9.0, other["id"]),  # another key of the team
        ("r5", t0 + 3600, 1.5, key["id"]),  # the next period
    ):
        await store.put(priced(rid, created_at=at, cost=cost, api_key_id=owner, team="t"))
    clock.now = t0 + 100
    shown = await admin.key(key["id"])
    assert (shown["spend"], shown["requests"]) == (0.75, 3)  # r5 is in the next period
    assert (shown["period_start"], shown["resets_at"]) == (t0, t0 + 3600)
    clock.now = t0 + 3600 + 5  # the period turned: only r5
    shown = await admin.key(key["id"])
    assert (shown["spend"], shown["requests"], shown["budget_remaining_usd"]) == (1.5, 1, 0.5)
    assert (shown["period_start"], shown["resets_at"]) == (t0 + 3600, t0 + 7200)
    team = await admin.create_team({"name": "t", "budget_period": "1h"})
    assert team["created_at"] == clock.now
    shown_team = await admin.team("t")
    assert shown_team["spend"] == 0.0 and shown_team["period_start"] == clock.now
    await admin.update_team("t", {"budget_period": None})  # a lifetime budget: everything
    lifetime = await admin.team("t")
    assert (lifetime["spend"], lifetime["requests"], lifetime["resets_at"]) == (11.25, 5, None)


async def test_expiry_shows_in_the_status(store: MemoryStore) -> None:
    clock = Clock(1_800_000_000)
    admin = KeyAdmin(store, actor="test", clock=clock)
    key = await admin.create_key({"expires_at": 1_800_000_060})
    assert (await admin.key(key["id"]))["status"] == "active"
    clock.now += 60
    assert (await admin.key(key["id"]))["status"] == "expired"
    assert (await admin.list_keys())["data"][0]["status"] == "expired"


async def test_a_store_without_keys_is_a_400_keys_unavailable() -> None:
    class NoKeys:  # a response-only backend: no KeyStore methods
        pass

    admin = KeyAdmin(NoKeys(), actor="test")  # type: ignore[arg-type]
    with pytest.raises(RequestError) as caught:
        await admin.list_keys()
    assert caught.value.status == 400 and caught.value.code == "keys_unavailable"


# -- the CLI's checks (run end to end against a gateway in tests/test_e2e_keys.py) ----------------


def write_config(folder: Path, text: str) -> Path:
    config = folder / "turnout.yaml"
    config.write_text(text, encoding="utf-8")
    return config


def test_the_cli_refuses_a_config_without_a_master_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "store: sqlite:///t.db\n")
    assert main(["keys", "create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "auth.master_key" in err and "would not be checked" in err
    assert not (tmp_path / "t.db").exists()  # nothing opened, nothing written
    assert main(["keys", "list"]) == 2  # no config at all: the defaults have no master key
    assert "no --config" in capsys.readouterr().err


def test_the_cli_refuses_a_memory_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"store: memory://\nauth: {{master_key: {MASTER}}}\n")
    assert main(["teams", "list", "--config", str(config)]) == 2
    assert "memory://" in capsys.readouterr().err


def test_the_cli_makes_the_api_calls_with_its_own_actor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f"store: sqlite:///t.db\nauth: {{master_key: {MASTER}}}\n")
    args = ["--config", str(config)]
    assert (
        main(
            [
                "keys",
                "create",
                *args,
                "--json",
                "--name",
                "ci",
                "--models",
                "claude,gpt",
                "--models",
                "openai/*",
                "--metadata",
                "owner=ada",
                "--expires-in",
                "1d",
            ]
        )
        == 0
    )
    made = orjson.loads(capsys.readouterr().out)
    assert made["key"].startswith("sk-tnt-") and made["models"] == ["claude", "gpt", "openai/*"]
    assert made["metadata"] == {"owner": "ada"} and made["expires_at"] > made["created_at"]
    assert main(["keys", "update", made["id"], *args, "--rpm", "0"]) == 1  # the API's check
    assert "Invalid value for 'rpm'" in capsys.readouterr().err
    assert main(["keys", "update", made["id"], *args, "--rpm", "3", "--unset", "rpm"]) == 1
    capsys.readouterr()
    assert main(["keys", "update", made["id"], *args, "--block", "--unset", "models"]) == 0
    out = capsys.readouterr().out
    assert "blocked" in out and made["key"] not in out
    assert main(["keys", "list", *args]) == 0
    listing = capsys.readouterr().out
    assert made["id"] in listing and made["prefix"] in listing and made["key"] not in listing
    assert main(["keys", "revoke", made["id"], *args]) == 0
    assert main(["keys", "show", "key_nope", *args]) == 1
    assert "key_nope" in capsys.readouterr().err
    assert main(["teams", "create", "ops", *args, "--rpm", "9"]) == 0
    assert main(["teams", "delete", "ops", *args]) == 0
    capsys.readouterr()
    # Text mode prints the secret once, with a warning that it will not be shown again.
    assert main(["keys", "create", *args]) == 0
    out = capsys.readouterr().out
    assert "sk-tnt-" in out and "shown only now" in out
    import asyncio

    from turnout.server.stores import SQLiteStore

    async def entries() -> list[Any]:
        s = SQLiteStore(tmp_path / "t.db")
        await s.open()
        try:
            return await s.audit_log()
        finally:
            await s.aclose()

    log = asyncio.run(entries())
    assert {e.actor for e in log} == {f"cli:{getpass.getuser()}"}
    assert [e.action for e in log] == [
        "key.create",
        "team.delete",
        "team.create",
        "key.revoke",
        "key.update",
        "key.create",
    ]
    assert made["key"] not in orjson.dumps([(e.before, e.after) for e in log]).decode()


def test_the_log_redaction_already_masks_a_virtual_key() -> None:
    """Defence in depth: were a secret ever formatted into a log line or a telemetry record,
    the redaction every log line and record goes through masks it (its `sk-` shape)."""
    from turnout.server.access.secrets import new_secret
    from turnout.server.redaction import redact

    for _ in range(50):  # token_urlsafe's whole alphabet, '-' and '_' included
        secret = new_secret()
        for text in (f"key={secret}", f"Authorization: Bearer {secret}", f"[{secret}]"):
            masked = redact(text)
            assert secret not in masked and secret[7:] not in masked, masked
