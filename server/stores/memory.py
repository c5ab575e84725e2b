"""In-process response store (``memory://``): for tests, development and ``store: false`` setups.

Records are kept as orjson bytes rather than objects so the memory backend behaves exactly
like SQLite: nothing the caller mutates after ``put`` leaks in, non-JSON data fails at ``put``
in tests instead of first in production, and ``get`` always hands out a fresh copy.

There is nothing to open: the store is usable from construction (``open()`` only refuses a
closed store), so tests and ``turnout record`` build one directly.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from typing import Any

import orjson

from .base import (
    UNFINISHED_STATUSES,
    AccountingRow,
    Renewal,
    ResponseStore,
    SpendQuery,
    SpendReport,
    StoredResponse,
    StoreUrl,
    aggregate_spend,
    record_from_json,
    record_to_json,
    tombstone,
)
from .conversations import ConversationStore, StoredConversation
from .memory_keys import MemoryKeys
from .registry import register_store

__all__ = ["MemoryStore"]


@register_store("memory")
class MemoryStore(ResponseStore, ConversationStore, MemoryKeys):
    url_forms = ("memory://",)

    @classmethod
    def parse_url(cls, url: str) -> StoreUrl:
        if url.partition("://")[2]:
            raise ValueError("memory:// store url takes no path")
        return StoreUrl("memory")

    @classmethod
    def from_url(cls, url: StoreUrl) -> MemoryStore:
        return cls()

    @classmethod
    def scratch_url(cls, folder: str) -> str:
        return "memory://"

    def __init__(self) -> None:
        self._rows: dict[str, bytes] = {}
        # conversation id -> (the conversation, its items oldest first), all as orjson bytes.
        self._conversations: dict[str, tuple[bytes, list[bytes]]] = {}
        self._cancels: set[str] = set()  # ids a cancel was asked for (request_cancel)
        # Critical sections contain no await, so they are already atomic for coroutines on
        # one loop; the threading lock (not asyncio.Lock, which binds to one loop) also makes
        # the store safe for use from several loops or threads, as tests sometimes do.
        self._lock = threading.Lock()
        self._closed = False
        self._init_keys()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("response store is closed")

    async def open(self) -> None:
        if self._closed:
            raise RuntimeError("response store is closed; a closed store cannot be reopened")

    async def put(self, record: StoredResponse) -> None:
        self._check_open()
        data = record_to_json(record)  # serialise outside the lock: 1 MB takes a moment
        with self._lock:
            self._rows[record.id] = data

    async def get(self, response_id: str) -> StoredResponse | None:
        self._check_open()
        with self._lock:
            data = self._rows.get(response_id)
        if data is None:
            return None
        record = record_from_json(data)
        return None if record.deleted else record

    async def delete(self, response_id: str) -> bool:
        self._check_open()
        with self._lock:
            data = self._rows.get(response_id)
            if data is None:
                return False
            record = record_from_json(data)
            if record.deleted:
                return False
            self._rows[response_id] = record_to_json(tombstone(record))
            return True

    async def purge(self, before: int, *, limit: int) -> int:
        self._check_open()
        with self._lock:
            records = [record_from_json(data) for data in self._rows.values()]
            old = sorted(
                (r for r in records
                 if not r.deleted and r.created_at < before
                 and r.status not in UNFINISHED_STATUSES),
                key=lambda r: r.created_at,
            )[:limit]  # fmt: skip
            for record in old:
                self._rows[record.id] = record_to_json(tombstone(record))
        return len(old)

    async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]:
        self._check_open()
        with self._lock:
            rows = list(self._rows.values())
        # A scan: the memory store is for tests and development, not for months of traffic.
        return [AccountingRow.of(record_from_json(data)) for data in rows]

    async def spend(self, query: SpendQuery) -> SpendReport:
        return aggregate_spend(query, await self.accounting(query))

    async def unfinished(self) -> list[str]:
        self._check_open()
        with self._lock:
            rows = list(self._rows.values())
        records = (record_from_json(data) for data in rows)
        return [r.id for r in records if not r.deleted and r.status in UNFINISHED_STATUSES]

    def _unfinished_record(self, response_id: str) -> StoredResponse | None:
        data = self._rows.get(response_id)
        if data is None:
            return None
        record = record_from_json(data)
        if record.deleted or record.status not in UNFINISHED_STATUSES:
            return None
        return record

    async def replace_unfinished(
        self, record: StoredResponse, *, expired_before: float | None = None
    ) -> bool:
        self._check_open()
        data = record_to_json(record)
        with self._lock:
            stored = self._unfinished_record(record.id)
            if stored is None:
                return False
            if expired_before is not None and not _expired(stored, expired_before):
                return False
            self._rows[record.id] = data
            return True

    async def renew_leases(self, owner: str, ids: Iterable[str], until: float) -> Renewal:
        self._check_open()
        held: set[str] = set()
        with self._lock:
            for response_id in ids:
                stored = self._unfinished_record(response_id)
                if stored is None or stored.owner != owner:
                    continue
                stored.lease_until = until
                self._rows[response_id] = record_to_json(stored)
                held.add(response_id)
            cancel = held & self._cancels
        return Renewal(frozenset(held), frozenset(cancel))

    async def request_cancel(self, response_id: str) -> bool:
        self._check_open()
        with self._lock:
            if self._unfinished_record(response_id) is None:
                return False
            self._cancels.add(response_id)
            return True

    async def expired_unfinished(self, now: float) -> list[str]:
        self._check_open()
        with self._lock:
            rows = list(self._rows.values())
        records = (record_from_json(data) for data in rows)
        return [
            r.id
            for r in records
            if not r.deleted and r.status in UNFINISHED_STATUSES and _expired(r, now)
        ]

    # -- conversations -------------------------------------------------------------------------

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        self._check_open()
        row = (_dumps_conversation(conversation), [orjson.dumps(i) for i in items])
        with self._lock:
            self._conversations[conversation.id] = row

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        self._check_open()
        with self._lock:
            row = self._conversations.get(conversation_id)
        return None if row is None else StoredConversation(**orjson.loads(row[0]))

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str]
    ) -> StoredConversation | None:
        self._check_open()
        with self._lock:
            row = self._conversations.get(conversation_id)
            if row is None:
                return None
            updated = StoredConversation(**orjson.loads(row[0]))
            updated.metadata = dict(metadata)
            self._conversations[conversation_id] = (_dumps_conversation(updated), row[1])
        return updated

    async def delete_conversation(self, conversation_id: str) -> bool:
        self._check_open()
        with self._lock:
            return self._conversations.pop(conversation_id, None) is not None

    async def append_items(self, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        self._check_open()
        encoded = [orjson.dumps(i) for i in items]  # outside the lock; all or nothing
        with self._lock:
            row = self._conversations.get(conversation_id)
            if row is None:
                return False
            row[1].extend(encoded)
            return True

    async def conversation_items(self, conversation_id: str) -> list[dict[str, Any]] | None:
        self._check_open()
        with self._lock:
            row = self._conversations.get(conversation_id)
            items = None if row is None else list(row[1])
        return None if items is None else [orjson.loads(i) for i in items]

    async def delete_item(self, conversation_id: str, item_id: str) -> bool | None:
        self._check_open()
        with self._lock:
            row = self._conversations.get(conversation_id)
            if row is None:
                return None
            for i, data in enumerate(row[1]):
                if orjson.loads(data).get("id") == item_id:
                    del row[1][i]
                    return True
            return False

    async def aclose(self) -> None:
        self._closed = True
        with self._lock:
            self._rows.clear()
            self._conversations.clear()


def _expired(record: StoredResponse, now: float) -> bool:
    return record.lease_until is None or record.lease_until < now


def _dumps_conversation(conversation: StoredConversation) -> bytes:
    return orjson.dumps(dataclasses.asdict(conversation))
