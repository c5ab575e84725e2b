"""A WebSocket's own responses, kept for chaining while the socket lives (server/websocket_mode.py).

On a socket, `previous_response_id` may name a response made with `store: false` earlier on
the same socket: the Open Responses WebSocket mode keeps a connection-local copy of each
response, so a client can continue a conversation without storing it. `SocketMemory` holds
every response the socket made (stored or not), and `chain` walks those first, then the store
for the rest of the chain (a socket may continue from a response another request stored). The
memory ends with the socket (at most `MAX_KEPT` responses); nothing here is written anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from turnout.server.access.isolation import check_chain
from turnout.server.history import broken_chain, load_chain
from turnout.server.request_context import Caller
from turnout.server.run import Run
from turnout.server.stores.base import ChainError, ResponseStore, StoredResponse

__all__ = ["MAX_KEPT", "Finish", "SocketMemory"]

Finish = Callable[[Run], Awaitable[None]]

# Responses one socket keeps, the oldest dropped past it: memory stays bounded on a socket that
# lives for days (a dropped stored response is still found in the store; an unstored one is a
# 404 like any unstored response).
MAX_KEPT = 1000


class SocketMemory:
    """The responses one socket made, by id."""

    def __init__(self) -> None:
        self.records: dict[str, StoredResponse] = {}

    async def chain(
        self, store: ResponseStore, previous_response_id: str | None, caller: Caller
    ) -> list[StoredResponse]:
        """The chain ending at `previous_response_id`, oldest first: the socket's own links from
        memory, the older ones (if any) from the store (`history.load_chain`'s 404/400). The
        socket's own links are its caller's; each is checked all the same, as the store's are
        (one key per socket is the auth's rule, not this memory's)."""
        newest_first: list[StoredResponse] = []
        current = previous_response_id
        while current is not None and current in self.records:
            record = self.records[current]
            newest_first.append(record)
            current = record.previous_response_id
        newest_first.reverse()
        if previous_response_id is not None:
            try:
                check_chain(caller, newest_first, previous_response_id)
            except ChainError as exc:
                raise broken_chain(previous_response_id, exc) from None
        return await load_chain(store, current, caller) + newest_first

    def keeping(self, finish: Finish) -> Finish:
        """`finish` (the store write), then the response kept here: only once it is final and
        written (a failed store write raises, and the socket hears `response.failed`)."""

        async def finish_and_keep(run: Run) -> None:
            await finish(run)
            self.remember(run)

        return finish_and_keep

    def remember(self, run: Run) -> None:
        response = run.builder.response
        rid = str(response["id"])
        if len(self.records) >= MAX_KEPT:
            del self.records[next(iter(self.records))]
        self.records[rid] = StoredResponse(
            id=rid,
            created_at=int(response.get("created_at") or time.time()),
            model=str(response.get("model") or run.canon.model),
            provider=run.target.provider,
            status=str(response.get("status")),
            response=response,
            input_items=run.canon.input_items,
            events=None,  # never replayed: GET serves stored responses only
            request=run.request,
            previous_response_id=run.previous_response_id,
            deployment=run.target.deployment,
            attempts=run.attempts,
            cost=None,
            api_key_id=run.caller.key_id,
            team=run.caller.team,
        )
