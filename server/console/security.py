"""The headers every console reply carries, and its cookies.

The pages load nothing but their own origin's files: no inline script (the one script is
`/ui/static/console.js`), no inline style, no frames around them, no Referer leaving with a URL
that names a response or a key, and no page cached (they show spend, prompts and, once, a
secret).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CSP", "cookie", "expired_cookie", "is_https", "page_headers", "static_headers"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_COMMON = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
_NO_STORE = {**_COMMON, "cache-control": "no-store", "pragma": "no-cache"}


def page_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**_NO_STORE, **(extra or {})}


def static_headers() -> dict[str, str]:
    # Asset URLs carry their content hash (?v=…): a new release is a new URL.
    return {**_COMMON, "cache-control": "public, max-age=86400"}


def is_https(scope: Any) -> bool:
    return str(scope.get("scheme", "")) in ("https", "wss")


def cookie(name: str, value: str, *, max_age: int, secure: bool) -> str:
    """HttpOnly (no script reads it), SameSite=Strict (no other site's request carries it),
    scoped to /ui (the API never sees it), Secure over https."""
    flags = f"; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return f"{name}={value}{flags}{'; Secure' if secure else ''}"


def expired_cookie(name: str, *, secure: bool) -> str:
    return cookie(name, "", max_age=0, secure=secure)
