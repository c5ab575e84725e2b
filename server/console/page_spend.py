"""The Spend page: cost and tokens per time bucket, stacked by group, with totals and a CSV.

Dates are UTC days (the store's buckets are aligned on the unix epoch). A range is capped
(a year of days, two weeks of hours) so a chart stays a few hundred bars.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from turnout.server.console.charts import Chart, stacked_bars
from turnout.server.console.render import money
from turnout.server.stores.base import ResponseStore, SpendPoint, SpendQuery, SpendRow

__all__ = ["GROUPS", "SpendView", "spend_context", "spend_csv", "spend_view"]

# The page's group names -> SpendQuery.group_by.
GROUPS = {
    "model": "model", "key": "api_key", "team": "team", "deployment": "deployment",
    "provider": "provider",
}  # fmt: skip
BUCKETS = {"day": 86_400, "hour": 3_600}
_MAX_DAYS = {"day": 366, "hour": 14}
_DEFAULT_DAYS = {"day": 7, "hour": 1}
DAY = 86_400


@dataclass(frozen=True, slots=True)
class SpendView:
    group: str  # a key of GROUPS
    bucket: str  # a key of BUCKETS
    first: str  # YYYY-MM-DD, the first day shown (UTC)
    last: str  # the last day shown, inclusive
    start: int  # unix seconds, [start, end)
    end: int
    note: str | None = None  # what was changed in the asked range, for the page

    @property
    def query(self) -> SpendQuery:
        return SpendQuery(GROUPS[self.group], start=self.start, end=self.end)

    @property
    def bucket_s(self) -> int:
        return BUCKETS[self.bucket]

    def params(self) -> dict[str, str]:
        return {"group": self.group, "bucket": self.bucket, "from": self.first, "to": self.last}


def _day(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def spend_view(params: Mapping[str, str], now: float) -> SpendView:
    """What the query string asks for, with defaults (the last week by day, today by hour)
    and the range capped."""
    group = params.get("group") or "model"
    group = group if group in GROUPS else "model"
    bucket = params.get("bucket") or "day"
    bucket = bucket if bucket in BUCKETS else "day"
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    last = _day(params.get("to")) or today
    first = _day(params.get("from")) or last - timedelta(days=_DEFAULT_DAYS[bucket] - 1)
    if first > last:
        first, last = last, first
    note = None
    days = (last - first).days + 1
    if days > _MAX_DAYS[bucket]:
        first = last - timedelta(days=_MAX_DAYS[bucket] - 1)
        note = f"At most {_MAX_DAYS[bucket]} days by {bucket}: showing the last of them."
    start = int(first.timestamp())
    end = int((last + timedelta(days=1)).timestamp())
    fmt = "%Y-%m-%d"
    return SpendView(group, bucket, first.strftime(fmt), last.strftime(fmt), start, end, note)


def _bucket_label(bucket_s: int) -> Callable[[int], str]:
    fmt = "%Y-%m-%d" if bucket_s >= DAY else "%m-%d %H:00"
    return lambda b: datetime.fromtimestamp(b, UTC).strftime(fmt)


def _tokens(row: SpendRow) -> int:
    return row.input_tokens + row.output_tokens


async def spend_context(
    store: ResponseStore, view: SpendView, label: Callable[[str | None], str]
) -> dict[str, Any]:
    """The page's charts and totals; `label` names a group (a key id: its name)."""
    points = await store.spend_series(view.query, view.bucket_s)
    report = await store.spend(view.query)
    buckets = list(range(view.start, view.end, view.bucket_s))
    cost: dict[str, dict[int, float]] = {}
    tokens: dict[str, dict[int, float]] = {}
    for p in points:
        name = label(p.row.key)
        per_cost = cost.setdefault(name, {})
        per_cost[p.bucket] = per_cost.get(p.bucket, 0.0) + (p.row.cost or 0.0)
        per_tokens = tokens.setdefault(name, {})
        per_tokens[p.bucket] = per_tokens.get(p.bucket, 0.0) + _tokens(p.row)
    names = _bucket_label(view.bucket_s)
    charts: list[Chart] = [
        stacked_bars("Cost (USD)", buckets, cost, fmt=money, bucket_label=names),
        stacked_bars("Tokens (input + output)", buckets, tokens, fmt=_short, bucket_label=names),
    ]
    rows = [(label(row.key), row) for row in report.data]
    return {"view": view, "charts": charts, "rows": rows, "total": report.total}


def _short(value: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}" if value % 1 else f"{int(value)}"


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def spend_csv(points: list[SpendPoint], label: Callable[[str | None], str]) -> bytes:
    """One line per bucket and group, as the charts show them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([
        "bucket_start_utc", "group", "group_id", "requests", "input_tokens", "cached_tokens",
        "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_usd",
        "unpriced_requests",
    ])  # fmt: skip
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    for p in points:
        r = p.row
        when = datetime.fromtimestamp(p.bucket, UTC).strftime(fmt)
        cost = "" if r.cost is None else f"{r.cost:.10f}".rstrip("0").rstrip(".")
        writer.writerow([_cell(v) for v in (
            when, label(r.key), r.key or "", r.requests, r.input_tokens, r.cached_tokens,
            r.cache_write_tokens, r.output_tokens, r.reasoning_tokens, cost, r.unpriced_requests,
        )])  # fmt: skip
    return out.getvalue().encode()
