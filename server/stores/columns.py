"""The columns of the ``responses`` table, written once, for every SQL backend.

A column is named after the :class:`StoredResponse` attribute it holds, so a row maps to a
record by name, never by position. ``COLUMNS`` keeps the physical order of the SQLite table
(its ``CREATE TABLE`` and migrations are generated from it). A backend describes how each
*kind* of value is written and read (SQLite: orjson bytes in a ``BLOB`` for documents, JSON text
for ``json`` so ``json_extract`` can look inside); :class:`RowCodec` turns those per-kind
functions into one record -> row and one row -> record function for any selection of columns,
built once at import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .base import AccountingRow

__all__ = [
    "ACCOUNTING_COLUMNS",
    "COLUMNS",
    "COLUMN_NAMES",
    "Column",
    "Kind",
    "RowCodec",
    "columns",
]

# text, integer, real: as they are. flag: a bool (SQLite has none: 0/1). document: JSON the store
# only hands back (any encoding). json: JSON that SQL queries look into (spend groups on tags).
Kind = Literal["text", "integer", "real", "flag", "document", "json"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # the StoredResponse attribute, and the column's name
    kind: Kind
    nullable: bool = False
    since: int = 1  # the schema version that added it (SQLite migrates older files)
    default: str | None = None  # SQL literal; columns added by a migration need one


COLUMNS: tuple[Column, ...] = (
    Column("id", "text"),  # the primary key
    Column("created_at", "integer"),
    Column("model", "text"),
    Column("provider", "text", nullable=True),
    Column("status", "text"),
    Column("previous_response_id", "text", nullable=True),
    Column("deployment", "text", nullable=True),
    Column("cost", "real", nullable=True),
    Column("deleted", "flag"),
    Column("response", "document"),
    Column("input_items", "document"),
    Column("events", "document", nullable=True),
    Column("request", "document"),
    Column("attempts", "document"),
    # Version 2: accounting, kept by tombstones.
    Column("input_tokens", "integer", since=2, default="0"),
    Column("cached_tokens", "integer", since=2, default="0"),
    Column("cache_write_tokens", "integer", since=2, default="0"),
    Column("output_tokens", "integer", since=2, default="0"),
    Column("reasoning_tokens", "integer", since=2, default="0"),
    Column("api_key_id", "text", nullable=True, since=2),
    Column("tags", "json", since=2, default="'{}'"),
    # Version 4: the team of the key that made it (isolation, team spend).
    Column("team", "text", nullable=True, since=4),
    # Version 5: how long the run took (the console's request list).
    Column("duration_ms", "real", nullable=True, since=5),
    # Version 6: who runs a background response and until when its lease holds (unix seconds):
    # another replica fails it only once the lease has run out (server/leases.py).
    Column("owner", "text", nullable=True, since=6),
    Column("lease_until", "real", nullable=True, since=6),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
_BY_NAME = {c.name: c for c in COLUMNS}


def columns(names: Iterable[str]) -> tuple[Column, ...]:
    """The columns called ``names``, in that order."""
    return tuple(_BY_NAME[name] for name in names)


# What spend and the request list read of a record: AccountingRow's fields are named after
# the columns.
ACCOUNTING_COLUMNS = columns(f.name for f in dataclasses.fields(AccountingRow))

Convert = Callable[[Any], Any]


class RowCodec(Generic[R]):
    """Rows of ``cols`` (in that order) to and from ``make(**by_name)`` objects.

    ``encoders``/``decoders`` map a kind to its conversion; a kind without one is passed as it
    is, and ``None`` in a nullable column is never converted. ``sql_list`` is the column list for
    ``SELECT``/``INSERT`` statements, in the order of the row tuples.

    Both functions are generated from the columns (as ``dataclasses`` generates ``__init__``):
    the same code one would write by hand, ``(record.id, record.created_at, ...)`` and
    ``make(id=row[0], created_at=row[1], ...)``, without a loop or a dict per row, so the write
    path costs what the hand-written tuple did.
    """

    def __init__(
        self,
        cols: tuple[Column, ...],
        *,
        encoders: Mapping[str, Convert],
        decoders: Mapping[str, Convert],
        make: Callable[..., R],
    ) -> None:
        for col in cols:
            if not col.name.isidentifier():  # they are pasted into generated code
                raise ValueError(f"column name {col.name!r} is not an identifier")
        self.columns = cols
        self.names = tuple(c.name for c in cols)
        self.sql_list = ", ".join(self.names)
        namespace: dict[str, Any] = {"_make": make}
        encoded = _converted(cols, [f"record.{n}" for n in self.names], encoders, namespace, "e")
        decoded = _converted(
            cols, [f"row[{i}]" for i in range(len(cols))], decoders, namespace, "d"
        )
        by_name = ", ".join(f"{n}={e}" for n, e in zip(self.names, decoded, strict=True))
        code = (
            f"def to_row(record):\n    return ({', '.join(encoded)},)\n"
            f"def from_row(row):\n    return _make({by_name})\n"
        )
        exec(compile(code, "<RowCodec>", "exec"), namespace)  # only identifiers pasted in
        self.to_row: Callable[[Any], tuple[Any, ...]] = namespace["to_row"]
        self.from_row: Callable[[Sequence[Any]], R] = namespace["from_row"]


def _converted(
    cols: tuple[Column, ...],
    sources: list[str],
    table: Mapping[str, Convert],
    namespace: dict[str, Any],
    prefix: str,
) -> list[str]:
    """One expression per column: its source, through the kind's conversion if it has one
    (``None`` kept as it is in a nullable column)."""
    out = []
    for i, (col, source) in enumerate(zip(cols, sources, strict=True)):
        convert = table.get(col.kind)
        if convert is None:
            out.append(source)
            continue
        namespace[f"_{prefix}{i}"] = convert
        expr = f"_{prefix}{i}({source})"
        out.append(f"(None if {source} is None else {expr})" if col.nullable else expr)
    return out
