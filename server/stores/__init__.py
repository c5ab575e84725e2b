"""Response stores: pick a backend from a URL (``store.url`` in the config)."""

from __future__ import annotations

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
    "StoredResponse",
    "UnknownCursorError",
    "open_store",
]

_VALID = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:, "
    "sqlite:///path.db?synchronous=normal"
)


def open_store(url: str) -> ResponseStore:
    """Open the store named by ``url``.

    ``sqlite:///x.db`` is relative to the working directory and ``sqlite:////x.db`` absolute,
    as in SQLAlchemy. Opening SQLite blocks briefly (file, pragmas, schema): call this at
    start-up. Errors name only the scheme, never the whole URL, which might carry a password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _bad("store url has no scheme")
    scheme = scheme.lower()
    if scheme == "memory":
        if rest:
            raise _bad("memory:// store url takes no path")
        return MemoryStore()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else ""  # "sqlite://host/..." has no meaning
        path, _sep, query = path.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = set(options) - {"synchronous"}
        if not path or unknown:
            raise _bad("sqlite store url needs a file path, no host, and only ?synchronous=")
        synchronous = options.get("synchronous", "full").lower()
        if synchronous not in ("full", "normal"):
            raise _bad("sqlite synchronous= takes full or normal")
        return SQLiteStore(path, synchronous=synchronous)
    raise _bad(f"unknown store url scheme {scheme!r}")


def _bad(problem: str) -> ValueError:
    return ValueError(f"{problem}; valid store urls: {_VALID}")
