"""Tessera: versioned, encrypted configuration and secrets with access control and live reload.

The SDK is importable from here, and importing it pulls in only small client libraries (httpx, websockets,
tenacity, cachetools), never the server or the AWS stack::

    from tessera import Client, AsyncClient, NotFound

Installed, the repository's top-level folders live under this one package: ``tessera.core`` (the domain),
``tessera.handlers`` (HTTP and Lambda), ``tessera.local`` (``tessera serve``) and ``tessera.client`` (the SDK
and the CLI). The folders stay at the top of the repository; ``pyproject.toml`` maps them here. The SDK names
below are loaded on first use, so a server process importing ``tessera.core`` does not load the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_SDK_NAMES = frozenset({
    "AsyncClient", "AsyncWatchHandle", "Client", "ConfigurationError", "Conflict", "DeleteResult", "Entry", "Event",
    "Forbidden", "Health", "HistoryEntry", "ImportResult", "InvalidRequest", "KeyInfo", "LastKnownGood", "NodeFailure",
    "NotFound", "PromoteResult", "RateLimited", "RevisionCompacted", "RollbackResult", "ServerError", "TesseraError",
    "TooLarge", "Unauthenticated", "Unavailable", "Version", "VersionConflict", "WatchHandle", "WriteOutcomeUnknown",
    "WriteResult", "AuditRecord", "Diff", "DiffItem", "EnvInfo", "Explanation", "Layer", "Policy", "TokenInfo",
})
__all__ = ["__version__", *sorted(_SDK_NAMES)]

if TYPE_CHECKING:
    from tessera.client.sdk import *  # noqa: F403


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from tessera.client import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'tessera' has no attribute {name!r}")
