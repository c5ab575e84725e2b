"""The Requests page (the newest stored responses, filtered) and one request's page: its
attempt trail, its input items, its output and its stream events.

Only stored responses are listed (`store: false` keeps no record, and a request refused before
any response existed has none either). Everything shown of a record is the user's text:
templates escape it (autoescape), never mark it safe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from turnout.server.stores.base import RecentFilter, ResponseStore, StoredResponse

__all__ = ["PAGE", "STATUSES", "RequestsView", "item_view", "request_context",
           "requests_context", "requests_view"]  # fmt: skip

PAGE = 50
STATUSES = ("completed", "incomplete", "failed", "cancelled", "in_progress", "queued")
MAX_EVENTS = 2000  # a long stream's events past this are counted, not shown


@dataclass(frozen=True, slots=True)
class RequestsView:
    model: str
    key: str
    status: str
    before: tuple[int, str] | None

    @property
    def filters(self) -> RecentFilter:
        return RecentFilter(
            model=self.model or None, api_key_id=self.key or None,
            status=self.status or None, before=self.before,
        )  # fmt: skip

    def params(self, **changes: str) -> str:
        """The query string of this view, with `changes`."""
        fields = {"model": self.model, "key": self.key, "status": self.status, **changes}
        return urlencode({k: v for k, v in fields.items() if v})


def _cursor(text: str | None) -> tuple[int, str] | None:
    """`before=<created_at>:<id>`, the last row of the page before."""
    if not text:
        return None
    at, sep, rid = text.partition(":")
    try:
        return (int(at), rid) if sep and rid else None
    except ValueError:
        return None


def requests_view(params: Mapping[str, str]) -> RequestsView:
    status = params.get("status") or ""
    return RequestsView(
        model=(params.get("model") or "").strip()[:512],
        key=(params.get("key") or "").strip()[:128],
        status=status if status in STATUSES else "",
        before=_cursor(params.get("before")),
    )


async def requests_context(
    store: ResponseStore, view: RequestsView, label: Callable[[str | None], str]
) -> dict[str, Any]:
    rows = await store.recent(PAGE + 1, view.filters)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    older = None
    if more:
        last = rows[-1]
        older = view.params(before=f"{last.created_at}:{last.id}")
    shown = [(row, label(row.api_key_id)) for row in rows]
    return {"view": view, "rows": shown, "older": older, "statuses": STATUSES}


def _texts(content: Any) -> list[str]:
    """The readable text of an item's content: a string, or its text/refusal parts."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str):
                    out.append(text)
                elif part.get("type"):
                    out.append(f"[{part['type']}]")
    return out


def item_view(item: Any) -> dict[str, Any]:
    """An item as the page shows it: its type, role, its text in plain words, and the JSON."""
    if not isinstance(item, dict):
        return {"type": type(item).__name__, "role": None, "texts": [str(item)], "raw": item}
    kind = str(item.get("type") or ("message" if "role" in item else "item"))
    texts = _texts(item.get("content"))
    if kind == "function_call":
        texts = [f"{item.get('name')}({item.get('arguments') or ''})"]
    elif kind == "function_call_output":
        output = item.get("output")
        texts = [output] if isinstance(output, str) else _texts(output)
    elif kind == "reasoning":
        texts = _texts(item.get("summary"))
    return {"type": kind, "role": item.get("role"), "texts": texts, "raw": item}


def _attempts(record: StoredResponse) -> list[dict[str, Any]]:
    return [a for a in record.attempts if isinstance(a, dict)]


async def request_context(
    store: ResponseStore, response_id: str, label: Callable[[str | None], str]
) -> dict[str, Any] | None:
    """A stored response's page, or None (unknown or deleted: the same answer)."""
    record = await store.get(response_id)
    if record is None:
        return None
    output = record.response.get("output") if isinstance(record.response, dict) else None
    events = record.events or []
    return {
        "record": record,
        "key": label(record.api_key_id),
        "attempts": _attempts(record),
        "inputs": [item_view(i) for i in record.input_items],
        "outputs": [item_view(i) for i in output or []],
        "instructions": record.response.get("instructions"),
        "error": record.response.get("error"),
        "events": events[:MAX_EVENTS],
        "events_hidden": max(0, len(events) - MAX_EVENTS),
        "stored_events": record.events is not None,
        "parameters": record.request,
    }
