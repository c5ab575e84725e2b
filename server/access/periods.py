"""Budget periods: `"30d"`, `"1d"`, `"12h"`, `"90m"`, `"30s"` (a number and a unit), or None for
a lifetime budget.

A key's periods start when the key was created and follow each other without gaps, so a
`"30d"` key created on the 3rd at 14:00 resets on the 3rd of the next month-ish at 14:00, every
30 days; the current period of any moment is computed, never stored (nothing to reset, nothing
to drift between replicas).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Period", "parse_period", "period_seconds"]

_PERIOD = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def period_seconds(text: str) -> int:
    """The length of a period; `ValueError` naming the value when it is not one."""
    match = _PERIOD.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"budget_period {text!r} is not a period: a number and a unit (s, m, h, d), "
            "e.g. '30d', '1d', '12h'"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_period(text: str | None) -> int | None:
    """Seconds, or None for a lifetime budget."""
    return None if text is None else period_seconds(text)


@dataclass(frozen=True, slots=True)
class Period:
    """The period `[start, end)` that holds `now`; `end` None for a lifetime budget."""

    start: int
    end: int | None

    @classmethod
    def at(cls, now: float, anchor: int, length: int | None) -> Period:
        """The period of `now` for periods of `length` seconds starting at `anchor` (the key's
        or team's creation time)."""
        if length is None:
            return cls(0, None)
        elapsed = max(0, int(now) - anchor)
        start = anchor + (elapsed // length) * length
        return cls(start, start + length)
