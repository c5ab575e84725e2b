"""Who is calling, and within which limits: built once per request by the route and passed
explicitly to the gateway (never read from a context variable).

The telemetry keeps its own per-request record (`server/telemetry/hub.py`, `CURRENT`); identity
travels here, so code that stores or checks who made a request does not depend on the telemetry
being wired in. Who the bearer is was decided before (`server/access/auth.py`); the `Caller`
only carries the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from turnout.server.stores.keys import StoredKey

__all__ = ["ANONYMOUS", "Caller", "Role"]

# open: the gateway has no master key, so nobody is told apart (every caller sees everything);
# master: the master key, which sees and may do everything; key: a virtual key (its settings
# in `key`), which sees what it and its team made.
Role = Literal["open", "master", "key"]


@dataclass(frozen=True, slots=True)
class Caller:
    """One request's caller. Cheap on purpose: one small object per request, no lookups."""

    # A virtual key's id (`key_…`); else `key_` + 24 hex digits of the bearer token's SHA-256
    # (`access.secrets.token_key_id`), or None: groups spend by key without holding the key.
    key_id: str | None = None
    # The virtual key's team; None for the master key, an open gateway and team-less keys.
    team: str | None = None
    # The client's `x-request-id`, as sent (correlation only: never trusted, never parsed).
    request_id: str | None = None
    # `time.monotonic()` by which the upstream attempts must have answered (`router.timeout_s`
    # from the request's arrival); None: from the first attempt.
    deadline: float | None = None
    role: Role = "open"
    key: StoredKey | None = None  # the virtual key's settings (role "key")

    def may_see(self, api_key_id: str | None, team: str | None) -> bool:
        """Whether this caller may read, chain from, replay, cancel or delete what the key
        `api_key_id` of team `team` made: its own things and its team's; everything for the
        master key and on an open gateway."""
        if self.role != "key":
            return True
        return api_key_id == self.key_id or (team is not None and team == self.team)


# For callers with no HTTP request behind them (`turnout record`, tests).
ANONYMOUS = Caller()
