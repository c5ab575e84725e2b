"""Slowing down password guessing at the console's login.

Each failed login costs its client a short delay before the answer, and a client (by IP
address) with `max_failures` failures within `window_s` is refused without the password being
looked at until the oldest of them leaves the window. A success forgets the address's failures.
Per process, in a bounded table: a guesser spread over many addresses is slowed, not stopped;
the master key should be long and random anyway (it is a bearer token for everything).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 300.0,
        delay_s: float = 0.5,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delay_s = delay_s
        self._max = max_failures
        self._window = window_s
        self._max_tracked = max_tracked
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        cutoff = self._clock() - self._window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def wait_s(self, client: str) -> float:
        """Seconds before `client` may try again (0: now)."""
        times = self._recent(client)
        if times is None or len(times) < self._max:
            return 0.0
        return max(0.0, times[0] + self._window - self._clock())

    def failed(self, client: str) -> None:
        times = self._recent(client)
        if times is None:
            if len(self._failures) >= self._max_tracked:
                self._failures.pop(next(iter(self._failures)))  # the oldest address
            times = self._failures[client] = deque(maxlen=self._max)  # the last few count
        times.append(self._clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
