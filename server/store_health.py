"""Whether the response store takes writes, and what a failed write means for a reply.

A write that fails (a full disk, a read-only file, a lost database) is not the client's fault and
must not look like a generic 500 or a cut stream: the reply says the response could not be
stored (`store_unavailable`: a 503 for a JSON reply, `response.failed` then `[DONE]` for a
stream), and `/health` reports the store as failing until a write succeeds again. While it
fails, each `/health` call tries a probe write (`ResponseStore.probe_write`), so a store that
recovers is seen as healthy without waiting for traffic. Nothing is retried here: a failed write
leaves what was stored before untouched (each put is one transaction).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from turnout.server.stores.base import ResponseStore, StoredResponse

__all__ = ["STORE_UNAVAILABLE", "StoreHealth", "StoreUnavailable"]

T = TypeVar("T")

log = logging.getLogger("turnout.store")

STORE_UNAVAILABLE = "store_unavailable"


class StoreUnavailable(Exception):
    """The response could not be written; answered as a 503 `store_unavailable`."""

    status = 503
    code = STORE_UNAVAILABLE
    type = "server_error"

    def __init__(self) -> None:
        self.message = (
            "The response could not be stored: the gateway's response store is failing "
            "(see /health). It was not saved; retry later."
        )
        super().__init__(self.message)


def _reason(exc: BaseException) -> str:
    # The exception's own words for the log (a sqlite3 message names no secret; a networked
    # store's URL never reaches its exceptions here), one line, bounded.
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


class StoreHealth:
    """The outcome of the last store write, shared by every writer of one gateway."""

    def __init__(self) -> None:
        self.failure: str | None = None  # why the last write failed; None: it succeeded

    async def put(self, store: ResponseStore, record: StoredResponse) -> None:
        """`store.put(record)`, raising `StoreUnavailable` when it fails."""
        try:
            await store.put(record)
        except Exception as exc:
            self._failed(exc)
            raise StoreUnavailable() from exc
        if self.failure is not None:
            log.warning("the response store takes writes again")
            self.failure = None

    async def write(self, write: Awaitable[T]) -> T:
        """Any other store write (a conversation's), awaited; `StoreUnavailable` when it
        fails, as `put` does."""
        try:
            result = await write
        except Exception as exc:
            self._failed(exc)
            raise StoreUnavailable() from exc
        if self.failure is not None:
            log.warning("the response store takes writes again")
            self.failure = None
        return result

    async def check(self, store: ResponseStore) -> str | None:
        """None when the store takes writes; else why not. While writes fail, a probe write
        decides (the store may have recovered since)."""
        if self.failure is None:
            return None
        try:
            await store.probe_write()
        except Exception as exc:
            self._failed(exc)
            return self.failure
        log.warning("the response store takes writes again")
        self.failure = None
        return None

    def _failed(self, exc: BaseException) -> None:
        reason = _reason(exc)
        if self.failure != reason:  # once per distinct failure, not once per request
            log.error("the response store failed a write: %s", reason)
        self.failure = reason
