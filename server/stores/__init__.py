"""Response stores: pick a backend from a URL (``store.url`` in the config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import (
    ChainCycleError,
    ChainError,
    ItemPage,
    MissingChainLinkError,
    Order,
    ResponseStore,
    SpendQuery,
    SpendReport,
    SpendRow,
    StoredResponse,
    UnknownCursorError,
)
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "ChainCycleError",
    "ChainError",
    "ItemPage",
    "MemoryStore",
    "MissingChainLinkError",
    "Order",
    "ResponseStore",
    "SQLiteStore",
    "SpendQuery",
    "SpendReport",
    "SpendRow",
    "StoreUrl",
    "StoredResponse",
    "UnknownCursorError",
    "open_store",
    "parse_store_url",
]

_VALID = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:, "
    "sqlite:///path.db?synchronous=normal"
)


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL: ``memory`` (no path) or ``sqlite`` (a file path, or ``:memory:``)."""

    scheme: str
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)


def parse_store_url(url: str) -> StoreUrl:
    """Check ``url`` without opening anything (the config loader calls this, so a bad URL stops
    start-up at its line). Errors name only the scheme, never the whole URL, which might carry
    a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _bad("store url has no scheme")
    scheme = scheme.lower()
    if scheme == "memory":
        if rest:
            raise _bad("memory:// store url takes no path")
        return StoreUrl("memory")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else ""  # "sqlite://host/..." has no meaning
        path, _sep, query = path.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = set(options) - {"synchronous"}
        if not path or unknown:
            raise _bad("sqlite store url needs a file path, no host, and only ?synchronous=")
        options["synchronous"] = options.get("synchronous", "full").lower()
        if options["synchronous"] not in ("full", "normal"):
            raise _bad("sqlite synchronous= takes full or normal")
        return StoreUrl("sqlite", path, options)
    raise _bad(f"unknown store url scheme {scheme!r}")


def open_store(url: str) -> ResponseStore:
    """Open the store named by ``url`` (see `parse_store_url`).

    ``sqlite:///x.db`` is relative to the working directory and ``sqlite:////x.db`` absolute,
    as in SQLAlchemy. Opening SQLite blocks briefly (file, pragmas, schema): call this at
    start-up.
    """
    parsed = parse_store_url(url)
    if parsed.scheme == "memory":
        return MemoryStore()
    return SQLiteStore(parsed.path, synchronous=parsed.options["synchronous"])


def _bad(problem: str) -> ValueError:
    return ValueError(f"{problem}; valid store urls: {_VALID}")
