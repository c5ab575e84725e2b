"""Isolation: what a caller may see of what others made (issue 14, point 3).

The rule itself is `Caller.may_see(api_key_id, team)` (server/request_context.py): a virtual key
sees what it made and what its team made; the master key, and every caller of an open gateway
(no master key: nobody is told apart), see everything. This module applies it, once per read
path:

* `visible(caller, thing)`: a stored response, a live background response or a conversation, or
  None when the caller may not see it. The caller then gets the very 404 an unknown id gets
  (same message, same code): an id never tells a stranger that it exists.
* `check_chain(caller, chain, previous_response_id)`: every link of a `previous_response_id`
  chain, or the 404 `previous_response_not_found` a missing link gets (history.py).
* `spend_scope(caller, api_key_id, team)`: the filters `GET /v1/spend` applies.

`sees_all(caller)` lets a read path keep its cheaper form (one column instead of the whole
record) for the callers no check applies to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from turnout.engine.errors import RequestError
from turnout.server.request_context import Caller
from turnout.server.stores.base import MissingChainLinkError, StoredResponse

__all__ = ["Owned", "check_chain", "sees_all", "spend_scope", "visible"]


class Owned(Protocol):
    """Anything made by a caller: who made it, and that key's team."""

    @property
    def api_key_id(self) -> str | None: ...
    @property
    def team(self) -> str | None: ...


T = TypeVar("T", bound=Owned)


def sees_all(caller: Caller) -> bool:
    """No check applies: the master key, or an open gateway."""
    return caller.role != "key"


def visible(caller: Caller, thing: T | None) -> T | None:
    """`thing` when the caller may see it, else None (answered like an unknown id)."""
    if thing is None or caller.may_see(thing.api_key_id, thing.team):
        return thing
    return None


def check_chain(caller: Caller, chain: Sequence[StoredResponse], head: str) -> None:
    """Every link of the chain ending at `head` must be the caller's to see: each was, to
    whoever chained it, but a key may have changed teams since, and the master key chains from
    anyone's. A link that is not raises `MissingChainLinkError`, as a deleted one does. The
    head is checked first: another key's head must fail exactly as an unknown id, never as a
    chain whose older link broke (which would say the head exists)."""
    for link in reversed(chain):
        if not caller.may_see(link.api_key_id, link.team):
            raise MissingChainLinkError(head, link.id)


def spend_scope(
    caller: Caller, api_key_id: str | None, team: str | None
) -> tuple[str | None, str | None]:
    """The `(api_key_id, team)` filters of a spend query. The master key (and an open gateway)
    may filter on anything or nothing; a virtual key sees its own spend, or with `team=` its
    own team's (grouped as it likes: `group_by=api_key` shows its team-mates' shares)."""
    if sees_all(caller):
        return api_key_id, team
    if team is not None:
        if team != caller.team:
            raise RequestError(
                403,
                f"The API key '{caller.key_id}' may read the spend of its own team only"
                + (f" ('{caller.team}')." if caller.team else "; it has none."),
                param="team",
                code="permission_denied",
            )
        return api_key_id, team
    if api_key_id is not None and api_key_id != caller.key_id:
        raise RequestError(
            403,
            f"The API key '{caller.key_id}' may read its own spend only (api_key_id="
            f"{caller.key_id}), or its team's with team=<its team>.",
            param="api_key_id",
            code="permission_denied",
        )
    return caller.key_id, None
