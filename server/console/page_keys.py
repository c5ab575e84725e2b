"""The Keys page: every key with what it spent against its budget, and one key's settings.

Reads and changes go through `KeyAdmin`, the code behind the admin API and `turnout keys`, so
the console checks, stores and audits exactly what they do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from turnout.server.access.key_admin import KeyAdmin
from turnout.server.access.secrets import token_key_id

__all__ = ["DONE", "key_label", "keys_context", "labeller"]

# Fixed notices after a change (`?done=`): the page never echoes text from the URL.
DONE = {
    "saved": "Saved.",
    "blocked": "The key is blocked: its requests are refused until it is unblocked.",
    "unblocked": "The key is unblocked.",
    "revoked": "The key is revoked: its requests are refused from now on.",
}


def key_label(key: dict[str, Any]) -> str:
    return str(key.get("name") or key.get("prefix") or key["id"])


async def keys_context(admin: KeyAdmin) -> dict[str, Any]:
    """Each key with its spend in its current budget period (`KeyAdmin.key`, as
    `GET /admin/keys/{id}` shows it), newest first."""
    listed = (await admin.list_keys())["data"]
    keys = await asyncio.gather(*(admin.key(k["id"]) for k in reversed(listed)))
    return {"keys": keys}


async def labeller(admin: KeyAdmin | None, master_key: str) -> Callable[[str | None], str]:
    """Names for key ids in spend groups and request lists: a virtual key's name (or prefix),
    "master key" for the master key's spend group; other ids as they are."""
    names = {token_key_id(master_key): "master key"}
    if admin is not None:
        for key in (await admin.list_keys())["data"]:
            names[key["id"]] = f"{key_label(key)} ({key['id']})"

    def label(key_id: str | None) -> str:
        if key_id is None:
            return "(none)"
        return names.get(key_id, key_id)

    return label
