"""Bounded Prometheus label values: what a client types must not grow the metrics without end.

Every distinct label value is a series kept in memory and in every scrape for the life of the
process, and the `model` label is whatever the client sent. `LabelValues` keeps a value's own
series when it is configured (an alias, a deployment) or has been served (an upstream answered
2xx), up to `cap` served values; anything else is counted as `other`: names no upstream accepted
(typos, probes, a flood of made-up models) and, past the cap, further served ones.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_MAX_LABEL_VALUES", "OTHER", "LabelValues"]

DEFAULT_MAX_LABEL_VALUES = 1000
OTHER = "other"
# A served model name has at most 256 characters (engine/canonical.py checks it); an error code
# is the upstream's text: a longer value is not a name worth a series.
_MAX_LENGTH = 256


class LabelValues:
    """The values one label may take: configured ones, plus at most `cap` others."""

    __slots__ = ("_cap", "_kept", "_pinned")

    def __init__(self, cap: int = DEFAULT_MAX_LABEL_VALUES, pinned: Iterable[str] = ()) -> None:
        self._cap = max(1, int(cap))
        self._pinned = frozenset(pinned)
        self._kept: set[str] = set()

    def __call__(self, value: str, *, proven: bool = True) -> str:
        """The label value to count `value` under: itself, or `OTHER`. `proven`: the value
        has been served (an upstream answered 2xx), not merely asked for."""
        if not value or value in self._pinned or value in self._kept:
            return value
        if proven and len(self._kept) < self._cap and len(value) <= _MAX_LENGTH:
            self._kept.add(value)
            return value
        return OTHER

    def __len__(self) -> int:
        """How many unconfigured values have their own series."""
        return len(self._kept)
