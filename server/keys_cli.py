"""`turnout keys create|list|show|update|revoke` and `turnout teams create|list|show|update|delete`.

The admin API from a shell: each command opens the store the config names (`--config`, found
as `turnout serve` finds it), makes the same `KeyAdmin` call the API makes (the same checks,
the same audit entries, with actor `cli:<os user>`), prints the result and closes the store. A
running gateway sees a change within a second (its key cache lives that long).

Refused with exit 2 (nothing written), naming the config file:

* a config without `auth.master_key`: that gateway checks no keys, so a key made for it would
  be a false sense of security;
* a `memory://` store: it lives inside each process, so the key would vanish with this one.

`create` prints the key's secret, once (`--json`: the API's reply, `key` included). A refused
setting is exit 1 with the API's message. Nothing else prints or logs a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from turnout.engine.errors import ConfigError, RequestError
from turnout.server.access.key_admin import KeyAdmin
from turnout.server.access.key_settings import KEY_FIELDS, TEAM_FIELDS
from turnout.server.access.periods import period_seconds

__all__ = ["add_commands", "cli_actor"]

Call = Callable[[KeyAdmin, argparse.Namespace], Awaitable[dict[str, Any]]]


def cli_actor() -> str:
    """`cli:<os user>`: who the audit log says made a CLI change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


# -- the body a command sends -------------------------------------------------------------------


def _models(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RequestError(400, f"--metadata {pair!r}: write KEY=VALUE.", param="metadata")
        data[key] = value
    return data


def _body(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, Any]:
    """The settings given on the command line, as the API's JSON body: `--unset FIELD` is
    null (no limit), an option left out is not sent."""
    body: dict[str, Any] = {field: None for field in getattr(args, "unset", None) or ()}
    given = {
        "name": getattr(args, "display_name", None),
        "team": getattr(args, "team", None),
        "models": _models(args.models),
        "max_budget_usd": args.max_budget_usd,
        "budget_period": args.budget_period,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_background": args.max_background,
        "expires_at": getattr(args, "expires_at", None),
        "metadata": _metadata(args.metadata),
        "unsupported_tools": getattr(args, "unsupported_tools", None),
        "blocked": getattr(args, "blocked", None),
    }
    expires_in = getattr(args, "expires_in", None)
    if expires_in is not None:
        try:
            given["expires_at"] = int(time.time()) + period_seconds(expires_in)
        except ValueError:
            raise RequestError(
                400,
                f"--expires-in {expires_in!r}: a number and a unit (s, m, h, d), e.g. '30d'.",
                param="expires_at",
            ) from None
    for field, value in given.items():
        if value is None or field not in fields:
            continue
        if field in body:
            raise RequestError(400, f"--unset {field} and a value for it: choose one.", param=field)
        body[field] = value
    return body


# -- the calls ----------------------------------------------------------------------------------


async def _key_create(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.create_key(_body(args, KEY_FIELDS))


async def _key_list(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.list_keys(args.team)


async def _key_show(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.key(args.id)


async def _key_update(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.update_key(args.id, _body(args, KEY_FIELDS))


async def _key_revoke(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.revoke_key(args.id)


async def _team_create(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.create_team({"name": args.name, **_body(args, TEAM_FIELDS)})


async def _team_list(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.list_teams()


async def _team_show(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.team(args.name)


async def _team_update(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.update_team(args.name, _body(args, TEAM_FIELDS))


async def _team_delete(admin: KeyAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return await admin.delete_team(args.name)


# -- running one ---------------------------------------------------------------------------------


def _refusal(config: str | None, master_key: str | None, store: str) -> str | None:
    where = f"config {config}" if config else "no --config given (the defaults)"
    if not master_key:
        return (
            f"{where}: auth.master_key is not set: that gateway checks no keys, so virtual "
            "keys would not be checked. Set auth.master_key first."
        )
    if store.partition("://")[0].lower() == "memory":
        return (
            f"{where}: the store is memory://, which lives inside each process: a key made "
            "here would vanish with this command. Use a store the gateway shares (sqlite:///…)."
        )
    return None


async def _call(store_url: str, call: Call, args: argparse.Namespace) -> dict[str, Any]:
    from turnout.server.stores import create_store

    store = create_store(store_url)
    try:
        try:
            await store.open()
        except Exception as exc:  # any backend's failure, in one line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _StoreError(reason) from None
        return await call(KeyAdmin(store, actor=cli_actor()), args)
    finally:
        await store.aclose()


class _StoreError(Exception):
    pass


def _run(args: argparse.Namespace) -> int:
    from turnout.server.cli import configure_logging, mask_store_url
    from turnout.server.config import load_config

    configure_logging()  # through the redaction filter, should anything log
    command = f"turnout {args.group} {args.action}"
    try:
        settings = load_config(args.config, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 2
    refusal = _refusal(args.config, settings.master_key, settings.store)
    if refusal is not None:
        print(f"{command}: {refusal}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_call(settings.store, args.call, args))
    except _StoreError as exc:
        print(
            f"{command}: cannot open the store {mask_store_url(settings.store)}: {exc}",
            file=sys.stderr,
        )
        return 2
    except RequestError as exc:
        print(f"{command}: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(_text(args, result))
    return 0


# -- what is printed ------------------------------------------------------------------------------


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _fields(data: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    width = max(len(k) for k in data)
    return "".join(f"  {k:<{width}}  {_value(v)}\n" for k, v in data.items() if k not in skip)


def _text(args: argparse.Namespace, result: dict[str, Any]) -> str:
    if result.get("object") == "list":
        if args.group == "keys":
            rows = [
                (k["id"], k["prefix"], k["status"], k["team"], k["name"]) for k in result["data"]
            ]
            header = ("id", "prefix", "status", "team", "name")
        else:
            rows = [
                (t["name"], t["max_budget_usd"], t["budget_period"], t["rpm"], t["tpm"])
                for t in result["data"]
            ]
            header = ("name", "max_budget_usd", "budget_period", "rpm", "tpm")
        table = [header, *[tuple(_value(v) for v in row) for row in rows]]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        return "".join(
            "  ".join(f"{v!s:<{w}}" for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
            for row in table
        )
    if "key" in result:  # a new key: its secret, this once
        return (
            f"created {result['id']}\n\n  {result['key']}\n\n"
            "This is the key's secret. It is shown only now: store it where its user will "
            "find it (the gateway keeps only its hash).\n\n"
            + _fields(result, skip=("key", "object"))
        )
    if result.get("deleted"):
        return f"deleted team {result['name']}\n"
    title = result.get("id") or result.get("name")
    return f"{title}\n" + _fields(result, skip=("object",))


# -- argparse -------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, call: Call) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the gateway's YAML config (its store and auth.master_key; default: defaults)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON the admin API returns")
    parser.set_defaults(func=_run, call=call)


def _limits(parser: argparse.ArgumentParser, fields: tuple[str, ...], update: bool) -> None:
    parser.add_argument(
        "--models",
        action="append",
        metavar="A,B",
        help="the models it may use: aliases, provider/model names or globs "
        "(comma-separated or repeated); default: any",
    )
    parser.add_argument(
        "--max-budget-usd",
        type=float,
        metavar="USD",
        help="spend allowed per budget period (default: no budget)",
    )
    parser.add_argument(
        "--budget-period", metavar="PERIOD", help="e.g. 30d, 1d, 12h (default: a lifetime budget)"
    )
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument(
        "--max-background", type=int, metavar="N", help="background responses at work at once"
    )
    parser.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="metadata (repeated; replaces the whole metadata)",
    )
    if update:
        parser.add_argument(
            "--unset",
            action="append",
            choices=fields,
            metavar="FIELD",
            help="clear a setting (no limit); repeated. One of: " + ", ".join(fields),
        )


def _key_options(parser: argparse.ArgumentParser, update: bool) -> None:
    parser.add_argument("--name", dest="display_name", metavar="NAME", help="a name for people")
    parser.add_argument("--team", help="its team: team-mates see each other's responses")
    _limits(parser, tuple(f for f in KEY_FIELDS if f != "blocked"), update)
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", type=int, metavar="UNIX", help="expiry (unix seconds)")
    expiry.add_argument("--expires-in", metavar="PERIOD", help="expiry from now, e.g. 90d, 12h")
    parser.add_argument(
        "--unsupported-tools",
        choices=("refuse", "drop"),
        help="a hosted tool its provider lacks: refuse (400) or drop it",
    )
    if update:
        block = parser.add_mutually_exclusive_group()
        block.add_argument(
            "--block",
            dest="blocked",
            action="store_const",
            const=True,
            help="refuse its requests until --unblock",
        )
        block.add_argument(
            "--unblock",
            dest="blocked",
            action="store_const",
            const=False,
            help="accept its requests again",
        )
    else:
        parser.add_argument("--blocked", action="store_const", const=True, help="create it blocked")


def add_commands(sub: Any) -> None:
    """`keys` and `teams` under the `turnout` parser's subcommands."""
    keys = sub.add_parser("keys", help="create, list, show, update and revoke virtual keys")
    keys.set_defaults(group="keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key; prints its secret once")
    _key_options(create, update=False)
    _common(create, _key_create)
    listing = actions.add_parser("list", help="every key (no secrets)")
    listing.add_argument("--team", help="only this team's keys")
    _common(listing, _key_list)
    show = actions.add_parser("show", help="a key's settings, status and spend")
    show.add_argument("id", help="the key's id (key_…)")
    _common(show, _key_show)
    update = actions.add_parser("update", help="change a key's settings, block or unblock it")
    update.add_argument("id", help="the key's id (key_…)")
    _key_options(update, update=True)
    _common(update, _key_update)
    revoke = actions.add_parser("revoke", help="refuse the key from its next request on")
    revoke.add_argument("id", help="the key's id (key_…)")
    _common(revoke, _key_revoke)

    teams = sub.add_parser("teams", help="create, list, show, update and delete teams")
    teams.set_defaults(group="teams")
    actions = teams.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a team with its own limits")
    create.add_argument("name")
    _limits(create, TEAM_FIELDS, update=False)
    _common(create, _team_create)
    _common(actions.add_parser("list", help="every team"), _team_list)
    show = actions.add_parser("show", help="a team's settings and spend")
    show.add_argument("name")
    _common(show, _team_show)
    update = actions.add_parser("update", help="change a team's limits")
    update.add_argument("name")
    _limits(update, TEAM_FIELDS, update=True)
    _common(update, _team_update)
    delete = actions.add_parser("delete", help="forget a team's limits (its keys keep it)")
    delete.add_argument("name")
    _common(delete, _team_delete)
