"""The Tessera Python SDK: ``Client`` (threads) and ``AsyncClient`` (asyncio), one surface.

>>> from tessera import Client
>>> with Client("http://127.0.0.1:8200", token="tsr_...") as client:   # doctest: +SKIP
...     client.value("database.host")
'db.internal'

Reads fail over between nodes and retry with jittered backoff; writes move to another node only when that is
safe (``expected_version`` or an ``Idempotency-Key``, sent by default); a read that finds no node answering is served
from the last-known-good store with ``stale=True``; a watch resumes from its revision cursor on any node and reports
every error to ``on_error``. Guides: ``docs/sdk.md``.
"""

from tessera.client.sdk.aio import AsyncClient
from tessera.client.sdk.client import Client
from tessera.client.sdk.errors import (
    ConfigurationError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NodeFailure,
    NotFound,
    RateLimited,
    RevisionCompacted,
    ServerError,
    TesseraError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    VersionConflict,
    WriteOutcomeUnknown,
)
from tessera.client.sdk.store import LastKnownGood
from tessera.client.sdk.types import (
    AuditRecord,
    DeleteResult,
    Diff,
    DiffItem,
    Entry,
    EnvInfo,
    Event,
    Explanation,
    Health,
    HistoryEntry,
    ImportResult,
    KeyInfo,
    Layer,
    Policy,
    PromoteResult,
    RollbackResult,
    TokenInfo,
    Version,
    WriteResult,
)
from tessera.client.sdk.watch import AsyncWatchHandle, WatchHandle

__all__ = [
    "AuditRecord", "Diff", "DiffItem", "EnvInfo", "Explanation", "Layer", "Policy", "TokenInfo",
    "AsyncClient", "AsyncWatchHandle", "Client", "ConfigurationError", "Conflict", "DeleteResult", "Entry", "Event",
    "Forbidden", "Health", "HistoryEntry", "ImportResult", "InvalidRequest", "KeyInfo", "LastKnownGood", "NodeFailure",
    "NotFound", "PromoteResult", "RateLimited", "RevisionCompacted", "RollbackResult", "ServerError", "TesseraError",
    "TooLarge", "Unauthenticated", "Unavailable", "Version", "VersionConflict", "WatchHandle", "WriteOutcomeUnknown",
    "WriteResult",
]
