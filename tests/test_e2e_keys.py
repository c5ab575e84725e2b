"""Virtual keys end to end: a real `turnout serve` with a master key and a SQLite store, the admin
API over HTTP, the official openai SDK (strict validation) using the keys it makes, and
`turnout keys …` run as a separate process against the same database file while the gateway
runs.

What is shown: a key works as soon as it is made; blocked, revoked and expired keys are 401s
(from the admin API at once, from the CLI within a second); a virtual key is no admin; a gateway
without a master key has no admin API; the audit log lists every change, before and after,
without a secret; and no secret appears in the database file (WAL included) or the gateway's log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from tests import oas
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.simulators import Simulator

MASTER = "tm-keys-master-0123456789abcdef"
AS_MASTER = {"authorization": f"Bearer {MASTER}"}
MODEL = "claude"  # an alias, priced (anthropic/claude-sonnet-4-5)


@dataclass
class Setup:
    gateway: Gateway
    folder: Path
    config: Path
    env: dict[str, str]
    issued: list[str]  # every secret made in this module, for the leak checks

    @property
    def db(self) -> Path:
        return self.folder / "turnout.db"


@pytest.fixture(scope="module")
def setup(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("keys")
    config = folder / "turnout.yaml"
    config.write_text(
        "store: sqlite:///turnout.db\n"
        "auth: {master_key: '${TURNOUT_MASTER_KEY}'}\n"
        "server: {access_log: true}\n"  # one log line per request: a place a key could leak
        "models:\n"
        "  claude:\n"
        "    deployments:\n"
        "      - {model: anthropic/claude-sonnet-4-5}\n",
        encoding="utf-8",
    )
    env = gateway_env(provider_sim_session)
    env["TURNOUT_MASTER_KEY"] = MASTER
    gw = start_gateway(config, env, folder / "gateway.log")
    yield Setup(gw, folder, config, env, [])
    stop_gateway(gw)


def admin(setup: Setup, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{setup.gateway.url}/admin{path}",
        headers=AS_MASTER,
        timeout=30,
        content=None if body is None else orjson.dumps(body),
    )


def new_key(setup: Setup, **settings: Any) -> dict[str, Any]:
    reply = admin(setup, "POST", "/keys", settings)
    assert reply.status_code == 201, reply.text
    made = dict(reply.json())
    setup.issued.append(made["key"])
    return made


def sdk(setup: Setup, secret: str) -> OpenAI:
    return OpenAI(
        base_url=f"{setup.gateway.url}/v1",
        api_key=secret,
        max_retries=0,
        timeout=30,
        _strict_response_validation=True,
    )


def models_status(setup: Setup, secret: str) -> httpx.Response:
    """The cheapest authenticated call: no upstream behind it."""
    return httpx.get(
        f"{setup.gateway.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    oas.validate_error_body(body)
    return dict(body["error"])


def refused_code(client: OpenAI) -> str | None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client.responses.create(model=MODEL, input="hi")
    assert caught.value.status_code == 401
    return caught.value.code


def turnout_cli(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    """`turnout keys|teams …` as a user runs it: its own process, the gateway's config."""
    turnout = Path(sys.executable).parent / "turnout"
    command = [str(turnout)] if turnout.exists() else [sys.executable, "-m", "turnout.server.cli"]
    return subprocess.run(
        [*command, *args, "--config", str(setup.config)],
        env=setup.env,
        cwd=setup.folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_401(setup: Setup, secret: str, within_s: float) -> tuple[float, dict[str, Any]]:
    """Seconds until `secret` is refused (polling every 20 ms), and the refusal."""
    started = time.monotonic()
    while True:
        reply = models_status(setup, secret)
        elapsed = time.monotonic() - started
        if reply.status_code == 401:
            return elapsed, error_of(reply, 401)
        assert reply.status_code == 200, reply.text
        assert elapsed < within_s + 2, f"still accepted after {elapsed:.2f} s"
        time.sleep(0.02)


# -- a key from the admin API, used with the SDK ------------------------------------------------


def test_a_new_key_works_with_the_sdk_and_its_use_is_counted(setup: Setup) -> None:
    made = new_key(setup, name="sdk", team="research", metadata={"owner": "ada"})
    with sdk(setup, made["key"]) as client:
        raw = client.responses.with_raw_response.create(model=MODEL, input="Say hi.")
        response = raw.parse()
        assert response.status == "completed" and response.output_text
        assert raw.headers["x-turnout-deployment"] == "anthropic/claude-sonnet-4-5"
        with client.responses.stream(model=MODEL, input="Stream hi.") as stream:
            final = stream.get_final_response()
        assert final.status == "completed"
        assert client.responses.retrieve(response.id).id == response.id
    shown = admin(setup, "GET", f"/keys/{made['id']}").json()
    assert shown["requests"] == 2 and shown["spend"] > 0 and shown["status"] == "active"
    assert "key" not in shown and "secret_hash" not in shown
    # The responses are the key's: the spend report groups them under its id, not a hash.
    spend = httpx.get(
        f"{setup.gateway.url}/v1/spend",
        params={"group_by": "api_key"},
        headers=AS_MASTER,
        timeout=10,
    ).json()
    row = next(r for r in spend["data"] if r["key"] == made["id"])
    assert row["requests"] == 2 and row["cost"] == pytest.approx(shown["spend"])


def test_list_show_and_patch(setup: Setup) -> None:
    made = new_key(setup, name="patchable", rpm=100, budget_period="30d", max_budget_usd=10)
    listed = admin(setup, "GET", "/keys").json()
    assert listed["object"] == "list" and made["id"] in [k["id"] for k in listed["data"]]
    assert made["key"] not in orjson.dumps(listed).decode()
    shown = admin(setup, "GET", f"/keys/{made['id']}").json()
    assert shown["resets_at"] == shown["period_start"] + 30 * 86400
    assert shown["budget_remaining_usd"] == 10.0
    patched = admin(
        setup,
        "PATCH",
        f"/keys/{made['id']}",
        {"rpm": None, "models": ["claude"], "expires_at": 4_000_000_000},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["rpm"], patched.json()["models"]) == (None, ["claude"])
    bad = error_of(admin(setup, "PATCH", f"/keys/{made['id']}", {"rpm": -1}), 400)
    assert (bad["param"], bad["code"]) == ("rpm", "invalid_value")
    unknown = error_of(admin(setup, "GET", "/keys/key_000000000000000000000000"), 404)
    assert unknown["code"] == "key_not_found"


def test_block_unblock_and_revoke_through_the_api_are_immediate(setup: Setup) -> None:
    made = new_key(setup, name="blockable")
    with sdk(setup, made["key"]) as client:
        assert client.responses.create(model=MODEL, input="hi").status == "completed"
        assert admin(setup, "PATCH", f"/keys/{made['id']}", {"blocked": True}).status_code == 200
        assert refused_code(client) == "key_blocked"
        assert admin(setup, "PATCH", f"/keys/{made['id']}", {"blocked": False}).status_code == 200
        assert client.responses.create(model=MODEL, input="hi").status == "completed"
        revoked = admin(setup, "DELETE", f"/keys/{made['id']}")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        assert refused_code(client) == "invalid_api_key"
    elapsed, error = wait_for_401(setup, made["key"], within_s=1.0)
    assert elapsed < 1.0 and made["id"] in error["message"] and made["key"] not in error["message"]
    entries = admin(setup, "GET", "/audit").json()["data"]
    mine = [e for e in entries if e["target"] == made["id"]]
    assert [e["action"] for e in mine] == ["key.revoke", "key.update", "key.update", "key.create"]
    revoke, unblock, block, create = mine
    assert (block["before"]["blocked"], block["after"]["blocked"]) == (False, True)
    assert (unblock["before"]["blocked"], unblock["after"]["blocked"]) == (True, False)
    assert revoke["before"]["revoked_at"] is None and revoke["after"]["revoked_at"] > 0
    assert create["before"] is None and create["after"]["name"] == "blockable"
    assert {e["actor"] for e in mine} == {"master_key"}
    assert made["key"] not in orjson.dumps(entries).decode()


def test_an_expired_key_is_refused(setup: Setup) -> None:
    expires_at = int(time.time()) + 2
    made = new_key(setup, expires_at=expires_at)
    assert models_status(setup, made["key"]).status_code == 200
    _elapsed, error = wait_for_401(setup, made["key"], within_s=3.0)
    assert error["code"] == "key_expired" and time.time() >= expires_at
    assert admin(setup, "GET", f"/keys/{made['id']}").json()["status"] == "expired"


def test_a_virtual_key_is_no_admin(setup: Setup) -> None:
    made = new_key(setup)
    as_key = {"authorization": f"Bearer {made['key']}"}
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/audit"),
        ("DELETE", f"/admin/keys/{made['id']}"),
    ):
        reply = httpx.request(method, f"{setup.gateway.url}{path}", headers=as_key, timeout=10)
        assert error_of(reply, 403)["code"] == "master_key_required", (method, path)
    assert error_of(httpx.get(f"{setup.gateway.url}/admin/keys", timeout=10), 401)
    assert admin(setup, "GET", f"/keys/{made['id']}").json()["status"] == "active"


def test_a_gateway_without_a_master_key_has_no_admin_api(gateway: Gateway) -> None:
    """The suite's shared gateway has no master key (it checks no keys at all)."""
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/audit"),
        ("DELETE", "/admin/keys/key_x"),
    ):
        for headers in ({}, AS_MASTER):
            reply = httpx.request(method, f"{gateway.url}{path}", headers=headers, timeout=10)
            error = error_of(reply, 403)
            assert error["code"] == "admin_api_disabled" and "auth.master_key" in error["message"]


# -- the CLI, against the running gateway's database ----------------------------------------------


def test_the_cli_manages_keys_the_running_gateway_honours(setup: Setup) -> None:
    made = turnout_cli(setup, "keys", "create", "--json", "--name", "from-cli", "--team", "ops")
    assert made.returncode == 0, made.stderr
    key = orjson.loads(made.stdout)
    setup.issued.append(key["key"])
    assert key["name"] == "from-cli" and key["key"].startswith("sk-tnt-")
    # The gateway never saw this key: it reads it from the shared file on its first request.
    with sdk(setup, key["key"]) as client:
        assert client.responses.create(model=MODEL, input="hi").status == "completed"
    listed = turnout_cli(setup, "keys", "list")
    assert listed.returncode == 0 and key["id"] in listed.stdout
    assert key["key"] not in listed.stdout
    shown = turnout_cli(setup, "keys", "show", key["id"], "--json")
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["requests"] == 1

    assert models_status(setup, key["key"]).status_code == 200  # cached as valid from here
    blocked = turnout_cli(setup, "keys", "update", key["id"], "--block")
    assert blocked.returncode == 0, blocked.stderr
    elapsed, error = wait_for_401(setup, key["key"], within_s=1.0)
    assert error["code"] == "key_blocked" and elapsed < 1.5
    assert turnout_cli(setup, "keys", "update", key["id"], "--unblock").returncode == 0
    time.sleep(1.1)  # the gateway's cached "blocked" lasts at most a second
    assert models_status(setup, key["key"]).status_code == 200

    revoked = turnout_cli(setup, "keys", "revoke", key["id"])
    assert revoked.returncode == 0, revoked.stderr
    elapsed, error = wait_for_401(setup, key["key"], within_s=1.0)
    assert "revoked" in error["message"] and elapsed < 1.5
    # The API sees the CLI's changes, in the audit log too, under the CLI's actor.
    assert admin(setup, "GET", f"/keys/{key['id']}").json()["status"] == "revoked"
    entries = [e for e in admin(setup, "GET", "/audit").json()["data"] if e["target"] == key["id"]]
    assert [e["action"] for e in entries] == [
        "key.revoke",
        "key.update",
        "key.update",
        "key.create",
    ]
    assert all(e["actor"].startswith("cli:") for e in entries)
    refused = turnout_cli(setup, "keys", "update", key["id"], "--rpm", "5")
    assert refused.returncode == 1 and "revoked" in refused.stderr


def test_the_cli_refuses_without_a_master_key(setup: Setup, tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text(f"store: sqlite:///{setup.db}\n", encoding="utf-8")
    turnout = Path(sys.executable).parent / "turnout"
    command = [str(turnout)] if turnout.exists() else [sys.executable, "-m", "turnout.server.cli"]
    run = subprocess.run(
        [*command, "keys", "create", "--config", str(config)],
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and str(config) in run.stderr and "auth.master_key" in run.stderr
    assert "sk-tnt-" not in run.stdout + run.stderr


# -- no secret at rest ----------------------------------------------------------------------------


def test_no_secret_is_in_the_database_file_or_the_log(setup: Setup) -> None:
    made = new_key(setup, name="leak-check")
    with sdk(setup, made["key"]) as client:
        client.responses.create(model=MODEL, input="hi")
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_does_not_exist")
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="nope/x", input="hi")
    error_of(models_status(setup, made["key"] + "x"), 401)  # a near miss, refused
    assert len(setup.issued) >= 5
    stored = b"".join(
        path.read_bytes()
        for path in (setup.db, Path(f"{setup.db}-wal"), Path(f"{setup.db}-shm"))
        if path.exists()
    )
    log = setup.gateway.logs()
    assert "GET /admin/keys" in log or "POST /admin/keys" in log  # the access log was on
    for secret in setup.issued:
        assert secret.encode() not in stored
        assert secret[7:].encode() not in stored  # not even without its prefix
        assert secret not in log and secret[7:] not in log
    assert MASTER.encode() not in stored and MASTER not in log
    # What is stored is the hash and the display prefix, as documented.
    from turnout.server.access.secrets import secret_hash

    assert secret_hash(made["key"]).encode() in stored
    assert os.stat(setup.db).st_mode & 0o077 == 0  # the file is its owner's only
