"""The admin console in a real browser: headless Chromium (Debian's `chromium` package, which
`.ci/browser` installs) driven by Playwright, against a real `turnout serve` with a master key
and a SQLite store, with the official openai SDK (strict validation) as the gateway's client.

What a person does: logs in (a wrong password is refused first), makes a key and uses it with
the SDK, sees its spend on the Spend chart and the Keys page, blocks it and sees its next request
refused, opens a failed-over request and reads its attempts, sees the deployment that failed
cooling down (and the page refresh itself), and finds a prompt holding `<script>` shown as
text. Every page is photographed at a desktop's and a phone's width, in light and dark mode, into
`artifacts/screenshots/` (git-ignored). Every request the browser makes, the whole run long,
goes to the gateway's own origin: checked last.

The tests share one browser page and one gateway, in order: each takes up where the one before
left off (pytest runs a module's tests in file order).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright

from tests.conftest import ROOT, Gateway, gateway_env, start_gateway, stop_gateway
from tests.simulators import Error, Simulator

CHROMIUM = "/usr/bin/chromium"
MASTER = "tm-browser-master-0123456789abcdef"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
KEY_NAME = "ada-console"
EVIL = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


@dataclass
class Run:
    gateway: Gateway
    sim: Simulator
    context: BrowserContext
    page: Page
    urls: list[str] = field(default_factory=list)  # every URL the browser asked for
    problems: list[str] = field(default_factory=list)  # console errors, page errors
    failed: list[tuple[str, int]] = field(default_factory=list)  # replies of 400 and more
    found: dict[str, Any] = field(default_factory=dict)  # what one test hands the next

    def go(self, path: str) -> None:
        reply = self.page.goto(f"{self.gateway.url}{path}")
        assert reply is not None and reply.ok, (path, reply and reply.status)

    def sdk(self, key: str) -> OpenAI:
        return OpenAI(
            base_url=f"{self.gateway.url}/v1", api_key=key, max_retries=0, timeout=30,
            _strict_response_validation=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests use Debian's chromium package "
            "(`bash .ci/browser` installs it: apt-get install -y chromium)"
        )
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def run(
    playwright: Playwright,
    provider_sim_session: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("console")
    sim = provider_sim_session.url
    config = folder / "turnout.yaml"
    config.write_text(
        "store: sqlite:///turnout.db\n"
        "auth: {master_key: '${TURNOUT_MASTER_KEY}'}\n"
        # One failure cools a deployment down for long enough to photograph it.
        "router: {strategy: weighted, retries: 1, timeout_s: 30, cooldown_s: 300, "
        "allowed_fails: 1, backoff_s: 0.01}\n"
        "models:\n"
        "  claude:\n"
        "    deployments:\n"
        "      - {model: anthropic/claude-sonnet-4-5}\n"
        "  pair:\n"
        "    deployments:\n"
        f"      - {{model: groq/llama-3.3-70b-versatile, api_base: '{sim}/ui-a'}}\n"
        f"      - {{model: groq/llama-3.3-70b-versatile, api_base: '{sim}/ui-b', weight: 0}}\n",
        encoding="utf-8",
    )
    env = gateway_env(provider_sim_session)
    env["TURNOUT_MASTER_KEY"] = MASTER
    gateway = start_gateway(config, env, folder / "gateway.log")
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    context = browser.new_context(viewport=DESKTOP)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    page = context.new_page()
    state = Run(gateway, provider_sim_session, context, page)
    context.on("request", lambda request: state.urls.append(request.url))
    page.on("console", lambda msg: _console_message(state, msg.type, msg.text))
    context.on(
        "response",
        lambda reply: (
            state.failed.append((reply.url, reply.status)) if reply.status >= 400 else None
        ),
    )
    page.on("pageerror", lambda exc: state.problems.append(f"page error: {exc}"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield state
    finally:
        context.close()
        browser.close()
        stop_gateway(gateway)


def _console_message(run: Run, kind: str, text: str) -> None:
    # A reply's status is checked from the responses themselves (`failed`); anything else the
    # console reports as an error (a CSP violation, a script error) is a problem.
    if kind == "error" and not text.startswith("Failed to load resource"):
        run.problems.append(f"console {kind}: {text}")


def shoot(run: Run, name: str) -> None:
    """The current page at a desktop's and a phone's width, light and dark; at the phone's
    width nothing may be wider than the screen (tables turn into cards)."""
    page = run.page
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            suffix = "" if scheme == "light" else "-dark"
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}{suffix}.png"), full_page=True)
            if label == "phone":
                wide = page.evaluate("document.documentElement.scrollWidth")
                assert wide <= size["width"], f"{name}: {wide} px wide at a phone's width"
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(DESKTOP)


def test_a_wrong_password_is_refused_and_the_master_key_logs_in(run: Run) -> None:
    run.go("/ui/keys")
    page = run.page
    assert page.url.startswith(f"{run.gateway.url}/ui/login?next=")  # no session: the login
    shoot(run, "login")
    page.fill("#password", "not-the-master-key")
    page.click("button[type=submit]")
    page.wait_for_selector(".error")
    assert page.locator(".error").inner_text() == "Wrong password."
    assert not any(c["name"] == "turnout_console" for c in run.context.cookies())
    page.fill("#password", MASTER)
    page.click("button[type=submit]")
    page.wait_for_url(f"{run.gateway.url}/ui/keys")
    (session,) = [c for c in run.context.cookies() if c["name"] == "turnout_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"
    assert page.evaluate("document.cookie") == ""  # no script can read it


def test_a_key_made_in_the_console_works_with_the_sdk_and_its_spend_shows(run: Run) -> None:
    page = run.page
    page.click("text=New key")
    page.fill("input[name=name]", KEY_NAME)
    page.fill("input[name=team]", "research")
    page.fill("input[name=max_budget_usd]", "5")
    page.fill("input[name=budget_period]", "30d")
    page.fill("input[name=rpm]", "100")
    page.click("button:has-text('Create key')")
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("sk-tnt-")
    page.click("button[data-copy]")
    page.wait_for_selector("button[data-copy]:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    key_id = page.locator("a:has-text('Key settings')").get_attribute("href").rsplit("/", 1)[1]  # type: ignore[union-attr]
    run.found.update(secret=secret, key_id=key_id)

    with run.sdk(secret) as client:
        answer = client.responses.create(model="claude", input="How much does this cost?")
    assert answer.status == "completed" and answer.usage is not None
    cost = answer.usage.model_extra["cost"]  # type: ignore[index]
    assert cost > 0

    label = f"{KEY_NAME} ({key_id})"
    run.go("/ui/spend?group=key")
    titles = page.locator("figure.chart rect title").all_text_contents()
    assert any(f"· {label}: $" in t for t in titles), titles
    assert KEY_NAME in page.locator("figure.chart .legend").first.inner_text()
    row = page.locator("#spend-totals tbody tr", has_text=label)
    assert row.count() == 1 and row.locator("td").last.inner_text() != "$0"
    shoot(run, "spend")

    run.go("/ui/keys")
    spend = page.locator(f"tr[data-key='{key_id}'] .spend").inner_text()
    assert spend.startswith("$") and spend != "$0", spend
    assert page.locator(f"tr[data-key='{key_id}'] meter").count() == 1  # against its budget
    shoot(run, "keys")


def test_a_key_blocked_in_the_console_is_refused(run: Run) -> None:
    page = run.page
    key_id, secret = run.found["key_id"], run.found["secret"]
    run.go(f"/ui/keys/{key_id}")
    shoot(run, "key")
    page.click("button:has-text('Block')")
    dialog = page.locator("#confirm-dialog")
    dialog.wait_for(state="visible")
    assert "Block the key" in dialog.inner_text()
    page.click("#confirm-ok")
    page.wait_for_url(re.compile(r".*\?done=blocked$"))
    assert "The key is blocked" in page.locator(".notice").inner_text()
    with run.sdk(secret) as client, pytest.raises(openai.AuthenticationError) as caught:
        client.responses.create(model="claude", input="hi")
    assert caught.value.status_code == 401 and caught.value.code == "key_blocked"


def test_a_failed_over_request_shows_its_attempts(run: Run) -> None:
    run.sim.script("ui-a", Error(500))
    with run.sdk(MASTER) as client:
        raw = client.responses.with_raw_response.create(model="pair", input="fail over, please")
    assert raw.headers["x-turnout-attempts"] == "2"
    response_id = raw.parse().id
    page = run.page
    run.go("/ui/requests?model=pair")
    shoot(run, "requests")
    page.click(f"tr[data-id='{response_id}'] a")
    page.wait_for_url(f"{run.gateway.url}/ui/requests/{response_id}")
    rows = page.locator("#attempts tbody tr")
    assert rows.count() == 2
    first, second = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert "pair#0" in first and "server_error" in first  # the upstream's 500, as a 502
    assert rows.nth(0).locator(".badge.failed").count() == 1
    assert "pair#1" in second and "200" in second
    assert "fail over, please" in page.locator("#input-items").inner_text()
    page.click("#events summary")
    assert "response.completed" in page.locator("#events").inner_text()
    shoot(run, "request")


def test_the_deployments_page_shows_the_cooled_down_deployment_live(run: Run) -> None:
    page = run.page
    run.go("/ui/deployments")
    cooling = page.locator("tr[data-id='pair#0']")
    assert "cooling down" in cooling.inner_text() and "s left" in cooling.inner_text()
    assert "healthy" in page.locator("tr[data-id='pair#1']").inner_text()
    before = page.locator("#refreshed").get_attribute("data-at")
    assert before is not None
    # The page's script polled the JSON and redrew (not evaluated here: the CSP forbids eval).
    expect(page.locator("#refreshed")).not_to_have_attribute("data-at", before, timeout=10_000)
    assert "cooling down" in cooling.inner_text()
    shoot(run, "deployments")


def test_a_prompt_holding_a_script_is_shown_as_text(run: Run) -> None:
    with run.sdk(MASTER) as client:
        answer = client.responses.create(model="claude", input=EVIL)
    page = run.page
    run.go(f"/ui/requests/{answer.id}")
    items = page.locator("#input-items")
    assert EVIL in items.inner_text()
    assert items.locator("script").count() == 0 and items.locator("img").count() == 0
    assert page.title() != "pwned" and page.title().endswith("· Turnout")


def test_logging_out_ends_the_session(run: Run) -> None:
    page = run.page
    run.go("/ui/spend")
    page.click("button:has-text('Log out')")
    page.wait_for_url(f"{run.gateway.url}/ui/login")
    run.go("/ui/keys")
    assert page.url.startswith(f"{run.gateway.url}/ui/login")


def test_the_browser_asked_nothing_of_another_host(run: Run) -> None:
    origin = run.gateway.url + "/"
    assert run.urls, "no request was seen"
    strays = sorted({url for url in run.urls if not url.startswith(origin)})
    assert not strays, strays
    assert not run.problems, run.problems  # no CSP violation, no script error
    # The one refusal the browser saw is the wrong password's; every asset loaded.
    assert run.failed == [(f"{run.gateway.url}/ui/login", 401)], run.failed
    shots = sorted(p.name for p in Path(SCREENSHOTS).glob("*.png"))
    for name in ("login", "spend", "keys", "key", "requests", "request", "deployments"):
        for variant in ("desktop", "phone", "desktop-dark", "phone-dark"):
            assert f"{name}-{variant}.png" in shots
