"""What every shared-state backend has in common: its URL, its error, its timeout.

The in-process behaviour (one replica, no `state:`) is the existing code itself
(`server/access/rate_limits.py`, `server/access/budgets.py`, `server/router.py`): it is not
wrapped, so the default path costs exactly what it did.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from turnout.engine.errors import RequestError

__all__ = ["STATE_TIMEOUT_S", "StateUrl", "parse_state_url", "state_unavailable"]

# Every Redis call gives up after this: a hung Redis must never hang requests.
STATE_TIMEOUT_S = 0.25
DEFAULT_PREFIX = "turnout:"
SCHEMES = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class StateUrl:
    url: str  # what redis-py is given (without our own `prefix` parameter)
    prefix: str  # every key Turnout writes starts with it


def parse_state_url(text: str) -> StateUrl:
    """`redis://[user:password@]host[:port][/db][?prefix=…]` (or `rediss://`); `ValueError`
    naming what is wrong (never the password)."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a redis:// or rediss:// URL (scheme {parts.scheme or 'missing'})")
    if not parts.hostname:
        raise ValueError("the URL names no host (redis://host:port/db)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the URL's port is not a number in 0-65535") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database {db!r} is not a number (redis://host:port/0)")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest: list[tuple[str, str]] = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    return StateUrl(url, prefix)


def state_unavailable(reason: BaseException | str) -> RequestError:
    """The 503 a request gets when its limits live in a Redis that does not answer: failing
    fast beats letting N replicas each grant the whole limit (README, "Running several
    replicas")."""
    what = reason if isinstance(reason, str) else type(reason).__name__
    return RequestError(
        503,
        "The gateway's shared state (Redis) is unavailable, so this key's rate limits and "
        f"budget cannot be checked ({what}). Please retry shortly.",
        code="state_unavailable",
        type="server_error",
        retry_after=1.0,
    )
