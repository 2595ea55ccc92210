"""Domain errors, each with the stable API code and HTTP status of ``API.md``.

Handlers map any :class:`TesseraError` to ``{"error": {"code", "message", "request_id", ...extra}}``
in one place; adapters translate their library's exceptions into these before they leave.
Messages never carry values or token strings.
"""

from __future__ import annotations

from typing import Any


class TesseraError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidRequest(TesseraError):
    code, status = "invalid_request", 400


class InvalidKey(TesseraError):
    code, status = "invalid_key", 400


class InvalidValue(TesseraError):
    code, status = "invalid_value", 400


class Unauthenticated(TesseraError):
    code, status = "unauthenticated", 401


class Forbidden(TesseraError):
    code, status = "forbidden", 403


class NotFound(TesseraError):
    code, status = "not_found", 404


class VersionConflict(TesseraError):
    """Compare-and-set lost: ``current_version`` is what the key is at now (0 when it has no live value)."""

    code, status = "version_conflict", 409

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message, current_version=current_version)
        self.current_version = current_version


class VersionsMoved(TesseraError):
    """A compare-and-set over several keys lost (promote): ``keys`` moved since the caller saw them;
    ``current_versions`` maps each to its version now (0 when it has no live value)."""

    code, status = "version_conflict", 409

    def __init__(self, message: str, current_versions: dict[str, int]) -> None:
        super().__init__(message, keys=sorted(current_versions), current_versions=dict(sorted(current_versions.items())))
        self.current_versions = current_versions


class KeyConflict(TesseraError):
    code, status = "key_conflict", 409


class SecretFlagImmutable(TesseraError):
    code, status = "secret_flag_immutable", 409


class InvalidRollback(TesseraError):
    code, status = "invalid_rollback", 409


class RevisionCompacted(TesseraError):
    code, status = "revision_compacted", 410

    def __init__(self, message: str, current_revision: int) -> None:
        super().__init__(message, current_revision=current_revision)


class PayloadTooLarge(TesseraError):
    code, status = "payload_too_large", 413


class ValueTooLarge(TesseraError):
    code, status = "value_too_large", 413


class RateLimited(TesseraError):
    code, status = "rate_limited", 429


class TooManyRequests(TesseraError):
    """One token (or address) holds as many long polls, WebSockets or subscriptions as it may; ``Retry-After``."""

    code, status = "too_many_requests", 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class IntegrityError(TesseraError):
    """A stored envelope failed authentication: tampered, swapped between keys/versions, or corrupt."""

    code, status = "integrity_error", 500


class Unavailable(TesseraError):
    """The store (or the audit log, which fails closed) cannot be reached; nothing was half-applied."""

    code, status = "unavailable", 503


class DeadlineExceeded(TesseraError):
    """The request passed the server's deadline before its commit point: nothing changed (for an import on a batching
    store: nothing for the keys named)."""

    code, status = "deadline_exceeded", 503
