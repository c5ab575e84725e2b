"""The response store contract: one record per response, behind a small async interface.

Modelled on ``litestar.stores``: a tiny abstract base, several interchangeable backends
(``memory.py``, ``sqlite.py``, ``postgres.py``) and one contract test suite run over all of them
(``tests/test_store_contract.py``). Routes only ever see ``ResponseStore``.

Decisions that every backend honours (the contract suite checks them):

* ``put`` inserts or replaces the whole record and is durable when it returns.
* ``delete`` leaves a tombstone: the row keeps its metadata (id, created_at, model, provider,
  status, deployment, attempts, cost, token counts, api_key_id, tags) for accounting, but the
  content the user asked us to forget (response, input_items, events, request) is dropped.
  ``get`` never returns a tombstone, and deleting it again returns ``False``.
* Records are JSON all the way down (backends copy through ``orjson``), so what ``get``
  returns never aliases what was ``put``; integers must fit in 64 bits (an orjson limit).
* ``chain`` raises :class:`MissingChainLinkError` when any link is missing or deleted and
  :class:`ChainCycleError` on a cycle. It raises rather than returning a partial history
  because answering from half a conversation would be silently wrong; the route turns the
  error into OpenAI's 404 ``Previous response with id '...' not found``.
* ``spend`` totals the accounting fields of every record, tombstones included (a deleted
  response was still paid for), over ``created_at`` in ``[start, end)``. Backends answer it
  from an iteration of :class:`AccountingRow` (``accounting``, then :func:`aggregate_spend`) or
  natively (SQLite: one ``GROUP BY``); both give the same numbers.
* Lifecycle: constructing a store does no I/O and needs no event loop; ``await open()``
  acquires what it needs (files, connections, schema) on the server's loop, ``await aclose()``
  lets accepted writes land and releases everything. Both are idempotent; a closed store
  refuses every call, ``open()`` included (make a new one). A store that holds nothing to
  open (``memory://``) is usable from construction.
* ``unfinished``, ``accounting`` and ``spend`` are abstract, like the lifecycle: a default
  would silently turn off crash recovery or spend for a new backend.

A backend is chosen by its URL scheme (``registry.py``): it registers with
``@register_store("scheme")`` and validates its own URLs in ``parse_url`` (no I/O: the config
loader calls it).
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import orjson

__all__ = [
    "GROUP_BY_COLUMNS",
    "AccountingRow",
    "ChainCycleError",
    "ChainError",
    "ItemPage",
    "MissingChainLinkError",
    "Order",
    "RecentFilter",
    "Renewal",
    "ResponseStore",
    "SpendPoint",
    "SpendQuery",
    "SpendReport",
    "SpendRow",
    "StoreUrl",
    "StoredResponse",
    "UnknownCursorError",
    "aggregate_series",
    "aggregate_spend",
    "page_items",
    "record_from_json",
    "record_to_json",
    "select_recent",
    "tombstone",
]

Order = Literal["asc", "desc"]


@dataclass(slots=True)
class StoredResponse:
    """One response as stored: the Response object plus what is needed to replay or chain it."""

    id: str
    created_at: int
    model: str
    provider: str | None
    status: str
    response: dict[str, Any]  # the Response object, exactly as served
    input_items: list[dict[str, Any]]  # each item carries an "id" (the input_items cursor)
    events: list[dict[str, Any]] | None  # full response.* list, for GET ?stream=true replay
    request: dict[str, Any]  # the client's body, secrets removed by the caller
    previous_response_id: str | None
    deployment: str | None
    attempts: list[dict[str, Any]]  # one entry per upstream attempt (provider, status, ...)
    cost: float | None
    deleted: bool = False
    # Accounting, kept by tombstones too (usage totals as OpenAI counts them).
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    api_key_id: str | None = None  # "key_" + a hash of the bearer token, never the key
    tags: dict[str, str] = field(default_factory=dict)  # the request's metadata
    team: str | None = None  # the team of the key that made it (a team-mate may read it)
    # From the start of the run to its store write (queue time included for a background
    # response); None for records written before it was kept.
    duration_ms: float | None = None
    # A background response at work: the process running it (hostname:pid:random) and the
    # unix time its lease runs until (renewed while it runs; server/leases.py).
    owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True, slots=True)
class ItemPage:
    """One page of input items, shaped like OpenAI's ResponseItemList."""

    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


# group_by value -> the StoredResponse attribute it groups on ("metadata:<key>" aside).
GROUP_BY_COLUMNS = {
    "model": "model",
    "deployment": "deployment",
    "provider": "provider",
    "api_key": "api_key_id",
    "team": "team",
}
# OpenAI caps metadata keys at 64 characters; quotes and backslashes are refused so the key can
# sit inside a JSON path.
_TAG_KEY = re.compile(r'[^"\\\x00-\x1f]{1,64}')


@dataclass(frozen=True, slots=True)
class SpendQuery:
    """Totals grouped by ``group_by`` over ``created_at`` in ``[start, end)``."""

    group_by: str = "model"
    start: int | None = None
    end: int | None = None
    model: str | None = None  # only records of this model
    # Only records of this key / of this team (a key's or a team's own spend, budgets).
    api_key_id: str | None = None
    team: str | None = None

    def __post_init__(self) -> None:
        if self.group_by in GROUP_BY_COLUMNS:
            return
        key = self.tag_key
        if key is None or not _TAG_KEY.fullmatch(key):
            raise ValueError(
                "group_by must be model, deployment, provider, api_key, team or metadata:<key>"
            )

    @property
    def tag_key(self) -> str | None:
        prefix, sep, key = self.group_by.partition(":")
        return key if prefix == "metadata" and sep else None


@dataclass(frozen=True, slots=True)
class AccountingRow:
    """What spend and the console's request list need of one record: small fields only, kept
    by tombstones too (no Response, items or events)."""

    id: str
    status: str
    deleted: bool
    duration_ms: float | None
    created_at: int
    model: str
    provider: str | None
    deployment: str | None
    api_key_id: str | None
    team: str | None
    tags: dict[str, str]
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost: float | None

    @classmethod
    def of(cls, r: StoredResponse) -> AccountingRow:
        # By name: every field is the StoredResponse attribute of the same name.
        return cls(**{name: getattr(r, name) for name in _ACCOUNTING_FIELDS})


_ACCOUNTING_FIELDS = tuple(f.name for f in dataclasses.fields(AccountingRow))


@dataclass(slots=True)
class SpendRow:
    """One group's totals. ``cost`` is the sum over priced records (None when none was
    priced); ``unpriced_requests`` counts those whose price was unknown."""

    key: str | None
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    unpriced_requests: int = 0

    def add(self, other: SpendRow) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.unpriced_requests += other.unpriced_requests
        if other.cost is not None:
            self.cost = other.cost + (self.cost or 0.0)

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.cost is not None:
            data["cost"] = round(self.cost, 10)
        return data


@dataclass(frozen=True, slots=True)
class SpendReport:
    query: SpendQuery
    data: list[SpendRow]  # sorted by cost, highest first, then key
    total: SpendRow

    def as_json(self) -> dict[str, Any]:
        """The documented `GET /v1/spend` body."""
        total = self.total.as_json()
        del total["key"]
        return {
            "object": "spend",
            "group_by": self.query.group_by,
            "start": self.query.start,
            "end": self.query.end,
            "data": [row.as_json() for row in self.data],
            "total": total,
        }


def finish_report(query: SpendQuery, rows: Iterable[SpendRow]) -> SpendReport:
    data = sorted(rows, key=lambda r: (-(r.cost or 0.0), r.key is None, r.key or ""))
    total = SpendRow(key=None)
    for row in data:
        total.add(row)
    return SpendReport(query, data, total)


def _matches(query: SpendQuery, r: AccountingRow) -> bool:
    """``r`` is within the query's ``[start, end)`` and filters."""
    if query.start is not None and r.created_at < query.start:
        return False
    if query.end is not None and r.created_at >= query.end:
        return False
    if query.model is not None and r.model != query.model:
        return False
    if query.api_key_id is not None and r.api_key_id != query.api_key_id:
        return False
    return query.team is None or r.team == query.team


def _grouper(query: SpendQuery) -> Callable[[AccountingRow], str | None]:
    """The group key of a row, as the query groups (worked out once per query)."""
    tag = query.tag_key
    if tag is not None:
        return lambda r: None if (v := r.tags.get(tag)) is None else str(v)
    column = GROUP_BY_COLUMNS[query.group_by]
    return lambda r: None if (v := getattr(r, column)) is None else str(v)


def _one(key: str | None, r: AccountingRow) -> SpendRow:
    return SpendRow(
        key, 1, r.input_tokens, r.cached_tokens, r.cache_write_tokens, r.output_tokens,
        r.reasoning_tokens, r.cost, 1 if r.cost is None else 0,
    )  # fmt: skip


def aggregate_spend(query: SpendQuery, rows: Iterable[AccountingRow]) -> SpendReport:
    """The reference implementation of ``spend`` over an iteration of rows."""
    groups: dict[str | None, SpendRow] = {}
    group_key = _grouper(query)
    for r in rows:
        if not _matches(query, r):
            continue
        key = group_key(r)
        row = groups.get(key)
        if row is None:
            row = groups[key] = SpendRow(key=key)
        row.add(_one(key, r))
    return finish_report(query, groups.values())


@dataclass(frozen=True, slots=True)
class SpendPoint:
    """One group's totals in one time bucket of a spend series."""

    bucket: int  # the bucket's start: created_at // bucket_seconds * bucket_seconds (UTC)
    row: SpendRow  # row.key is the group


def check_bucket(bucket_seconds: int) -> None:
    if bucket_seconds < 1:
        raise ValueError(f"bucket_seconds must be >= 1, got {bucket_seconds}")


def finish_series(points: Iterable[SpendPoint]) -> list[SpendPoint]:
    """Oldest bucket first; in a bucket, the same order as a report (cost, then key)."""
    return sorted(
        points,
        key=lambda p: (p.bucket, -(p.row.cost or 0.0), p.row.key is None, p.row.key or ""),
    )


def aggregate_series(
    query: SpendQuery, bucket_seconds: int, rows: Iterable[AccountingRow]
) -> list[SpendPoint]:
    """The reference implementation of ``spend_series`` over an iteration of rows."""
    check_bucket(bucket_seconds)
    groups: dict[tuple[int, str | None], SpendRow] = {}
    group_key = _grouper(query)
    for r in rows:
        if not _matches(query, r):
            continue
        key = group_key(r)
        bucket = r.created_at // bucket_seconds * bucket_seconds
        row = groups.get((bucket, key))
        if row is None:
            row = groups[(bucket, key)] = SpendRow(key=key)
        row.add(_one(key, r))
    return finish_series(SpendPoint(bucket, row) for (bucket, _k), row in groups.items())


@dataclass(frozen=True, slots=True)
class RecentFilter:
    """Which records ``recent`` lists; ``before`` is the (created_at, id) of the last record of
    the previous page: only older ones (a cursor that survives new records arriving)."""

    model: str | None = None
    api_key_id: str | None = None
    team: str | None = None
    status: str | None = None
    before: tuple[int, str] | None = None


def select_recent(
    rows: Iterable[AccountingRow], limit: int, filters: RecentFilter
) -> list[AccountingRow]:
    """The reference implementation of ``recent``: newest first (created_at, then id)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    f = filters
    kept = [
        r
        for r in rows
        if (f.model is None or r.model == f.model)
        and (f.api_key_id is None or r.api_key_id == f.api_key_id)
        and (f.team is None or r.team == f.team)
        and (f.status is None or r.status == f.status)
        and (f.before is None or (r.created_at, r.id) < f.before)
    ]
    kept.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    return kept[:limit]


class ChainError(LookupError):
    """The previous_response_id chain starting at ``response_id`` cannot be followed."""

    def __init__(self, response_id: str, at_id: str, message: str) -> None:
        super().__init__(message)
        self.response_id = response_id  # where the walk started
        self.at_id = at_id  # the link that failed


class MissingChainLinkError(ChainError):
    """A response in the chain is unknown or deleted (``at_id`` names it)."""

    def __init__(self, response_id: str, missing_id: str) -> None:
        super().__init__(
            response_id, missing_id, f"Previous response with id '{missing_id}' not found."
        )
        self.missing_id = missing_id


class ChainCycleError(ChainError):
    """The chain loops back on itself (``at_id`` is the first repeated id)."""

    def __init__(self, response_id: str, repeated_id: str) -> None:
        super().__init__(
            response_id,
            repeated_id,
            f"Response chain from '{response_id}' loops at '{repeated_id}'.",
        )


class UnknownCursorError(ValueError):
    """``after`` names no input item of that response (the route answers 400, param 'after')."""

    def __init__(self, after: str) -> None:
        super().__init__(f"No input item with id '{after}'.")
        self.after = after


def _no_leases(store: ResponseStore) -> NotImplementedError:
    return NotImplementedError(f"{type(store).__name__} keeps no leases of background responses")


def page_items(
    items: list[dict[str, Any]], *, limit: int, order: Order, after: str | None
) -> ItemPage:
    """Cut one page from items kept oldest first; shared so every backend pages identically."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        for i, item in enumerate(ordered):
            if item.get("id") == after:
                start = i + 1
                break
        else:
            raise UnknownCursorError(after)
    data = ordered[start : start + limit]
    return ItemPage(
        data=data,
        first_id=data[0].get("id") if data else None,
        last_id=data[-1].get("id") if data else None,
        has_more=start + limit < len(ordered),
    )


def record_to_json(record: StoredResponse) -> bytes:
    """Serialise a whole record (one orjson call, no deep-copy via dataclasses.asdict)."""
    return orjson.dumps({f.name: getattr(record, f.name) for f in dataclasses.fields(record)})


def record_from_json(data: bytes) -> StoredResponse:
    return StoredResponse(**orjson.loads(data))


def tombstone(record: StoredResponse) -> StoredResponse:
    """The record as kept after delete(): metadata only, the user's content erased."""
    return dataclasses.replace(
        record, response={}, input_items=[], events=None, request={}, deleted=True
    )


UNFINISHED_STATUSES = ("queued", "in_progress")


@dataclass(frozen=True, slots=True)
class Renewal:
    """What `renew_leases` found: the ids whose lease it extended (still unfinished and still
    the owner's), and those of them a cancel was asked for (`request_cancel`, maybe on another
    replica)."""

    held: frozenset[str] = frozenset()
    cancel: frozenset[str] = frozenset()


@dataclass(frozen=True)
class StoreUrl:
    """A checked store URL: the scheme, and what the backend took from the rest (``memory``: no
    path; ``sqlite``: a file path or ``:memory:``, and ``synchronous``)."""

    scheme: str
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)


class ResponseStore(ABC):
    """Async store of responses.

    Backends implement the lifecycle (``open``/``aclose``), ``put``/``get``/``delete``,
    ``unfinished`` and ``accounting``/``spend``; ``list_input_items`` and ``chain`` are derived
    from ``get`` (a backend may answer them in fewer round trips). A backend reachable from a
    URL also implements ``parse_url``/``from_url`` and registers its scheme (``registry.py``).
    """

    # Set by register_store: the scheme this backend was registered under (the first one).
    scheme: ClassVar[str] = ""
    # URL forms shown when a store URL is refused (every registered backend's are listed).
    url_forms: ClassVar[tuple[str, ...]] = ()
    # A backend with a schema sets these in open(): the version the store is at, and the
    # migrations that open() applied (`turnout migrate` prints them). None: no schema.
    schema_version: int | None = None
    migrations_applied: tuple[int, ...] = ()

    # -- choosing a backend from a URL (registry.py) ----------------------------------------

    @classmethod
    def parse_url(cls, url: str) -> StoreUrl:
        """Check ``url`` (whose scheme is this backend's) without opening anything, and take it
        apart. Raise ValueError saying what is wrong; never quote the URL, which may hold a
        password. Registered backends must override this."""
        raise NotImplementedError(f"{cls.__name__} does not take a URL")

    @classmethod
    def from_url(cls, url: StoreUrl) -> ResponseStore:
        """A new, unopened store for a URL ``parse_url`` returned; no I/O."""
        raise NotImplementedError(f"{cls.__name__} does not take a URL")

    @classmethod
    def scratch_url(cls, folder: str) -> str | None:
        """The URL of a new, empty store the contract suite may fill and throw away (files go
        under ``folder``); None when this backend cannot run here (a server that is not
        configured), which fails the contract suite for it: no backend is left untested."""
        raise NotImplementedError(f"{cls.__name__} names no scratch store for the contract suite")

    @classmethod
    async def drop_scratch(cls, url: str) -> None:
        """Remove what a scratch store at ``url`` (from `scratch_url`) left outside its folder:
        a database server's schema. The contract suite calls it after each test, failed or
        not; files under the folder go with it, so by default there is nothing to do."""
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Acquire resources (files, connections, schema) on the running loop; blocking work
        goes to a thread. Idempotent; a closed store raises RuntimeError."""

    @abstractmethod
    async def aclose(self) -> None:
        """Let accepted writes land, then release resources; idempotent. Every call afterwards
        raises RuntimeError."""

    async def close(self) -> None:
        """The same as :meth:`aclose` (its older name)."""
        await self.aclose()

    # -- records -----------------------------------------------------------------------------

    @abstractmethod
    async def put(self, record: StoredResponse) -> None:
        """Insert or replace ``record`` by id; it is durable when this returns."""

    async def probe_write(self) -> None:
        """Write (and remove) a little data outside the records, raising what a real write
        would; `/health` calls it while writes fail (server/store_health.py). A backend with
        nothing that can fill up or go read-only keeps this no-op."""
        return None

    @abstractmethod
    async def get(self, response_id: str) -> StoredResponse | None:
        """The record, or None when unknown or deleted."""

    @abstractmethod
    async def delete(self, response_id: str) -> bool:
        """Tombstone the record; False when unknown or already deleted."""

    async def purge(self, before: int, *, limit: int) -> int:
        """Retention: tombstone, as `delete` does (the accounting stays, so spend totals do not
        change), up to ``limit`` live records created before ``before`` (unix seconds) that
        are not queued or in progress, oldest first; how many it tombstoned. Called in small
        batches (server/retention.py), each a short write that requests do not queue behind
        for long. Every registered backend implements it (the contract suite checks)."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge old responses")

    @abstractmethod
    async def unfinished(self) -> list[str]:
        """Ids of the live records still `queued` or `in_progress`."""

    # -- leases of background responses (server/leases.py) -----------------------------------
    # Every registered backend implements them (the contract suite checks); a store passed to
    # create_app without them cannot run background responses.
    # A background record is written with its `owner` and `lease_until`; the owner renews the
    # lease while it works, and any replica fails a record whose lease ran out. Every write
    # after the first is conditional on the record being still unfinished, so a terminal
    # status is never changed: the first terminal write wins.

    async def replace_unfinished(
        self, record: StoredResponse, *, expired_before: float | None = None
    ) -> bool:
        """Replace the record only while the stored one is live and still `queued` or
        `in_progress` and, with ``expired_before``, its lease ran out before that time (no
        lease counts as run out); True when it was replaced. One atomic statement: a live
        owner's renewal and another replica's failing of the record cannot both win."""
        raise _no_leases(self)

    async def renew_leases(self, owner: str, ids: Iterable[str], until: float) -> Renewal:
        """Extend to ``until`` the leases of ``owner``'s records among ``ids`` that are still
        unfinished (an expired lease too, as long as nobody ended the record)."""
        raise _no_leases(self)

    async def request_cancel(self, response_id: str) -> bool:
        """Mark an unfinished record for cancelling (its owner sees it at its next renewal);
        False when it is unknown, deleted or already ended. `replace_unfinished` keeps the
        mark."""
        raise _no_leases(self)

    async def expired_unfinished(self, now: float) -> list[str]:
        """Ids of the live unfinished records whose lease ran out before ``now`` (or that have
        none: written before leases existed)."""
        raise _no_leases(self)

    async def list_input_items(
        self,
        response_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
    ) -> ItemPage | None:
        """A page of the response's input items (OpenAI default order: desc).

        None when the response is unknown or deleted; :class:`UnknownCursorError` when
        ``after`` is not one of its item ids.
        """
        record = await self.get(response_id)
        if record is None:
            return None
        return page_items(record.input_items, limit=limit, order=order, after=after)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        """The records from the root to ``response_id`` inclusive, oldest first.

        Raises :class:`MissingChainLinkError` (also for ``response_id`` itself) or
        :class:`ChainCycleError`; never returns a partial chain.
        """
        newest_first: list[StoredResponse] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None:
            if current in seen:
                raise ChainCycleError(response_id, current)
            seen.add(current)
            record = await self.get(current)
            if record is None:
                raise MissingChainLinkError(response_id, current)
            newest_first.append(record)
            current = record.previous_response_id
        newest_first.reverse()
        return newest_first

    # -- accounting --------------------------------------------------------------------------

    @abstractmethod
    async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]:
        """Every record's accounting row (tombstones included) that ``query`` may count; a
        backend may return more rows than match (``aggregate_spend`` filters again). The
        reference the contract suite checks ``spend`` against."""

    @abstractmethod
    async def spend(self, query: SpendQuery) -> SpendReport:
        """Totals of requests, tokens and cost grouped as ``query`` says: natively, or
        ``aggregate_spend(query, await self.accounting(query))``."""

    async def spend_series(self, query: SpendQuery, bucket_seconds: int) -> list[SpendPoint]:
        """``spend`` cut into time buckets of ``bucket_seconds`` (aligned on the unix epoch, so
        a day is a UTC day): one point per bucket and group that has records, oldest first.
        Built on ``accounting`` here, so every backend has it; a backend may answer natively
        (SQLite: one ``GROUP BY``)."""
        check_bucket(bucket_seconds)
        return aggregate_series(query, bucket_seconds, await self.accounting(query))

    async def recent(
        self, limit: int = 50, filters: RecentFilter | None = None
    ) -> list[AccountingRow]:
        """The newest records (tombstones too: ``deleted``), newest first, at most ``limit``.
        Built on ``accounting`` here (a scan); a backend may answer natively (SQLite: the
        ``created_at`` index)."""
        rows = await self.accounting(SpendQuery())
        return select_recent(rows, limit, filters or RecentFilter())
