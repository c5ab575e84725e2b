"""Admission: the checks a request passes before any upstream call, and what each learns once
the response is priced. One concern per check, each in its own module (model access, budgets,
rate limits); this module only runs them in order.

* `admit(caller, model)` runs every check; a check refuses by raising `RequestError` (403
  `model_not_allowed`, 429 `insufficient_quota` / `rate_limit_exceeded` with `retry_after`) and
  may return headers for the reply (the `x-ratelimit-*` family), which the gateway adds to the
  JSON reply or the SSE stream, and which a later check's refusal carries too.
* `settle(caller, cost, counts)` tells every check what a finished response cost (also with
  `store: false`: a budget counts what was paid, not what was kept). Called by the Finisher
  once per priced response, before its terminal event leaves.

Cheap by construction: a check that has nothing to check for this caller (the master key, a
key without limits) returns at once; there is no lock and no store round trip on the way in
(each check keeps what it needs in memory and reads the store once per period or per second).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from turnout.engine.errors import RequestError
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller

__all__ = ["Admission", "Check"]


class Check(Protocol):
    async def admit(self, caller: Caller, model: str) -> Mapping[str, str] | None:
        """Refuse (raise `RequestError`) or let through, optionally with reply headers."""
        ...

    def settle(self, caller: Caller, cost: float | None, counts: UsageCounts) -> None:
        """What a response admitted for `caller` cost, once priced."""
        ...


class Admission:
    def __init__(self, checks: Sequence[Check] = ()) -> None:
        self.checks = tuple(checks)

    async def admit(self, caller: Caller, model: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        for check in self.checks:
            try:
                more = await check.admit(caller, model)
            except RequestError as exc:
                # A refusal carries the headers of the checks before it (a budget's 429 still
                # says where the key stands with its rate limits).
                if headers:
                    exc.headers = {**headers, **(exc.headers or {})}
                raise
            if more:
                headers.update(more)
        return headers

    def settle(self, caller: Caller, cost: float | None, counts: UsageCounts) -> None:
        for check in self.checks:
            check.settle(caller, cost, counts)

    async def aclose(self) -> None:
        """Stop what checks run in the background (a budget's store re-reads), before the
        store closes."""
        for check in self.checks:
            close = getattr(check, "aclose", None)
            if close is not None:
                await close()
