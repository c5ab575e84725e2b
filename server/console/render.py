"""Pages from the package's Jinja2 templates, and its static files.

Autoescaping is on for every template: prompts, outputs, model names and key names are other
people's text, and none of it may become markup. Templates and static files are package data
(pyproject's package-data), read through importlib.resources, so a wheel serves them as a
checkout does; nothing is fetched from another host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined

from turnout.server.console.security import page_headers, static_headers
from turnout.server.replies import BodyReply

__all__ = ["Asset", "asset", "html", "money", "render", "static_url"]

_PACKAGE = "turnout.server.console"
_TYPES = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}
STATIC_FILES = ("console.css", "console.js", "favicon.svg")
_BLANK = "\u2013"  # an en dash: no value


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: bytes
    version: str  # the first hex digits of its SHA-256: part of its URL


@cache
def asset(name: str) -> Asset | None:
    if name not in STATIC_FILES:  # a fixed list: no path from the URL reaches the disk
        return None
    body = (files(_PACKAGE) / "static" / name).read_bytes()
    suffix = name[name.rindex(".") :]
    return Asset(body, _TYPES[suffix], hashlib.sha256(body).hexdigest()[:12])


def static_url(name: str) -> str:
    found = asset(name)
    assert found is not None, name
    return f"/ui/static/{name}?v={found.version}"


def static_reply(name: str) -> BodyReply | None:
    found = asset(name)
    if found is None:
        return None
    return BodyReply(found.body, 200, static_headers(), found.content_type)


def money(value: float | None) -> str:
    """US dollars: cents from a dollar up, else enough digits to see a small cost."""
    if value is None:
        return _BLANK
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return "$" + f"{value:.6f}".rstrip("0").rstrip(".")


def _number(value: int | float | None) -> str:
    return _BLANK if value is None else f"{value:,}"


def _when(ts: float | None) -> str:
    if ts is None:
        return _BLANK
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _day(ts: float | None) -> str:
    return _BLANK if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _duration(ms: float | None) -> str:
    if ms is None:
        return _BLANK
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader(_PACKAGE, "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,  # a misspelt name is an error in the tests, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        usd=money, num=_number, when=_when, day=_day, duration=_duration, pretty=_pretty
    )
    env.globals["static_url"] = static_url
    return env


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def html(
    template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> BodyReply:
    body = render(template, **context).encode()
    return BodyReply(body, status, page_headers(headers), b"text/html; charset=utf-8")
