"""Response stores: pick a backend from a URL (``store.url`` in the config).

Backends register their URL scheme (``registry.py``); importing this package imports the
built-in ones (``memory``, ``sqlite``, ``postgresql``: its driver is imported only when
one is opened), so every registered scheme is known to
`parse_store_url`, `create_store` and `open_store`.
"""

from __future__ import annotations

from . import memory as _memory  # registers memory://
from . import postgres as _postgres  # registers postgresql:// and postgres://
from . import sqlite as _sqlite  # registers sqlite://
from .base import (
    ChainCycleError,
    ChainError,
    ItemPage,
    MissingChainLinkError,
    Order,
    RecentFilter,
    ResponseStore,
    SpendPoint,
    SpendQuery,
    SpendReport,
    SpendRow,
    StoredResponse,
    StoreUrl,
    UnknownCursorError,
)
from .conversations import ConversationStore, StoredConversation
from .memory import MemoryStore
from .postgres import PostgresStore
from .registry import (
    STORE_BACKENDS,
    create_store,
    known_schemes,
    open_store,
    parse_store_url,
    register_store,
)
from .sqlite import SQLiteStore

__all__ = [
    "STORE_BACKENDS",
    "ChainCycleError",
    "ChainError",
    "ConversationStore",
    "ItemPage",
    "MemoryStore",
    "MissingChainLinkError",
    "Order",
    "PostgresStore",
    "RecentFilter",
    "ResponseStore",
    "SQLiteStore",
    "SpendPoint",
    "SpendQuery",
    "SpendReport",
    "SpendRow",
    "StoreUrl",
    "StoredConversation",
    "StoredResponse",
    "UnknownCursorError",
    "create_store",
    "known_schemes",
    "open_store",
    "parse_store_url",
    "register_store",
]

del _memory, _postgres, _sqlite
