"""The `previous_response_id` chain: the stored responses a request continues, oldest first,
and the items they hand the next turn. Every link must be the caller's to see
(server/access/isolation.py): another key's response is a missing link, answered exactly as an
unknown id is."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from turnout.engine.canonical import History, extend_history
from turnout.engine.errors import RequestError
from turnout.server.access.isolation import check_chain
from turnout.server.request_context import Caller
from turnout.server.stores.base import ChainError, ResponseStore, StoredResponse

__all__ = [
    "UNFINISHED",
    "Histories",
    "broken_chain",
    "items",
    "load_chain",
    "previous_response_id",
]

# Statuses of a background response still at work: nothing can continue from it yet.
UNFINISHED = frozenset({"queued", "in_progress"})


async def load_chain(
    store: ResponseStore, previous_response_id: str | None, caller: Caller
) -> list[StoredResponse]:
    """The chain ending at `previous_response_id` (404 `previous_response_not_found` when a
    link is missing or not the caller's, 400 `previous_response_not_finished` while its end is
    still at work)."""
    if previous_response_id is None:
        return []
    try:
        chain = await store.chain(previous_response_id)
        check_chain(caller, chain, previous_response_id)
    except ChainError as exc:
        raise broken_chain(previous_response_id, exc) from None
    if chain and chain[-1].status in UNFINISHED:
        raise RequestError(
            400,
            f"Previous response with id '{previous_response_id}' is still "
            f"{chain[-1].status}: wait until it has finished to continue from it.",
            param="previous_response_id",
            code="previous_response_not_finished",
        )
    return chain


def broken_chain(previous_response_id: str, exc: ChainError) -> RequestError:
    """The 404 of an unknown, deleted or someone else's link. It names the link that broke:
    an ancestor deleted mid-chain is not the id the client sent, which GET still finds."""
    message = f"Previous response with id '{previous_response_id}' not found."
    if exc.at_id != previous_response_id:
        message = f"The conversation before '{previous_response_id}' cannot be rebuilt: {exc}"
    return RequestError(
        404, message, param="previous_response_id", code="previous_response_not_found"
    )


def items(chain: Sequence[StoredResponse]) -> list[dict[str, Any]]:
    """Input + output items of the chain, oldest first (instructions are not carried)."""
    out: list[dict[str, Any]] = []
    for record in chain:
        out.extend(record.input_items)
        out.extend(record.response.get("output") or [])
    return out


class Histories:
    """The normalized history (engine.canonical.History) of the last chains continued, by their
    links' ids, so that a turn at depth N normalizes its parent's history plus one link instead
    of N links again (the next turn of a chain is its previous turn's chain plus one record).

    Keyed by every link's id, never by the head alone: a chain read from the store is already
    checked link by link (load_chain: a deleted or someone else's link is a 404 before this
    runs), and a finished record is never rewritten, so the same ids are the same items. Two
    branches from one parent share the parent's entry and extend copies of it. Least recently
    used first out; event-loop only."""

    def __init__(self, seal_key: bytes | None, size: int = 32) -> None:
        self.seal_key = seal_key
        self.size = size
        self._by_links: OrderedDict[tuple[str, ...], History] = OrderedDict()

    def history(self, chain: Sequence[StoredResponse]) -> History | list[dict[str, Any]]:
        """What `normalize` takes as the history of `chain`."""
        if not chain:
            return []
        links = tuple(record.id for record in chain)
        found = self._by_links.get(links)
        if found is not None:
            self._by_links.move_to_end(links)
            return found
        base = self._by_links.get(links[:-1])
        try:
            if base is None:
                built = extend_history(items(chain), seal_key=self.seal_key)
            else:
                built = extend_history(items(chain[-1:]), base)
        except RequestError:
            # A history normalize refuses: let it refuse it, after its checks of the body.
            return items(chain)
        if chain[-1].status not in UNFINISHED:
            self._by_links[links] = built
            while len(self._by_links) > self.size:
                self._by_links.popitem(last=False)
        return built


def previous_response_id(body: Any) -> str | None:
    """The create (or count) body's `previous_response_id`, checked; the body must be an
    object."""
    if not isinstance(body, dict):
        raise RequestError(
            400, "The request body must be a JSON object.", param=None, code="invalid_type"
        )
    prev = body.get("previous_response_id")
    if prev is not None and not isinstance(prev, str):
        raise RequestError(
            400,
            "Invalid type for 'previous_response_id': expected a string.",
            param="previous_response_id",
            code="invalid_type",
        )
    return prev
