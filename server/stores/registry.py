"""Store backends by URL scheme, as telemetry sinks are registered by type name.

A backend registers itself where it is defined::

    @register_store("postgresql", "postgres")
    class PostgresStore(ResponseStore):
        url_forms = ("postgresql://user@host/db",)

        @classmethod
        def parse_url(cls, url: str) -> StoreUrl: ...  # checks, no I/O
        @classmethod
        def from_url(cls, url: StoreUrl) -> PostgresStore: ...  # constructs, no I/O

and its module is imported by ``server/stores/__init__.py`` (where the built-in backends are
imported). `parse_store_url` (the config loader's check), `create_store` and `open_store` then
know the scheme, and the contract suite runs the backend through every test.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

from .base import ResponseStore, StoreUrl

__all__ = [
    "STORE_BACKENDS",
    "create_store",
    "known_schemes",
    "open_store",
    "parse_store_url",
    "register_store",
]

S = TypeVar("S", bound=type[ResponseStore])

# scheme -> backend class; a backend with aliases appears once per scheme.
STORE_BACKENDS: dict[str, type[ResponseStore]] = {}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986, lower case


def register_store(scheme: str, *aliases: str) -> Callable[[S], S]:
    """Class decorator: URLs with ``scheme`` (or an alias) open this backend.

    Refuses (TypeError, at import) a class that is abstract or does not parse URLs, and
    (ValueError) a scheme another backend already holds.
    """

    def decorate(cls: S) -> S:
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            raise TypeError(f"store backend {cls.__name__} is abstract (missing: {missing})")
        for hook in ("parse_url", "from_url"):
            inherited = getattr(ResponseStore, hook).__func__
            if getattr(getattr(cls, hook), "__func__", None) is inherited:
                raise TypeError(f"store backend {cls.__name__} must define {hook}()")
        names = (scheme, *aliases)
        for name in names:
            if not _SCHEME.fullmatch(name):
                raise ValueError(f"store url scheme {name!r} is not a lower-case URL scheme")
            held = STORE_BACKENDS.get(name)
            if held is not None and _qualname(held) != _qualname(cls):
                raise ValueError(f"store url scheme {name!r} is taken by {_qualname(held)}")
        cls.scheme = scheme
        for name in names:
            STORE_BACKENDS[name] = cls
        return cls

    return decorate


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def known_schemes() -> list[str]:
    return sorted(STORE_BACKENDS)


def _valid_forms() -> str:
    forms: list[str] = []
    for cls in STORE_BACKENDS.values():
        forms.extend(form for form in cls.url_forms if form not in forms)
    return ", ".join(forms)


def _bad(problem: str) -> ValueError:
    return ValueError(f"{problem}; valid store urls: {_valid_forms()}")


def _backend(url: str) -> type[ResponseStore]:
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise _bad("store url has no scheme")
    cls = STORE_BACKENDS.get(scheme.lower())
    if cls is None:
        # Only the scheme is named, never the URL: it may carry a password.
        known = ", ".join(known_schemes())
        raise _bad(f"unknown store url scheme {scheme.lower()!r} (known schemes: {known})")
    return cls


def parse_store_url(url: str) -> StoreUrl:
    """Check ``url`` without opening anything (the config loader calls this, so a bad URL stops
    start-up at its line): the registered backend of its scheme validates the rest. Errors name
    only the scheme, never the whole URL, which might carry a password."""
    cls = _backend(url)
    try:
        return cls.parse_url(url)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def create_store(url: str) -> ResponseStore:
    """A new, unopened store for ``url`` (see `parse_store_url`); no I/O, no event loop needed.
    ``await store.open()`` before use, ``await store.aclose()`` at the end.

    ``sqlite:///x.db`` is relative to the working directory and ``sqlite:////x.db`` absolute,
    as in SQLAlchemy.
    """
    parsed = parse_store_url(url)
    return _backend(url).from_url(parsed)


async def open_store(url: str) -> ResponseStore:
    """`create_store` and ``await open()``; a store that fails to open is closed again."""
    store = create_store(url)
    try:
        await store.open()
    except BaseException:
        await store.aclose()
        raise
    return store
