"""One exception tree for everything the SDK raises.

>>> from tessera import NotFound, TesseraError
>>> issubclass(NotFound, TesseraError)
True

``TesseraError`` carries the contract's stable ``code``, the HTTP ``status`` (``None`` when no node answered),
the server's ``request_id`` and the ``node`` that answered. Messages never hold values or tokens: the server's
messages do not, and the SDK's own name only URLs, paths and codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class TesseraError(Exception):
    """Base of every SDK error.

    >>> try:
    ...     raise TesseraError("boom", code="internal", status=500, request_id="r1")
    ... except TesseraError as exc:
    ...     (exc.code, exc.status, exc.request_id)
    ('internal', 500, 'r1')
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        node: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.request_id = request_id
        self.node = node
        self.details = dict(details or {})

    def __str__(self) -> str:
        facts = [f"HTTP {self.status}"] if self.status else []
        if self.node:
            facts.append(self.node)
        if self.request_id:
            facts.append(f"request {self.request_id}")
        return f"{self.code}: {self.message}" + (f" ({', '.join(facts)})" if facts else "")


class ConfigurationError(TesseraError):
    """The client is pointed at something that is not Tessera's API, or was given a malformed setting.

    Raised for a URL without a scheme, a wrong base path (the server answers ``404 no_route``), an HTML page, a
    ``200`` without the expected JSON, or another service's error shape. Never read as "key missing".

    >>> from tessera import Client
    >>> Client("127.0.0.1:8200")
    Traceback (most recent call last):
    ...
    tessera.client.sdk.errors.ConfigurationError: configuration: endpoint '127.0.0.1:8200' has no scheme: write it as http://127.0.0.1:8200 or https://...
    """

    default_code = "configuration"


@dataclass(frozen=True)
class NodeFailure:
    """One attempt on one node that did not give an answer: which node, and why (no values, no tokens)."""

    node: str
    reason: str
    #: True when the request may have reached the server (a timeout or reset after sending, a gateway 5xx).
    maybe_applied: bool = False


class Unavailable(TesseraError):
    """No node gave an answer. ``attempts`` lists every attempt; the message names every node tried and why.

    >>> err = Unavailable([NodeFailure("http://a:8200", "connection refused")])
    >>> str(err)
    'unavailable: no Tessera node answered; tried http://a:8200 (connection refused)'
    """

    default_code = "unavailable"

    def __init__(self, attempts: Sequence[NodeFailure], *, message: str | None = None, **kwargs: Any) -> None:
        self.attempts = list(attempts)
        last: dict[str, str] = {}
        for attempt in self.attempts:
            last.pop(attempt.node, None)
            last[attempt.node] = attempt.reason  # in the order nodes were last tried, with their last reason
        tried = "; ".join(f"{node} ({reason})" for node, reason in last.items()) or "no node"
        super().__init__(message or f"no Tessera node answered; tried {tried}", **kwargs)

    @property
    def nodes(self) -> list[str]:
        """Every node tried, each once, in the order first tried."""
        return list(dict.fromkeys(attempt.node for attempt in self.attempts))


class WriteOutcomeUnknown(Unavailable):
    """A write reached a node that then failed to answer, and resending it elsewhere was not safe.

    Only writes without ``expected_version`` and without an ``Idempotency-Key`` (``idempotency_keys=False``) end
    this way: the write may or may not have been applied. Read the key to find out.
    """

    default_code = "write_outcome_unknown"


class Unauthenticated(TesseraError):
    """``401``: no token, or an unknown, expired or revoked one (token from ``token=`` or ``TESSERA_TOKEN``)."""

    default_code = "unauthenticated"


class Forbidden(TesseraError):
    """``403``: the token is valid but its policies do not allow this."""

    default_code = "forbidden"


class NotFound(TesseraError):
    """``404 not_found``: no such key (or version, or environment). Never raised for a wrong base URL."""

    default_code = "not_found"


class InvalidRequest(TesseraError):
    """``400``: a malformed key (``invalid_key``), value (``invalid_value``) or parameter (``invalid_request``)."""

    default_code = "invalid_request"


class Conflict(TesseraError):
    """``409``: the write conflicts with the stored state (``key_conflict``, ``secret_flag_immutable``, ...)."""

    default_code = "conflict"


class VersionConflict(Conflict):
    """``409 version_conflict``: compare-and-set lost. ``current_version`` is the key's version now (0: none).

    >>> VersionConflict("lost", current_version=3).current_version
    3
    """

    default_code = "version_conflict"

    def __init__(self, message: str, *, current_version: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.current_version = current_version


class RevisionCompacted(TesseraError):
    """``410 revision_compacted``: a watch cursor older than the retained change log; ``current_revision`` is now.

    A watch reports it to ``on_error`` and continues from ``current_revision``: re-read what you cache.
    """

    default_code = "revision_compacted"

    def __init__(self, message: str, *, current_revision: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.current_revision = current_revision


class TooLarge(TesseraError):
    """``413``: the body or a value is over the contract's limits."""

    default_code = "payload_too_large"


class RateLimited(TesseraError):
    """``429``: too many requests for this token or address; ``retry_after`` seconds as the server asked."""

    default_code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(TesseraError):
    """``5xx`` that is not a node being unavailable (an internal error, an integrity failure)."""

    default_code = "internal"


BY_STATUS: dict[int, type[TesseraError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: RevisionCompacted,
    413: TooLarge,
    429: RateLimited,
}
BY_CODE: dict[str, type[TesseraError]] = {"version_conflict": VersionConflict}


def error_for(status: int, error: dict[str, Any], *, node: str, request_id: str | None) -> TesseraError:
    """The exception for a Tessera error body ``{"error": {"code", "message", ...}}`` (shape already checked)."""
    code = str(error["code"])
    message = str(error.get("message") or code)
    details = {k: v for k, v in error.items() if k not in ("code", "message", "request_id")}
    request_id = str(error.get("request_id") or request_id or "") or None
    cls = BY_CODE.get(code) or BY_STATUS.get(status) or (ServerError if status >= 500 else TesseraError)
    kwargs: dict[str, Any] = {"code": code, "status": status, "request_id": request_id, "node": node, "details": details}
    if cls is VersionConflict:
        return VersionConflict(message, current_version=_int_or_none(error.get("current_version")), **kwargs)
    if cls is RevisionCompacted:
        return RevisionCompacted(message, current_revision=_int_or_none(error.get("current_revision")), **kwargs)
    if cls is RateLimited:
        return RateLimited(message, retry_after=_float_or_none(error.get("retry_after")), **kwargs)
    return cls(message, **kwargs)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
