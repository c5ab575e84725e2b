"""The admin console (server/console/) without a browser: its session, CSRF, login throttle and
form modules on their own (fake clocks), then the pages in process (Litestar's test client
over a memory store): who gets in, what each page shows, what a form changes (through
KeyAdmin, audited as `ui:master_key`), what is refused, and that user text stays text.
tests/test_browser_console.py drives the same console in headless Chromium.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.test_store_contract import priced
from turnout.engine.errors import ConfigError, RequestError
from turnout.engine.registry import MappingRegistry
from turnout.server.access.secrets import token_key_id
from turnout.server.app import create_app
from turnout.server.config import Deployment, ModelAlias, Settings, UiSettings, load_config
from turnout.server.console.charts import MAX_SERIES, nice_ceiling, stacked_bars
from turnout.server.console.csrf import csrf_ok, csrf_token, login_ok, login_token
from turnout.server.console.forms import form_values, key_body
from turnout.server.console.page_spend import spend_csv, spend_view
from turnout.server.console.routes import _safe_next
from turnout.server.console.security import CSP
from turnout.server.console.session import SESSION_COOKIE, Sessions
from turnout.server.console.throttle import LoginThrottle
from turnout.server.stores import MemoryStore
from turnout.server.stores.base import SpendPoint, SpendRow

MASTER = "mk-console-tests-0123456789"


class Clock:
    def __init__(self, now: float = 1_765_552_659.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- sessions -------------------------------------------------------------------------------------


def test_a_session_token_verifies_until_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(MASTER, ttl_s=600, clock=clock)
    session, token = sessions.issue()
    assert sessions.verify(token) == session
    assert session.expires_at - session.issued_at == 600
    assert MASTER not in token
    clock.now += 599
    assert sessions.verify(token) == session
    clock.now += 1
    assert sessions.verify(token) is None  # expired


def test_forged_tampered_or_foreign_tokens_are_refused() -> None:
    clock = Clock()
    sessions = Sessions(MASTER, ttl_s=600, clock=clock)
    _session, token = sessions.issue()
    payload, _dot, mac = token.rpartition(".")
    version, sid, issued, expires = payload.split(".")
    longer = f"{version}.{sid}.{issued}.{int(expires) + 86_400}.{mac}"  # a longer life, same MAC
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_key = Sessions("another-master-key-0123", ttl_s=600, clock=clock).issue()[1]
    for bad in (longer, flipped, other_key, "", "v1.x.1.2", "garbage", token + ".x", "x" * 300):
        assert sessions.verify(bad) is None, bad
    assert sessions.verify(None) is None
    # Signed for the future (a replica's clock far ahead): refused past a minute of skew.
    ahead = Sessions(MASTER, ttl_s=600, clock=Clock(clock.now + 3600)).issue()[1]
    assert sessions.verify(ahead) is None
    slightly = Sessions(MASTER, ttl_s=600, clock=Clock(clock.now + 30)).issue()[1]
    assert sessions.verify(slightly) is not None
    # A new master key ends every session.
    assert Sessions(MASTER + "-rotated", ttl_s=600, clock=clock).verify(token) is None


def test_ending_a_session_refuses_its_token_here() -> None:
    clock = Clock()
    sessions = Sessions(MASTER, ttl_s=600, clock=clock)
    session, token = sessions.issue()
    _other, other_token = sessions.issue()
    sessions.end(session)
    assert sessions.verify(token) is None
    assert sessions.verify(other_token) is not None
    clock.now += 601  # expired anyway: the denylist forgets it at the next logout
    sessions.end(_other)
    assert session.sid not in sessions._ended


def test_csrf_tokens_belong_to_their_session() -> None:
    sessions = Sessions(MASTER, ttl_s=600, clock=Clock())
    one, _ = sessions.issue()
    two, _ = sessions.issue()
    token = csrf_token(sessions, one)
    assert csrf_ok(sessions, one, token)
    assert not csrf_ok(sessions, two, token)
    assert not csrf_ok(sessions, one, None) and not csrf_ok(sessions, one, "")
    assert not csrf_ok(sessions, one, token[:-1])
    assert token != sessions.mac("session", one.sid)  # purposes never share a MAC
    assert login_ok(sessions, "nonce-1", login_token(sessions, "nonce-1"))
    assert not login_ok(sessions, "nonce-2", login_token(sessions, "nonce-1"))
    assert not login_ok(sessions, None, login_token(sessions, "nonce-1"))


def test_the_login_throttle_refuses_after_repeated_failures_then_forgives() -> None:
    clock = Clock(100.0)
    throttle = LoginThrottle(max_failures=3, window_s=60, delay_s=0, clock=clock)
    for _ in range(3):
        assert throttle.wait_s("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == pytest.approx(60)
    assert throttle.wait_s("10.0.0.2") == 0  # per address
    clock.now += 61
    assert throttle.wait_s("10.0.0.1") == 0  # the failures left the window
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    assert "10.0.0.1" not in throttle._failures


def test_the_next_page_after_login_stays_in_the_console() -> None:
    assert _safe_next("/ui/keys?x=1") == "/ui/keys?x=1"
    for bad in (None, "", "https://evil.test/", "//evil.test/ui/", "/ui//evil.test", "/admin",
                "/ui/\\evil", "/ui/\nx"):  # fmt: skip
        assert _safe_next(bad) == "/ui/spend", bad


# -- forms, charts, spend view --------------------------------------------------------------------


def test_key_forms_become_admin_bodies() -> None:
    form = {
        "name": " ada ", "team": "", "models": "claude, openai/*  x", "max_budget_usd": "2.5",
        "budget_period": "30d", "rpm": "60", "tpm": "", "max_background": "0",
        "expires": "2030-01-02", "unsupported_tools": "", "csrf": "t",
    }  # fmt: skip
    made = key_body(form, creating=True)
    assert made == {
        "name": "ada", "models": ["claude", "openai/*", "x"], "max_budget_usd": 2.5,
        "budget_period": "30d", "rpm": 60, "max_background": 0, "expires_at": 1893542400,
    }  # fmt: skip
    edited = key_body(form, creating=False)
    assert edited["team"] is None and edited["tpm"] is None and edited["unsupported_tools"] is None
    assert key_body({"rpm": "7"}, creating=False) == {"rpm": 7}  # what is not in the form stays
    for field, text in (("rpm", "sixty"), ("max_budget_usd", "$5"), ("expires", "tomorrow")):
        with pytest.raises(RequestError) as caught:
            key_body({field: text}, creating=True)
        assert caught.value.status == 400 and caught.value.param == field
    shown = form_values({**{f: None for f in ("name", "team", "tpm")}, "models": ["a", "b"],
                         "max_budget_usd": 5.0, "expires_at": 1893542400, "rpm": 60})  # fmt: skip
    assert shown["models"] == "a, b" and shown["max_budget_usd"] == "5"
    assert shown["expires"] == "2030-01-02" and shown["rpm"] == "60" and shown["name"] == ""


def test_nice_ceilings() -> None:
    assert [nice_ceiling(v) for v in (0, 0.7, 1, 1.2, 3, 7, 12, 0.0013)] == [
        1.0, 1.0, 1, 2, 5, 10, 20, 0.002
    ]  # fmt: skip


def test_stacked_bars_stack_by_group_and_fold_the_smallest() -> None:
    values = {f"g{i}": {0: float(i + 1), 60: 1.0} for i in range(MAX_SERIES + 2)}
    chart = stacked_bars("t", [0, 60, 120], values, fmt=str, bucket_label=str)
    assert [entry.label for entry in chart.legend][:2] == ["g9", "g8"]  # largest first
    assert chart.legend[-1].label == "2 more" and chart.legend[-1].series == MAX_SERIES
    assert len(chart.bars) == 2 * (MAX_SERIES + 1)  # bucket 120 is empty
    first = [b for b in chart.bars if b.title.startswith("0 ·")]
    assert first[0].title == "0 · g9: 10.0" and first[0].y + first[0].h == chart.bottom
    assert all(b.y >= 0 for b in chart.bars)
    assert stacked_bars("t", [0], {}, fmt=str, bucket_label=str).empty


def test_spend_view_defaults_caps_and_order() -> None:
    now = 1_765_552_659  # 2025-12-12 15:17:39 UTC
    view = spend_view({}, now)
    assert (view.group, view.bucket, view.first, view.last) == (
        "model", "day", "2025-12-06", "2025-12-12"
    )  # fmt: skip
    assert view.end - view.start == 7 * 86_400
    hourly = spend_view({"bucket": "hour", "group": "key"}, now)
    assert (hourly.first, hourly.last, hourly.query.group_by) == (
        "2025-12-12", "2025-12-12", "api_key"
    )  # fmt: skip
    capped = spend_view({"bucket": "hour", "from": "2025-01-01", "to": "2025-12-12"}, now)
    assert capped.first == "2025-11-29" and capped.note is not None
    swapped = spend_view({"from": "2025-12-10", "to": "2025-12-01", "group": "nope"}, now)
    assert (swapped.first, swapped.last, swapped.group) == ("2025-12-01", "2025-12-10", "model")


def test_spend_csv_defuses_formulas() -> None:
    points = [SpendPoint(86_400, SpendRow("=HYPERLINK(1)", 2, 10, 0, 0, 5, 0, 0.5, 0))]
    text = spend_csv(points, lambda k: k or "(none)").decode()
    lines = text.splitlines()
    assert lines[0].startswith("bucket_start_utc,group,group_id,requests")
    assert lines[1] == "1970-01-02T00:00:00Z,'=HYPERLINK(1),'=HYPERLINK(1),2,10,0,0,5,0,0.5,0"


# -- the config switch ----------------------------------------------------------------------------


def test_the_console_is_on_with_a_master_key_and_can_be_turned_off(tmp_path: Path) -> None:
    assert UiSettings().on("mk") and not UiSettings().on(None)
    assert not UiSettings(enabled=False).on("mk") and not UiSettings(enabled=True).on(None)
    config = tmp_path / "turnout.yaml"
    config.write_text(
        "auth: {master_key: mk-0123456789}\n"
        "ui: {enabled: false, secure_cookie: always, session_ttl_s: 3600}\n"
    )
    ui = load_config(str(config), {}).ui
    assert (ui.enabled, ui.secure_cookie, ui.session_ttl_s) == (False, "always", 3600)
    config.write_text("ui: {enabled: true}\n")
    with pytest.raises(ConfigError, match=r"ui\.enabled: the admin console needs auth.master_key"):
        load_config(str(config), {})
    config.write_text("auth: {master_key: mk}\nui: {secure_cookie: sometimes}\n")
    with pytest.raises(ConfigError, match="secure_cookie"):
        load_config(str(config), {})


# -- the pages, in process ------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry() -> MappingRegistry:
    return MappingRegistry.load(Settings().mappings_dir)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def settings(**changes: Any) -> Settings:
    models = {"pool": ModelAlias(deployments=[Deployment(model="acme/one"),
                                              Deployment(model="acme/two", weight=0)])}  # fmt: skip
    base: dict[str, Any] = {"store": "memory://", "master_key": MASTER, "models": models}
    return Settings(**{**base, **changes})


@pytest.fixture
async def client(
    registry: MappingRegistry, store: MemoryStore
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(settings(), registry=registry, store=store)
    async with AsyncTestClient(app=app) as c:
        yield c


_TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _TOKEN.search(html)
    assert found is not None, html[:2000]
    return found.group(1)


async def login(client: AsyncTestClient[Litestar], password: str = MASTER) -> Any:
    page = await client.get("/ui/login")
    assert page.status_code == 200
    return await client.post(
        "/ui/login", data={"csrf": csrf_of(page.text), "password": password, "next": "/ui/keys"},
        follow_redirects=False,
    )  # fmt: skip


async def logged_in(client: AsyncTestClient[Litestar]) -> str:
    """Log in; the CSRF token of the session."""
    reply = await login(client)
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/keys", reply.text
    return csrf_of((await client.get("/ui/keys")).text)


PAGES = ("/ui/spend", "/ui/keys", "/ui/keys/new", "/ui/deployments", "/ui/requests")


@pytest.mark.anyio
async def test_every_page_needs_a_session(client: AsyncTestClient[Litestar]) -> None:
    for path in PAGES:
        reply = await client.get(f"{path}?x=1", follow_redirects=False)
        assert reply.status_code == 303, path
        assert reply.headers["location"] == f"/ui/login?next={path.replace('/', '%2F')}%3Fx%3D1"
    assert (await client.get("/ui/deployments.json")).status_code == 401
    assert (await client.get("/ui/spend.csv", follow_redirects=False)).status_code == 303
    refused = await client.post("/ui/keys", data={"name": "x"})
    assert refused.status_code == 403 and "log in again" in refused.text


@pytest.mark.anyio
async def test_login_sets_a_strict_http_only_cookie_and_pages_carry_security_headers(
    client: AsyncTestClient[Litestar],
) -> None:
    reply = await login(client)
    assert reply.status_code == 303
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=v1.")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"):
        assert flag in cookie
    assert "Secure" not in cookie  # plain http here (ui.secure_cookie: auto)
    assert MASTER not in cookie
    for path in PAGES:
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-security-policy"] == CSP
        assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
        assert re.search(r"(src|href)=\"(https?:)?//", page.text) is None  # no other host
    static = await client.get("/ui/static/console.js")
    assert static.status_code == 200 and static.headers["content-type"].startswith(
        "text/javascript"
    )
    assert (await client.get("/ui/static/../app.py")).status_code == 404


@pytest.mark.anyio
async def test_https_gets_a_secure_cookie(registry: MappingRegistry, store: MemoryStore) -> None:
    app = create_app(
        settings(ui=UiSettings(secure_cookie="always")), registry=registry, store=store
    )
    async with AsyncTestClient(app=app) as c:
        assert "; Secure" in (await login(c)).headers["set-cookie"]
        assert "; Secure" in (await c.get("/ui/login")).headers["set-cookie"]


@pytest.mark.anyio
async def test_a_wrong_password_is_refused_and_repeated_guesses_are_throttled(
    client: AsyncTestClient[Litestar],
) -> None:
    console = client.app.state.console
    console.throttle = LoginThrottle(max_failures=2, window_s=60, delay_s=0)
    for _ in range(2):
        wrong = await login(client, "not-the-master-key")
        assert wrong.status_code == 401 and "Wrong password" in wrong.text
        assert f"{SESSION_COOKIE}=" not in wrong.headers.get("set-cookie", "")
    blocked = await login(client, MASTER)  # even the right one, while throttled
    assert blocked.status_code == 429 and "Too many failed logins" in blocked.text
    assert (await client.get("/ui/keys", follow_redirects=False)).status_code == 303


@pytest.mark.anyio
async def test_a_login_post_without_its_form_token_is_refused(
    client: AsyncTestClient[Litestar],
) -> None:
    reply = await client.post("/ui/login", data={"password": MASTER}, follow_redirects=False)
    assert reply.status_code == 403
    assert f"{SESSION_COOKIE}=" not in reply.headers.get("set-cookie", "")


@pytest.mark.anyio
async def test_forged_and_expired_session_cookies_are_sent_to_the_login(
    client: AsyncTestClient[Litestar],
) -> None:
    expired = Sessions(MASTER, ttl_s=60, clock=Clock(1_000_000)).issue()[1]
    forged = Sessions("not-the-master-key-012", ttl_s=3600).issue()[1]
    for token in (expired, forged, "v1.abc.1.99999999999.bad"):
        client.cookies.set(SESSION_COOKIE, token, path="/ui")
        reply = await client.get("/ui/keys", follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/ui/login")


@pytest.mark.anyio
async def test_a_post_without_or_with_a_wrong_csrf_token_is_403_and_changes_nothing(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    token = await logged_in(client)
    for data in ({"name": "x"}, {"name": "x", "csrf": "wrong"}, {"name": "x", "csrf": ""}):
        reply = await client.post("/ui/keys", data=data)
        assert reply.status_code == 403 and "security token" in reply.text
    assert await store.list_keys() == []
    made = await client.post("/ui/keys", data={"name": "x", "csrf": token})
    assert made.status_code == 200 and len(await store.list_keys()) == 1


@pytest.mark.anyio
async def test_logout_ends_the_session(client: AsyncTestClient[Litestar]) -> None:
    token = await logged_in(client)
    kept = client.cookies.get(SESSION_COOKIE)
    reply = await client.post("/ui/logout", data={"csrf": token}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
    assert "Max-Age=0" in reply.headers["set-cookie"]
    assert kept is not None
    client.cookies.set(SESSION_COOKIE, kept, path="/ui")  # a copy of the old cookie
    assert (await client.get("/ui/keys", follow_redirects=False)).status_code == 303


@pytest.mark.anyio
async def test_a_logout_needs_its_token_unless_the_session_is_gone(
    client: AsyncTestClient[Litestar],
) -> None:
    await logged_in(client)
    forced = await client.post("/ui/logout", data={}, follow_redirects=False)
    assert forced.status_code == 403  # another site cannot log the operator out
    assert (await client.get("/ui/keys", follow_redirects=False)).status_code == 200
    client.cookies.clear()
    gone = await client.post("/ui/logout", data={}, follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/ui/login"


@pytest.mark.anyio
async def test_keys_are_made_changed_blocked_and_revoked_through_key_admin(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    token = await logged_in(client)
    made = await client.post(
        "/ui/keys", data={"csrf": token, "name": "ada <b>", "team": "research", "rpm": "60",
                          "max_budget_usd": "5", "budget_period": "30d"},
    )  # fmt: skip
    assert made.status_code == 200
    secret = re.search(r'<code id="new-secret">([^<]+)</code>', made.text)
    assert secret is not None and secret.group(1).startswith("sk-tnt-")
    assert "ada &lt;b&gt;" in made.text and "ada <b>" not in made.text
    (key,) = await store.list_keys()
    assert (key.name, key.team, key.rpm, key.max_budget_usd) == ("ada <b>", "research", 60, 5.0)
    listing = (await client.get("/ui/keys")).text
    assert key.id in listing and secret.group(1) not in listing and "<meter" in listing
    assert secret.group(1) not in (await client.get(f"/ui/keys/{key.id}")).text

    edit = {"csrf": token, "name": "ada", "team": "research", "models": "", "rpm": "",
            "tpm": "1000", "max_budget_usd": "5", "budget_period": "30d", "max_background": "",
            "expires": "", "unsupported_tools": ""}  # fmt: skip
    saved = await client.post(f"/ui/keys/{key.id}", data=edit, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].endswith("?done=saved")
    changed = await store.get_key(key.id)
    assert changed is not None and (changed.name, changed.rpm, changed.tpm) == ("ada", None, 1000)
    bad = await client.post(f"/ui/keys/{key.id}", data={**edit, "rpm": "0"})
    assert bad.status_code == 400 and "rpm" in bad.text

    # Block: a confirmation page first (no script), then the change.
    asked = await client.post(f"/ui/keys/{key.id}/block", data={"csrf": token, "blocked": "true"})
    assert asked.status_code == 200 and 'name="confirmed" value="yes"' in asked.text
    assert (await store.get_key(key.id)).blocked is False  # type: ignore[union-attr]
    auth = {"authorization": f"Bearer {secret.group(1)}"}
    assert (await client.get("/v1/models", headers=auth)).status_code == 200
    done = await client.post(
        f"/ui/keys/{key.id}/block", data={"csrf": token, "blocked": "true", "confirmed": "yes"},
        follow_redirects=False,
    )  # fmt: skip
    assert done.status_code == 303
    assert (await client.get("/v1/models", headers=auth)).status_code == 401  # at once
    page = await client.get(done.headers["location"])
    assert "The key is blocked" in page.text and 'class="badge blocked"' in page.text
    unblocked = await client.post(
        f"/ui/keys/{key.id}/block", data={"csrf": token, "blocked": "false"},
        follow_redirects=False,
    )  # fmt: skip
    assert unblocked.status_code == 303  # no confirmation needed to give access back
    assert (await client.get("/v1/models", headers=auth)).status_code == 200

    asked = await client.post(f"/ui/keys/{key.id}/revoke", data={"csrf": token})
    assert "cannot be undone" in asked.text
    revoked = await client.post(
        f"/ui/keys/{key.id}/revoke", data={"csrf": token, "confirmed": "yes"},
        follow_redirects=False,
    )  # fmt: skip
    assert revoked.status_code == 303
    assert (await client.get("/v1/models", headers=auth)).status_code == 401
    assert 'class="badge revoked"' in (await client.get(f"/ui/keys/{key.id}")).text

    entries = await store.audit_log()
    assert {e.actor for e in entries} == {"ui:master_key"}
    assert [e.action for e in reversed(entries)] == [
        "key.create", "key.update", "key.update", "key.update", "key.revoke"
    ]  # fmt: skip
    missing = await client.get("/ui/keys/key_000000000000000000000000")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]


@pytest.mark.anyio
async def test_a_refused_key_form_shows_why_and_keeps_what_was_typed(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    token = await logged_in(client)
    reply = await client.post("/ui/keys", data={"csrf": token, "name": "n1", "rpm": "sixty"})
    assert reply.status_code == 400 and "expected a whole number" in reply.text
    assert 'value="n1"' in reply.text and 'value="sixty"' in reply.text
    reply = await client.post("/ui/keys", data={"csrf": token, "team": "no spaces"})
    assert reply.status_code == 400 and "team" in reply.text
    assert await store.list_keys() == []


@pytest.mark.anyio
async def test_spend_shows_each_group_on_the_chart_the_table_and_the_csv(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    token = await logged_in(client)
    await client.post("/ui/keys", data={"csrf": token, "name": "spender"})
    (key,) = await store.list_keys()
    day = 1_765_497_600  # 2025-12-12 00:00 UTC
    await store.put(priced("s1", created_at=day + 3600, cost=1.25, api_key_id=key.id))
    await store.put(priced("s2", created_at=day + 7200, cost=0.5,
                           api_key_id=token_key_id(MASTER)))  # fmt: skip
    query = "group=key&bucket=day&from=2025-12-10&to=2025-12-12"
    page = (await client.get(f"/ui/spend?{query}")).text
    label = f"spender ({key.id})"
    assert f"<title>2025-12-12 · {label}: $1.25</title>" in page
    assert "<title>2025-12-12 · master key: $0.5</title>" in page
    assert f'<td data-label="key">{label}</td>' in page and "$1.75" in page  # the total
    hourly = (
        await client.get("/ui/spend?group=model&bucket=hour&from=2025-12-12&to=2025-12-12")
    ).text
    assert "<title>12-12 01:00 · claude-sonnet-4: $1.25</title>" in hourly
    csv = await client.get(f"/ui/spend.csv?{query}")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    assert f"2025-12-12T00:00:00Z,{label},{key.id},1,100,40,5,20,8,1.25,0" in csv.text
    keys_page = (await client.get("/ui/keys")).text
    assert "$1.25" in keys_page  # the key's spend in its period


@pytest.mark.anyio
async def test_requests_are_listed_filtered_and_shown_with_user_text_as_text(
    client: AsyncTestClient[Litestar], store: MemoryStore
) -> None:
    await logged_in(client)
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    attempts = [
        {"deployment": "acme/one", "deployment_id": "pool#0", "provider": "acme", "status": 500,
         "code": "server_error", "ok": False, "latency_ms": 12.5},
        {"deployment": "acme/two", "deployment_id": "pool#1", "provider": "acme", "status": 200,
         "code": None, "ok": True, "latency_ms": 80.0},
    ]  # fmt: skip
    output = [{"type": "message", "role": "assistant", "id": "msg_1",
               "content": [{"type": "output_text", "text": f"echo {evil}"}]}]  # fmt: skip
    await store.put(priced(
        "resp_xss", created_at=1_765_552_000, attempts=attempts, duration_ms=93.0,
        input_items=[{"id": "in_1", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": evil}]}],
        response={"id": "resp_xss", "output": output, "instructions": evil},
        events=[{"type": "response.created", "sequence_number": 0}],
    ))  # fmt: skip
    await store.put(priced("resp_failed", created_at=1_765_552_100, status="failed"))
    listing = (await client.get("/ui/requests")).text
    assert listing.index("resp_failed") < listing.index("resp_xss")  # newest first
    assert "93 ms" in listing
    failed = (await client.get("/ui/requests?status=failed")).text
    assert "resp_failed" in failed and "resp_xss" not in failed
    page = await client.get("/ui/requests/resp_xss")
    assert page.status_code == 200
    assert evil not in page.text and "<img" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "pool#0" in page.text and "server_error" in page.text and "pool#1" in page.text
    assert "response.created" in page.text
    assert (await client.get("/ui/requests/resp_none")).status_code == 404


@pytest.mark.anyio
async def test_deployments_page_and_its_json(client: AsyncTestClient[Litestar]) -> None:
    await logged_in(client)
    page = (await client.get("/ui/deployments")).text
    assert 'data-id="pool#0"' in page and 'data-id="pool#1"' in page and "healthy" in page
    state = (await client.get("/ui/deployments.json")).json()
    assert [d["id"] for d in state["deployments"]] == ["pool#0", "pool#1"]
    assert state["strategy"] == "weighted"


@pytest.mark.anyio
@pytest.mark.parametrize("changes", [{"ui": UiSettings(enabled=False)}, {"master_key": None}])
async def test_the_console_can_be_off(
    registry: MappingRegistry, store: MemoryStore, changes: dict[str, Any]
) -> None:
    app = create_app(settings(**changes), registry=registry, store=store)
    async with AsyncTestClient(app=app) as c:
        for path in ("/ui", "/ui/login", "/ui/spend"):
            assert (await c.get(path, follow_redirects=False)).status_code == 404
