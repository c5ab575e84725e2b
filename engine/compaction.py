"""Turnout's own compaction blobs: the `encrypted_content` of a `compaction` item that
`POST /v1/responses/compact` made on a provider without a compact endpoint of its own.

``"tntc1." + base64url(json({"s": summary})) + "." + base64url(hmac_sha256(key, payload))``.
Like the ``tnt1.`` reasoning envelope (engine/state.py) the prefix versions the format and tells
Turnout's blobs from a provider's own; unlike it, the blob is sealed with the gateway's key, so a
client cannot plant text in the conversation's context by editing it (tamper-evident, not secret:
the summary is the client's own conversation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

__all__ = ["COMPACTION_PREFIX", "SUMMARY_LEAD", "open_summary", "seal_summary"]

COMPACTION_PREFIX = "tntc1."
# How the summary is put before the new input on a later turn.
SUMMARY_LEAD = "Summary of the conversation so far: "


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, (COMPACTION_PREFIX + payload).encode(), hashlib.sha256).digest())


def seal_summary(summary: str, key: bytes) -> str:
    payload = _b64(orjson.dumps({"s": summary}))
    return f"{COMPACTION_PREFIX}{payload}.{_mac(key, payload)}"


def open_summary(blob: str, key: bytes | None) -> str | None:
    """The summary a sealed blob holds; None when it was altered, sealed with another key,
    malformed, or there is no key to check it with."""
    if key is None or not blob.startswith(COMPACTION_PREFIX):
        return None
    payload, sep, mac = blob[len(COMPACTION_PREFIX) :].partition(".")
    if not sep or not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):
        return None
    try:
        data = orjson.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        return None
    summary = data.get("s") if isinstance(data, dict) else None
    return summary if isinstance(summary, str) else None
