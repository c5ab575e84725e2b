"""OpenAI's Conversations API: conversations, their items, and the turns that grow them.

`Conversations` serves `/v1/conversations*` (the routes call it with the request's `Caller`:
a conversation is its creator's key's and that key's team's, and anyone else gets the 404 of an
unknown id, server/access/isolation.py) and takes part in `POST /v1/responses` with a
`conversation`:

* `history(conversation_id)`: the conversation's items, oldest first, handed to
  `engine.canonical.normalize(body, history)` exactly as a `previous_response_id` chain's items
  are, so every provider's mapping translates them like any history (404
  `conversation_not_found` for an unknown id);
* `append_turn(run)`: called by the `Finisher` once the response is final (foreground, streamed
  and background alike), before its terminal event leaves: the turn's input items, then its
  output items, appended in one atomic store call. A response that ended `failed` or `cancelled`
  without any output item appends nothing (retrying the same input does not repeat it); one
  with output (completed, incomplete, or failed part-way) appends what the client was shown.
  `store: false` only skips the response record: the conversation still grows (the client asked
  for it to hold the turn).

Items are validated and given ids by the same `engine.canonical.normalize_items` as a create
body's input (`msg_…`, `fc_…`, …); output items keep the ids the builder minted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from turnout.engine.canonical import metadata_of, normalize_items
from turnout.engine.errors import RequestError
from turnout.engine.ids import IdFactory
from turnout.server.access.isolation import sees_all, visible
from turnout.server.request_context import ANONYMOUS, Caller
from turnout.server.run import Run
from turnout.server.store_health import StoreHealth
from turnout.server.stores.base import ItemPage, Order, ResponseStore
from turnout.server.stores.conversations import (
    ConversationStore,
    StoredConversation,
    conversation_json,
)

__all__ = ["MAX_ITEMS", "Conversations", "conversation_not_found", "item_page_json"]

log = logging.getLogger("turnout.conversations")

MAX_ITEMS = 20  # per create / items.create call (OpenAI's limit)


def conversation_not_found(conversation_id: str, param: str | None = None) -> RequestError:
    return RequestError(
        404,
        f"Conversation with id '{conversation_id}' not found.",
        param=param,
        code="conversation_not_found",
    )


def _item_not_found(item_id: str) -> RequestError:
    return RequestError(
        404, f"Item with id '{item_id}' not found.", param="item_id", code="item_not_found"
    )


def item_page_json(page: ItemPage) -> dict[str, Any]:
    return {
        "object": "list",
        "data": page.data,
        "first_id": page.first_id,
        "last_id": page.last_id,
        "has_more": page.has_more,
    }


def _body_object(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise RequestError(
            400, "The request body must be a JSON object.", param=None, code="invalid_type"
        )
    return body


def _check_known(body: dict[str, Any], known: frozenset[str]) -> None:
    for key in body:
        if key not in known:
            raise RequestError(
                400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter"
            )


def _new_items(raw: Any, *, required: bool, seal_key: bytes | None = None) -> list[dict[str, Any]]:
    """`items` checked and normalised as create's `input` is (ids minted where absent)."""
    if raw is None and not required:
        return []
    if not isinstance(raw, list) or (required and not raw):
        message = (
            "Missing required parameter: 'items'."
            if raw is None
            else "Invalid 'items': expected a non-empty array of items."
        )
        code = "missing_required_parameter" if raw is None else "invalid_value"
        raise RequestError(400, message, param="items", code=code)
    if len(raw) > MAX_ITEMS:
        raise RequestError(
            400,
            f"Invalid 'items': array too long. Expected an array with maximum length "
            f"{MAX_ITEMS}, but got an array with length {len(raw)} instead.",
            param="items",
            code="array_above_max_length",
        )
    try:
        _entries, stored, _system = normalize_items(raw, seal_key=seal_key)
    except RequestError as exc:
        # The engine names `input[i]`: here the same items are called `items[i]`.
        param = exc.param.replace("input", "items", 1) if exc.param else "items"
        raise RequestError(
            exc.status, exc.message.replace("'input", "'items"), param=param, code=exc.code
        ) from None
    return [_as_item(item) for item in stored]


def _as_item(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as a ConversationItem: an `output_text` part the client sent (an assistant
    message) carries the `annotations` and `logprobs` every output text has."""
    content = item.get("content")
    if item.get("type") != "message" or not isinstance(content, list):
        return item
    parts = [
        {"annotations": [], "logprobs": [], **part}
        if isinstance(part, dict) and part.get("type") == "output_text"
        else part
        for part in content
    ]
    return {**item, "content": parts}


class Conversations:
    """The Conversations API over the gateway's store (which must be a `ConversationStore`)."""

    def __init__(
        self,
        store: ResponseStore,
        health: StoreHealth,
        ids: IdFactory,
        *,
        clock: Callable[[], float] = time.time,
        seal_key: bytes | None = None,
    ) -> None:
        self._store = store
        self.health = health
        self.ids = ids
        self.clock = clock
        # Opens Turnout's compaction blobs (server/compaction.py): checked when added as items.
        self.seal_key = seal_key

    @property
    def store(self) -> ConversationStore:
        if not isinstance(self._store, ConversationStore):
            raise RequestError(
                400,
                f"The Conversations API needs a store that keeps conversations; this gateway's "
                f"{type(self._store).__name__} does not.",
                param=None,
                code="conversations_unavailable",
            )
        return self._store

    async def _conversation(
        self, conversation_id: str, caller: Caller, param: str | None = None
    ) -> StoredConversation:
        """The conversation, if the caller may see it; else the 404 of an unknown id."""
        conversation = visible(caller, await self.store.get_conversation(conversation_id))
        if conversation is None:
            raise conversation_not_found(conversation_id, param)
        return conversation

    async def _owned(self, conversation_id: str, caller: Caller, param: str | None = None) -> None:
        """Before a write or a read by id: the caller's conversation (one lookup, skipped for
        the callers who see everything, whose 404 comes from the operation itself)."""
        if not sees_all(caller):
            await self._conversation(conversation_id, caller, param)

    # -- /v1/conversations ------------------------------------------------------------------

    async def create(self, body: Any, caller: Caller = ANONYMOUS) -> dict[str, Any]:
        body = _body_object(body)
        _check_known(body, frozenset({"items", "metadata"}))
        metadata = metadata_of(body) or {}
        items = _new_items(body.get("items"), required=False, seal_key=self.seal_key)
        conversation = StoredConversation(
            id=self.ids.conversation(),
            created_at=int(self.clock()),
            metadata=metadata,
            api_key_id=caller.key_id,
            team=caller.team,
        )
        await self.health.write(self.store.create_conversation(conversation, items))
        return conversation_json(conversation)

    async def retrieve(self, conversation_id: str, caller: Caller = ANONYMOUS) -> dict[str, Any]:
        return conversation_json(await self._conversation(conversation_id, caller))

    async def update(
        self, conversation_id: str, body: Any, caller: Caller = ANONYMOUS
    ) -> dict[str, Any]:
        body = _body_object(body)
        _check_known(body, frozenset({"metadata"}))
        if "metadata" not in body:
            raise RequestError(
                400,
                "Missing required parameter: 'metadata'.",
                param="metadata",
                code="missing_required_parameter",
            )
        metadata = metadata_of(body) or {}
        await self._owned(conversation_id, caller)
        updated = await self.health.write(self.store.update_conversation(conversation_id, metadata))
        if updated is None:
            raise conversation_not_found(conversation_id)
        return conversation_json(updated)

    async def delete(self, conversation_id: str, caller: Caller = ANONYMOUS) -> dict[str, Any]:
        await self._owned(conversation_id, caller)
        if not await self.health.write(self.store.delete_conversation(conversation_id)):
            raise conversation_not_found(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    # -- /v1/conversations/{id}/items -------------------------------------------------------

    async def add_items(
        self, conversation_id: str, body: Any, caller: Caller = ANONYMOUS
    ) -> dict[str, Any]:
        body = _body_object(body)
        _check_known(body, frozenset({"items"}))
        items = _new_items(body.get("items"), required=True, seal_key=self.seal_key)
        await self._owned(conversation_id, caller)
        if not await self.health.write(self.store.append_items(conversation_id, items)):
            raise conversation_not_found(conversation_id)
        return {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"],
            "last_id": items[-1]["id"],
            "has_more": False,
        }

    async def list_items(
        self,
        conversation_id: str,
        caller: Caller = ANONYMOUS,
        *,
        limit: int,
        order: Order,
        after: str | None,
    ) -> ItemPage:
        await self._owned(conversation_id, caller)
        page = await self.store.list_items(conversation_id, limit=limit, order=order, after=after)
        if page is None:
            raise conversation_not_found(conversation_id)
        return page

    async def item(
        self, conversation_id: str, item_id: str, caller: Caller = ANONYMOUS
    ) -> dict[str, Any]:
        await self._owned(conversation_id, caller)
        item = await self.store.get_item(conversation_id, item_id)
        if item is None:
            await self._conversation(conversation_id, caller)  # 404 for the conversation first
            raise _item_not_found(item_id)
        return item

    async def delete_item(
        self, conversation_id: str, item_id: str, caller: Caller = ANONYMOUS
    ) -> dict[str, Any]:
        await self._owned(conversation_id, caller)
        deleted = await self.health.write(self.store.delete_item(conversation_id, item_id))
        if deleted is None:
            raise conversation_not_found(conversation_id)
        if not deleted:
            raise _item_not_found(item_id)
        return conversation_json(await self._conversation(conversation_id, caller))

    # -- turns of POST /v1/responses --------------------------------------------------------

    async def history(
        self, conversation_id: str, caller: Caller = ANONYMOUS
    ) -> list[dict[str, Any]]:
        """The conversation's items, oldest first: the history of the next turn."""
        await self._owned(conversation_id, caller, "conversation")
        items = await self.store.conversation_items(conversation_id)
        if items is None:
            raise conversation_not_found(conversation_id, "conversation")
        return items

    async def append_turn(self, run: Run) -> None:
        """Append the finished turn's input and output items (see the module docstring)."""
        if run.conversation is None:
            return
        response = run.builder.response
        output = [item for item in response.get("output") or [] if isinstance(item, dict)]
        if not output and response.get("status") in ("failed", "cancelled"):
            return
        items = [*(_as_item(item) for item in run.canon.input_items), *output]
        if not items:
            return
        appended = await self.health.write(self.store.append_items(run.conversation, items))
        if not appended:  # deleted while the turn ran: nothing to grow
            log.warning(
                "conversation %s was deleted before response %s could be appended",
                run.conversation,
                response.get("id"),
            )
