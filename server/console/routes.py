"""The console's HTTP side: `/ui/*`, thin Litestar handlers over the page modules.

Every page needs a session (else a redirect to the login page); every POST needs the session
and its CSRF token (else a 403 page); every change is a `KeyAdmin` call with actor
`ui:master_key`, the code behind the admin API. Replies are `BodyReply`s with the console's
security headers (`security.py`); errors of `KeyAdmin` become an HTML page, not JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlencode

import orjson
from litestar import MediaType, Request, Response, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.types import ASGIApp

from turnout.engine.errors import RequestError
from turnout.server.access.auth import Authenticator
from turnout.server.access.key_admin import KeyAdmin
from turnout.server.console.csrf import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    csrf_ok,
    csrf_token,
    login_nonce,
    login_ok,
    login_token,
)
from turnout.server.console.forms import form_values, key_body, parse_form
from turnout.server.console.page_deployments import deployments_state
from turnout.server.console.page_keys import DONE, keys_context, labeller
from turnout.server.console.page_requests import request_context, requests_context, requests_view
from turnout.server.console.page_spend import GROUPS, spend_context, spend_csv, spend_view
from turnout.server.console.render import html, render, static_reply
from turnout.server.console.security import cookie, expired_cookie, page_headers
from turnout.server.console.session import SESSION_COOKIE, Session
from turnout.server.console.state import ACTOR, Console
from turnout.server.gateway import Gateway
from turnout.server.replies import BodyReply
from turnout.server.stores.keys import KeyStore

__all__ = ["console_router"]

AnyRequest = Request[Any, Any, Any]
_HOME = "/ui/spend"
_LOGIN_FORM_TTL_S = 3600


def _console(request: AnyRequest) -> Console:
    return cast(Console, request.app.state.console)


def _gateway(request: AnyRequest) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def _admin(request: AnyRequest) -> KeyAdmin:
    auth: Authenticator = request.app.state.auth
    return KeyAdmin(_gateway(request).store, actor=ACTOR, on_change=auth.invalidate)


async def _label(request: AnyRequest) -> Callable[[str | None], str]:
    store = _gateway(request).store
    admin = _admin(request) if isinstance(store, KeyStore) else None
    return await labeller(admin, _console(request).master_key)


def _redirect(location: str, headers: dict[str, str] | None = None) -> BodyReply:
    return BodyReply(b"", 303, page_headers({"location": location, **(headers or {})}), b"")


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a console path only (no other host, no scheme)."""
    if (
        target
        and target.startswith("/ui/")
        and "//" not in target
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return _HOME


def _to_login(request: AnyRequest) -> BodyReply:
    """A page asked without a session: to the login page, which comes back here after."""
    here = request.url.path
    if request.url.query:
        here += "?" + request.url.query
    return _redirect("/ui/login?" + urlencode({"next": here}))


def _client(request: AnyRequest) -> str:
    return request.client.host if request.client is not None else "unknown"


def _page(
    request: AnyRequest, session: Session, template: str, *, status: int = 200, **context: Any
) -> BodyReply:
    token = csrf_token(_console(request).sessions, session)
    return html(template, status, csrf=token, **context)


def _refused(request: AnyRequest, message: str, status: int = 403) -> BodyReply:
    session = _console(request).session(request.cookies)
    token = None if session is None else csrf_token(_console(request).sessions, session)
    return html("error.html", status, csrf=token, nav=None, title="Refused", message=message)


async def _change(request: AnyRequest) -> tuple[Session, dict[str, str]] | BodyReply:
    """The session and the form of a POST that changes something, or the 403 page."""
    console = _console(request)
    form = parse_form(await request.body())
    session = console.session(request.cookies)
    if session is None:
        return _refused(request, "Your session has ended: log in again.")
    if not csrf_ok(console.sessions, session, form.get(CSRF_FIELD)):
        return _refused(
            request, "This form is out of date (its security token did not match): reload the "
            "page and try again.",
        )  # fmt: skip
    return session, form


# -- login, logout, static files ----------------------------------------------------------------


def _login_form(
    request: AnyRequest, *, error: str | None = None, status: int = 200, target: str | None = None
) -> BodyReply:
    console = _console(request)
    nonce = login_nonce()
    set_cookie = cookie(
        LOGIN_COOKIE, nonce, max_age=_LOGIN_FORM_TTL_S, secure=console.secure(request.scope)
    )
    return html(
        "login.html", status, {"set-cookie": set_cookie}, csrf=None, nav=None, title="Log in",
        login_token=login_token(console.sessions, nonce), error=error,
        next=_safe_next(target or request.query_params.get("next")),
    )  # fmt: skip


@get("/")
async def index(request: AnyRequest) -> ASGIApp:
    return _redirect(_HOME)


@get("/login")
async def login_page(request: AnyRequest) -> ASGIApp:
    if _console(request).session(request.cookies) is not None:
        return _redirect(_safe_next(request.query_params.get("next")))
    return _login_form(request)


@post("/login", status_code=303)
async def login(request: AnyRequest) -> ASGIApp:
    console = _console(request)
    form = parse_form(await request.body())
    target = form.get("next")
    if not login_ok(console.sessions, request.cookies.get(LOGIN_COOKIE), form.get(CSRF_FIELD)):
        message = "The login form expired: try again."
        return _login_form(request, error=message, status=403, target=target)
    client = _client(request)
    wait = console.throttle.wait_s(client)
    if wait > 0:
        message = f"Too many failed logins: try again in {math.ceil(wait)} s."
        return _login_form(request, error=message, status=429, target=target)
    password = form.get("password", "").encode()
    if not hmac.compare_digest(password, console.master_key.encode()):
        console.throttle.failed(client)
        await asyncio.sleep(console.throttle.delay_s)  # each wrong guess costs its sender
        return _login_form(request, error="Wrong password.", status=401, target=target)
    console.throttle.succeeded(client)
    _session, token = console.sessions.issue()
    secure = console.secure(request.scope)
    set_cookie = cookie(SESSION_COOKIE, token, max_age=console.sessions.ttl_s, secure=secure)
    return _redirect(_safe_next(target), {"set-cookie": set_cookie})


@post("/logout", status_code=303)
async def logout(request: AnyRequest) -> ASGIApp:
    console = _console(request)
    cleared = {"set-cookie": expired_cookie(SESSION_COOKIE, secure=console.secure(request.scope))}
    if console.session(request.cookies) is None:  # ended already: nothing to protect
        return _redirect("/ui/login", cleared)
    gate = await _change(request)
    if isinstance(gate, BodyReply):
        return gate
    console.sessions.end(gate[0])
    return _redirect("/ui/login", cleared)


@get("/static/{name:str}")
async def static_file(name: FromPath[str]) -> ASGIApp:
    reply = static_reply(name)
    if reply is None:
        raise NotFoundException()
    return reply


# -- spend ----------------------------------------------------------------------------------------


@get("/spend")
async def spend_page(request: AnyRequest) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    view = spend_view(request.query_params, time.time())
    context = await spend_context(_gateway(request).store, view, await _label(request))
    return _page(
        request, session, "spend.html", nav="spend", title="Spend", groups=list(GROUPS),
        csv_url="/ui/spend.csv?" + urlencode(view.params()), **context,
    )  # fmt: skip


@get("/spend.csv")
async def spend_download(request: AnyRequest) -> ASGIApp:
    if _console(request).session(request.cookies) is None:
        return _to_login(request)
    view = spend_view(request.query_params, time.time())
    points = await _gateway(request).store.spend_series(view.query, view.bucket_s)
    body = spend_csv(points, await _label(request))
    name = f"turnout-spend-{view.group}-{view.bucket}-{view.first}-{view.last}.csv"
    headers = page_headers({"content-disposition": f'attachment; filename="{name}"'})
    return BodyReply(body, 200, headers, b"text/csv; charset=utf-8")


# -- keys -----------------------------------------------------------------------------------------


@get("/keys")
async def keys_page(request: AnyRequest) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    context = await keys_context(_admin(request))
    return _page(request, session, "keys.html", nav="keys", title="Keys", **context)


@get("/keys/new")
async def new_key_page(request: AnyRequest) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    return _page(
        request, session, "key_new.html", nav="keys", title="New key", values={}, error=None
    )


@post("/keys", status_code=200)
async def create_key(request: AnyRequest) -> ASGIApp:
    gate = await _change(request)
    if isinstance(gate, BodyReply):
        return gate
    session, form = gate
    try:
        made = await _admin(request).create_key(key_body(form, creating=True))
    except RequestError as exc:
        return _page(
            request, session, "key_new.html", status=exc.status, nav="keys", title="New key",
            values=form, error=exc.message,
        )  # fmt: skip
    # The secret is in this reply only (no-store, like every page), never in a URL.
    return _page(request, session, "key_created.html", nav="keys", title="Key made", key=made)


async def _key_page(
    request: AnyRequest, session: Session, key_id: str, *, error: str | None = None,
    status: int = 200, values: dict[str, str] | None = None,
) -> BodyReply:  # fmt: skip
    key = await _admin(request).key(key_id)
    notice = DONE.get(request.query_params.get("done") or "")
    return _page(
        request, session, "key.html", status=status, nav="keys", title=key.get("name") or key_id,
        key=key, values=values if values is not None else form_values(key), error=error,
        notice=notice,
    )  # fmt: skip


@get("/keys/{key_id:str}")
async def key_page(request: AnyRequest, key_id: FromPath[str]) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    return await _key_page(request, session, key_id)


@post("/keys/{key_id:str}", status_code=303)
async def update_key(request: AnyRequest, key_id: FromPath[str]) -> ASGIApp:
    gate = await _change(request)
    if isinstance(gate, BodyReply):
        return gate
    session, form = gate
    try:
        await _admin(request).update_key(key_id, key_body(form, creating=False))
    except RequestError as exc:
        if exc.status == 404:
            raise
        return await _key_page(
            request, session, key_id, error=exc.message, status=exc.status, values=form
        )
    return _redirect(f"/ui/keys/{key_id}?done=saved")


def _confirm(
    request: AnyRequest, session: Session, form: dict[str, str], *, action: str, question: str,
    button: str,
) -> BodyReply | None:  # fmt: skip
    """The confirmation page for a POST not yet confirmed (the page's script asks in a
    dialog and sends `confirmed=yes` at once; without scripts this page asks)."""
    if form.get("confirmed") == "yes":
        return None
    fields = {k: v for k, v in form.items() if k not in (CSRF_FIELD, "confirmed")}
    return _page(
        request, session, "confirm.html", nav="keys", title="Confirm", action=action,
        question=question, button=button, fields=fields, back=action.rpartition("/")[0],
    )  # fmt: skip


@post("/keys/{key_id:str}/block", status_code=303)
async def block_key(request: AnyRequest, key_id: FromPath[str]) -> ASGIApp:
    gate = await _change(request)
    if isinstance(gate, BodyReply):
        return gate
    session, form = gate
    blocked = form.get("blocked") != "false"
    if blocked:
        asked = _confirm(
            request, session, form, action=f"/ui/keys/{key_id}/block", button="Block",
            question=f"Block the key {key_id}? Its requests are refused until it is unblocked.",
        )  # fmt: skip
        if asked is not None:
            return asked
    try:
        await _admin(request).update_key(key_id, {"blocked": blocked})
    except RequestError as exc:
        if exc.status == 404:
            raise
        return await _key_page(request, session, key_id, error=exc.message, status=exc.status)
    return _redirect(f"/ui/keys/{key_id}?done={'blocked' if blocked else 'unblocked'}")


@post("/keys/{key_id:str}/revoke", status_code=303)
async def revoke_key(request: AnyRequest, key_id: FromPath[str]) -> ASGIApp:
    gate = await _change(request)
    if isinstance(gate, BodyReply):
        return gate
    session, form = gate
    asked = _confirm(
        request, session, form, action=f"/ui/keys/{key_id}/revoke", button="Revoke",
        question=f"Revoke the key {key_id}? This cannot be undone.",
    )  # fmt: skip
    if asked is not None:
        return asked
    await _admin(request).revoke_key(key_id)
    return _redirect(f"/ui/keys/{key_id}?done=revoked")


# -- deployments ----------------------------------------------------------------------------------


@get("/deployments")
async def deployments_page(request: AnyRequest) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    state = deployments_state(_gateway(request))
    return _page(
        request, session, "deployments.html", nav="deployments", title="Deployments", **state
    )


@get("/deployments.json")
async def deployments_json(request: AnyRequest) -> ASGIApp:
    """What the page's script polls; a 401 when the session ended (the script then reloads,
    which leads to the login page)."""
    if _console(request).session(request.cookies) is None:
        return BodyReply(b'{"error": "login"}', 401, page_headers())
    state = deployments_state(_gateway(request))
    return BodyReply(orjson.dumps(state), 200, page_headers())


# -- requests -------------------------------------------------------------------------------------


@get("/requests")
async def requests_page(request: AnyRequest) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    view = requests_view(request.query_params)
    context = await requests_context(_gateway(request).store, view, await _label(request))
    store = _gateway(request).store
    keys = (await _admin(request).list_keys())["data"] if isinstance(store, KeyStore) else []
    return _page(
        request, session, "requests.html", nav="requests", title="Requests", keys=keys, **context
    )


@get("/requests/{response_id:str}")
async def request_page(request: AnyRequest, response_id: FromPath[str]) -> ASGIApp:
    session = _console(request).session(request.cookies)
    if session is None:
        return _to_login(request)
    context = await request_context(_gateway(request).store, response_id, await _label(request))
    if context is None:
        raise RequestError(
            404, f"No stored response with id '{response_id}' (or it was deleted).",
            code="not_found",
        )  # fmt: skip
    return _page(request, session, "request.html", nav="requests", title=response_id, **context)


def _error_page(request: AnyRequest, exc: RequestError) -> Response[bytes]:
    """KeyAdmin's and the pages' errors as an HTML page (the API's are JSON)."""
    console = _console(request)
    session = console.session(request.cookies)
    token = None if session is None else csrf_token(console.sessions, session)
    body = render("error.html", csrf=token, nav=None, title="Error", message=exc.message)
    return Response(
        body.encode(), status_code=exc.status, media_type=MediaType.HTML, headers=page_headers()
    )


def console_router() -> Router:
    return Router(
        path="/ui",
        route_handlers=[
            index, login_page, login, logout, static_file,
            spend_page, spend_download,
            keys_page, new_key_page, create_key, key_page, update_key, block_key, revoke_key,
            deployments_page, deployments_json,
            requests_page, request_page,
        ],
        exception_handlers={RequestError: _error_page},
    )  # fmt: skip
