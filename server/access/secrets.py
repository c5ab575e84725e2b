"""Virtual key secrets: made, hashed and shown without ever being stored.

A secret is `sk-tnt-` + 43 URL-safe characters of 32 random bytes (256 bits from the OS's
CSPRNG). The store keeps only its SHA-256: a plain hash is enough for a random 256-bit secret
(nothing to brute-force, unlike a password, so no slow hash is needed, and the lookup stays one
index probe per second per key). Its first characters are kept for display.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["SECRET_PREFIX", "display_prefix", "new_key_id", "new_secret", "secret_hash",
           "token_key_id"]  # fmt: skip

SECRET_PREFIX = "sk-tnt-"
_DISPLAY_CHARS = len(SECRET_PREFIX) + 4


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """`key_` + 24 hex digits (96 random bits): public, names the key everywhere."""
    return "key_" + secrets.token_hex(12)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """What lists show of a secret: `sk-tnt-AbCd` (4 of its 256 bits' characters)."""
    return secret[:_DISPLAY_CHARS]


def token_key_id(token: str) -> str:
    """`key_` + 24 hex digits of a bearer token's SHA-256: groups the spend of callers that are
    not virtual keys (the master key, an open gateway's callers) without storing the token."""
    return "key_" + hashlib.sha256(token.encode()).hexdigest()[:24]
