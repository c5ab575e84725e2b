"""Who is calling, and within which limits: built once per request by the route and passed
explicitly to the gateway (never read from a context variable).

The telemetry keeps its own per-request record (`server/telemetry/hub.py`, `CURRENT`); identity
travels here, so code that stores or checks who made a request does not depend on the telemetry
being wired in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANONYMOUS", "Caller"]


@dataclass(frozen=True, slots=True)
class Caller:
    """One request's caller. Cheap on purpose: one small object per request, no lookups."""

    # `key_` + 24 hex digits of the bearer token's SHA-256 (`routes.api_key_id`), or None:
    # groups spend by key without ever holding the key.
    key_id: str | None = None
    # Who owns the key. Reserved: keys carry no owner yet, so this is always None today.
    owner: str | None = None
    # The client's `x-request-id`, as sent (correlation only: never trusted, never parsed).
    request_id: str | None = None
    # `time.monotonic()` by which the upstream attempts must have answered (`router.timeout_s`
    # from the request's arrival); None: from the first attempt.
    deadline: float | None = None


# For callers with no HTTP request behind them (`turnout record`, tests).
ANONYMOUS = Caller()
