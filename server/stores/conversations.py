"""The conversation store contract (OpenAI's Conversations API): a conversation and its items.

A separate abstract interface from :class:`ResponseStore`, implemented by the same backends
(``MemoryStore``, ``SQLiteStore``) beside it: conversations are a concern of their own, and a
response-only backend stays a complete ``ResponseStore``. The contract suite
(``tests/test_store_contract.py``) insists that every *registered* backend implements both.

Decisions every backend honours:

* A conversation's items are kept in the order they were added, oldest first; ``append_items``
  adds one turn's items (or one ``items.create`` call's) atomically: all or none, contiguous,
  never interleaved with another append to the same conversation.
* Item ids are unique within a conversation only by convention (the gateway mints them);
  ``get_item``/``delete_item`` act on the first item with that id.
* ``delete_conversation`` forgets the conversation and its items (no tombstone: no accounting
  lives there; the responses of its turns keep theirs).
* Records are JSON all the way down and copied through ``orjson``: nothing returned aliases
  what was written.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from .base import ItemPage, Order, page_items

__all__ = ["ConversationStore", "StoredConversation", "conversation_json"]


@dataclass(slots=True)
class StoredConversation:
    """One conversation as stored (its items are kept apart, in order)."""

    id: str  # conv_...
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)
    api_key_id: str | None = None  # the key that created it
    team: str | None = None  # that key's team (a team-mate may use it)


def conversation_json(conversation: StoredConversation) -> dict[str, Any]:
    """The ConversationResource body."""
    return {
        "id": conversation.id,
        "object": "conversation",
        "created_at": conversation.created_at,
        "metadata": dict(conversation.metadata),
    }


class ConversationStore(ABC):
    """Async store of conversations and their ordered items."""

    @abstractmethod
    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        """Insert a new conversation with its initial items, atomically."""

    @abstractmethod
    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        """The conversation, or None when unknown or deleted."""

    @abstractmethod
    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str]
    ) -> StoredConversation | None:
        """Replace its metadata; None when unknown."""

    @abstractmethod
    async def delete_conversation(self, conversation_id: str) -> bool:
        """Forget the conversation and its items; False when unknown."""

    @abstractmethod
    async def append_items(self, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        """Append ``items`` after the last one, atomically and in order; False when the
        conversation is unknown (nothing is written then)."""

    @abstractmethod
    async def conversation_items(self, conversation_id: str) -> list[dict[str, Any]] | None:
        """Every item, oldest first (a turn's history); None when the conversation is
        unknown."""

    @abstractmethod
    async def delete_item(self, conversation_id: str, item_id: str) -> bool | None:
        """Remove one item; None when the conversation is unknown, False when the item is."""

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        """One item; None when the conversation or the item is unknown."""
        items = await self.conversation_items(conversation_id)
        return next((i for i in items or () if i.get("id") == item_id), None)

    async def list_items(
        self,
        conversation_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
    ) -> ItemPage | None:
        """A page of items (OpenAI's default order: desc); None when the conversation is
        unknown, :class:`UnknownCursorError` when ``after`` names none of its items."""
        items = await self.conversation_items(conversation_id)
        if items is None:
            return None
        return page_items(items, limit=limit, order=order, after=after)
