"""Opaque provider state carried in a Responses reasoning item's ``encrypted_content``.

Thinking signatures (Anthropic), thought signatures (Gemini) and the like must come back to the
provider that minted them on the next turn. Turnout wraps them as
``"tnt1." + base64url(json({"p": provider, ...state}))``; the prefix versions the format and
tells Turnout's blobs from a provider's own (OpenAI's ``encrypted_content`` passes through as is).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["STATE_PREFIX", "decode_state", "encode_state"]

STATE_PREFIX = "tnt1."


def encode_state(provider: str | None, state: Mapping[str, Any]) -> str:
    payload = {"p": provider, **{k: v for k, v in state.items() if k != "p"}}
    return STATE_PREFIX + base64.urlsafe_b64encode(orjson.dumps(payload)).decode("ascii")


def decode_state(blob: str) -> tuple[str | None, dict[str, Any]] | None:
    """(provider, state) of a Turnout blob; None for a foreign or malformed one."""
    if not blob.startswith(STATE_PREFIX):
        return None
    raw = blob[len(STATE_PREFIX) :]
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    provider = data.pop("p", None)
    return (provider if isinstance(provider, str) else None), data
