"""The admin API: `/admin/keys`, `/admin/teams`, `/admin/audit`, for the master key only.

Thin handlers over `server/access/key_admin.py` (where the logic is, shared with the CLI):
parse the body and the query, call, shape the reply. The guard refuses everyone but the master
key: a gateway without `auth.master_key` checks no keys at all, so its admin API is off (a 403
saying so) rather than open to anyone; a virtual key gets a 403; a missing or wrong token the
usual 401. Nothing here logs a body or a reply: the one that carries a new key's secret goes
to the client and nowhere else.
"""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Request, Router, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import ASGIApp

from turnout.engine.errors import RequestError
from turnout.server.access.auth import Authenticator
from turnout.server.access.key_admin import AUDIT_PAGE_MAX, KeyAdmin
from turnout.server.replies import json_reply

__all__ = ["ADMIN_ACTOR", "admin_router", "require_admin"]

# Who the audit log says made an admin API change (there is one master key).
ADMIN_ACTOR = "master_key"


async def require_admin(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    auth: Authenticator = connection.app.state.auth
    if auth.open:
        raise RequestError(
            403, "The admin API is off: it needs auth.master_key set in the gateway's config "
            "(without one the gateway checks no keys).", code="admin_api_disabled",
        )  # fmt: skip
    identity = await auth.identify(connection.headers.get("authorization", ""))
    if identity.role != "master":
        raise RequestError(403, "The admin API needs the master key.", code="master_key_required")


def _admin(request: Request[Any, Any, Any]) -> KeyAdmin:
    auth: Authenticator = request.app.state.auth
    gateway = request.app.state.gateway

    def changed() -> None:
        # This process sees a change at once: the key lookups and the teams' limits.
        auth.invalidate()
        gateway.teams.invalidate()

    return KeyAdmin(gateway.store, actor=ADMIN_ACTOR, on_change=changed)


async def _body(request: Request[Any, Any, Any]) -> Any:
    """The JSON body; None when empty (nothing set). Malformed JSON is OpenAI's 400."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None


def _query_int(request: Request[Any, Any, Any], name: str, low: int, high: int) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise RequestError(
            400, f"Invalid value for '{name}': expected an integer between {low} and {high}.",
            param=name, code="invalid_value",
        )  # fmt: skip
    return number


@post("/keys", status_code=201)
async def create_key(request: Request[Any, Any, Any]) -> ASGIApp:
    return json_reply(await _admin(request).create_key(await _body(request)), 201)


@get("/keys")
async def list_keys(request: Request[Any, Any, Any]) -> ASGIApp:
    team = request.query_params.get("team") or None
    return json_reply(await _admin(request).list_keys(team))


@get("/keys/{key_id:str}")
async def show_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> ASGIApp:
    return json_reply(await _admin(request).key(key_id))


@patch("/keys/{key_id:str}")
async def update_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> ASGIApp:
    return json_reply(await _admin(request).update_key(key_id, await _body(request)))


@delete("/keys/{key_id:str}", status_code=200)
async def revoke_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> ASGIApp:
    return json_reply(await _admin(request).revoke_key(key_id))


@post("/teams", status_code=201)
async def create_team(request: Request[Any, Any, Any]) -> ASGIApp:
    return json_reply(await _admin(request).create_team(await _body(request)), 201)


@get("/teams")
async def list_teams(request: Request[Any, Any, Any]) -> ASGIApp:
    return json_reply(await _admin(request).list_teams())


@get("/teams/{name:str}")
async def show_team(request: Request[Any, Any, Any], name: FromPath[str]) -> ASGIApp:
    return json_reply(await _admin(request).team(name))


@patch("/teams/{name:str}")
async def update_team(request: Request[Any, Any, Any], name: FromPath[str]) -> ASGIApp:
    return json_reply(await _admin(request).update_team(name, await _body(request)))


@delete("/teams/{name:str}", status_code=200)
async def delete_team(request: Request[Any, Any, Any], name: FromPath[str]) -> ASGIApp:
    return json_reply(await _admin(request).delete_team(name))


@get("/audit")
async def audit(request: Request[Any, Any, Any]) -> ASGIApp:
    """Newest first: `limit` (1-1000, default 100), `before` (a `seq`: older entries only)."""
    limit = _query_int(request, "limit", 1, AUDIT_PAGE_MAX) or 100
    before = _query_int(request, "before", 1, 2**62)
    return json_reply(await _admin(request).audit(limit=limit, before=before))


def admin_router() -> Router:
    return Router(
        path="/admin",
        route_handlers=[
            create_key, list_keys, show_key, update_key, revoke_key,
            create_team, list_teams, show_team, update_team, delete_team,
            audit,
        ],
        guards=[require_admin],
    )  # fmt: skip
