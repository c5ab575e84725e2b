"""The admission checks every request passes, in order (`admission.py` runs them).

Built in one place, so a new check is one line here. The order matters: a check that refuses
stops the ones after it, and the ones before it have already counted the request.

1. model access (`models.py`): a 403 before anything is counted;
2. rate limits (`rate_limits.py`): counts the request, so it comes after the checks that
   refuse for good and before the budget, whose 429 then carries the `x-ratelimit-*` headers;
3. budgets (`budgets.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from turnout.server.access.admission import Check
from turnout.server.access.budgets import Budgets
from turnout.server.access.rate_limits import RateLimits
from turnout.server.access.teams import Teams
from turnout.server.stores.base import ResponseStore

if TYPE_CHECKING:
    from turnout.server.state.redis import RedisState

__all__ = ["admission_checks"]


def admission_checks(
    store: ResponseStore,
    teams: Teams,
    model_access: Check,
    *,
    clock: Callable[[], float] = time.time,
    state: RedisState | None = None,
) -> list[Check]:
    """The checks, in order; `clock` is the wall clock budget periods are computed with.
    With shared `state` (Redis), rate limits and budgets are one check making one round trip
    (server/state/limits.py), in the same order."""
    if state is not None:
        from turnout.server.state.limits import SharedLimits  # imports redis: only when used

        return [model_access, SharedLimits(state, store, teams, clock=clock)]
    return [
        model_access,
        RateLimits(teams),
        Budgets(store, teams, clock=clock),
    ]
