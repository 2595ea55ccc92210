"""What the sync and async clients share and that does no I/O: endpoints, the call description, reading an
answer (Tessera's or not), and which failures move a call to the next node.

The rule for moving on (``issue 11 §3``):
- a node that refuses the connection, resets it, times out, or answers ``502``/``503``/``504``/``429`` (or
  ``409 idempotency_in_progress``) has not given an answer: the call moves to the next node;
- a read (``GET``) moves freely;
- a write moves on after a failure that may have applied it (a timeout or reset after sending, a gateway 5xx)
  only when resending is safe: it carries ``expected_version`` (compare-and-set: a second apply is refused) or an
  ``Idempotency-Key`` (the server answers a repeat with the first response). A failure before sending (connection
  refused) is always safe to move on from.
"""

from __future__ import annotations

import errno
import json
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from tessera.client.sdk.errors import ConfigurationError, NodeFailure, TesseraError, error_for

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
GATEWAY_STATUSES = {502, 503, 504}
# Tessera codes that mean "this node cannot answer now, nothing was done": safe to resend anywhere.
NOT_APPLIED_CODES = {"deadline_exceeded", "not_ready", "too_many_requests", "rate_limited", "idempotency_in_progress"}
MAX_RETRY_AFTER = 5.0  # seconds; a longer Retry-After is cut to this (the call's own retries are bounded)
# Errors before the request left: nothing can have been applied.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def normalise_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """Validate and normalise node URLs: scheme and host required, trailing slashes dropped.

    A string may hold several URLs separated by commas (as ``TESSERA_URL`` does).

    >>> normalise_endpoints("http://a:8200/, https://b.example/tessera/")
    ('http://a:8200', 'https://b.example/tessera')
    """
    if isinstance(endpoints, str):
        items = [part.strip() for part in endpoints.split(",")]
    else:
        items = [str(part).strip() for part in endpoints]
    items = [item for item in items if item]
    if not items:
        raise ConfigurationError("no endpoint given: pass a URL such as http://127.0.0.1:8200, or a list of them")
    result: list[str] = []
    for raw in items:
        if "://" not in raw:
            raise ConfigurationError(f"endpoint {raw!r} has no scheme: write it as http://{raw} or https://...")
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https"):
            raise ConfigurationError(f"endpoint {raw!r}: the scheme must be http or https, not {parts.scheme!r}")
        if not parts.hostname:
            raise ConfigurationError(f"endpoint {raw!r} has no host")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:
            raise ConfigurationError(f"endpoint {raw!r} has an invalid port") from None
        if parts.query or parts.fragment:
            raise ConfigurationError(f"endpoint {raw!r}: a base URL takes no query or fragment")
        url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        if url not in result:
            result.append(url)
    return tuple(result)


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigurationError(f"{what} {name!r} is not a valid name ([a-z0-9][a-z0-9-]{{0,62}})")
    return name


def key_path(prefix: str, key: str) -> str:
    """``/config/<key>`` with the key quoted, so a stray ``?`` or ``#`` reaches the server as part of the key
    (which refuses it as ``invalid_key``) instead of changing the URL."""
    if not isinstance(key, str) or not key:
        raise TesseraError("a key is a non-empty string", code="invalid_key")
    return f"{prefix}/{quote(key, safe='')}"


@dataclass
class Call:
    """One logical API call; its attempts on any node share the request id and the idempotency key."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    #: fields a 2xx JSON answer must have to be Tessera's answer to this call
    expect: tuple[str, ...] = ()
    #: the answer is a file body (export), not a JSON object
    text: bool = False
    #: safe to send again after a failure that may have applied it
    resend_safe: bool = True
    idempotency_key: str | None = None
    timeout: float | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.request_id}
        if self.idempotency_key:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Answer:
    """A node's Tessera answer to a call: the parsed JSON (or text) and the facts a result needs."""

    node: str
    status: int
    body: Any
    replayed: bool
    request_id: str | None


class NodeFailed(Exception):
    """This node gave no answer to this attempt; the call may move to another node."""

    def __init__(self, failure: NodeFailure, retry_after: float | None = None, cause: BaseException | None = None) -> None:
        super().__init__(failure.reason)
        self.failure = failure
        self.retry_after = retry_after
        self.cause = cause


def _os_errors(exc: BaseException, depth: int = 0) -> Iterator[OSError]:
    """The OS errors under an httpx error (its causes, and the members of an exception group, as anyio raises)."""
    if depth > 6:
        return
    if isinstance(exc, OSError):
        yield exc
    for inner in (exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())):
        if inner is not None and inner is not exc:
            yield from _os_errors(inner, depth + 1)


def transport_failure(node: str, exc: httpx.TransportError, timeout: float | None) -> NodeFailed:
    sent = not isinstance(exc, NOT_SENT)
    codes = {error.errno for error in _os_errors(exc)}
    detail = str(exc).strip()
    if isinstance(exc, httpx.TimeoutException):
        reason = f"timed out after {timeout:g}s ({type(exc).__name__})" if timeout else f"timed out ({type(exc).__name__})"
    elif errno.ECONNREFUSED in codes or "Connection refused" in detail:
        reason = "connection refused"
    elif errno.ECONNRESET in codes or "reset" in detail.lower():
        reason = "connection reset"
    elif isinstance(exc, httpx.RemoteProtocolError):
        reason = f"connection closed without an answer ({detail[:120] or type(exc).__name__})"
    else:
        reason = f"{type(exc).__name__}: {detail[:120]}" if detail else type(exc).__name__
    return NodeFailed(NodeFailure(node, reason, maybe_applied=sent), cause=exc)


def _retry_after(headers: httpx.Headers) -> float | None:
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None


def _what_it_is(response: httpx.Response) -> str:
    """A short, value-free description of a body that is not Tessera's JSON (for configuration errors)."""
    content_type = str(response.headers.get("content-type", "no content type")).split(";")[0].strip()
    text = response.text if "json" not in content_type else ""
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    if title:
        return f"{content_type}, page titled {title.group(1).strip()[:80]!r}"
    return content_type


def _json_or_none(response: httpx.Response) -> Any:
    content_type = response.headers.get("content-type", "")
    if "json" not in content_type:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _tessera_error(body: Any) -> dict[str, Any] | None:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error
    return None


def interpret(call: Call, node: str, response: httpx.Response) -> Answer:
    """Read one node's answer: Tessera's result, Tessera's error (raised), a reason to try another node
    (``NodeFailed``), or something that is not Tessera at all (``ConfigurationError``)."""
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    url = node + call.path
    if status >= 400:
        body = _json_or_none(response)
        error = _tessera_error(body)
        if error is None:
            # Not Tessera's error shape: a proxy or load balancer speaking (or another service, or a wrong URL).
            if status in GATEWAY_STATUSES or status == 429:
                reason = f"HTTP {status} from something in front of Tessera ({_what_it_is(response)})"
                return_failure = NodeFailure(node, reason, maybe_applied=status in GATEWAY_STATUSES)
                raise NodeFailed(return_failure, _retry_after(response.headers))
            raise ConfigurationError(
                f"{call.method} {url} answered HTTP {status} ({_what_it_is(response)}), which is not a Tessera answer: "
                "check the endpoint URL (scheme, host, port, base path)",
                status=status, node=node, request_id=request_id,
            )
        code = error["code"]
        if code == "no_route":
            raise ConfigurationError(
                f"the server at {node} is Tessera but has no route {call.path.split('?')[0]!r}: the base URL has a "
                "path it should not have (or lacks one a proxy needs)",
                code="no_route", status=status, node=node, request_id=error.get("request_id") or request_id,
            )
        if status in GATEWAY_STATUSES or status == 429 or code in NOT_APPLIED_CODES:
            maybe_applied = status in GATEWAY_STATUSES and code not in NOT_APPLIED_CODES
            reason = f"HTTP {status} {code}"
            raise NodeFailed(NodeFailure(node, reason, maybe_applied=maybe_applied), _retry_after(response.headers))
        raise error_for(status, error, node=node, request_id=request_id)
    if 300 <= status < 400 and response.headers.get("location"):
        raise ConfigurationError(
            f"{call.method} {url} redirects to {response.headers['location']}: Tessera never redirects its API, so the "
            "endpoint URL is probably not the one to use (http instead of https, or a path a proxy rewrites)",
            status=status, node=node, request_id=request_id,
        )
    if status < 200 or status >= 300:
        raise ConfigurationError(
            f"{call.method} {url} answered HTTP {status}, which Tessera never sends for it: check the endpoint URL",
            status=status, node=node, request_id=request_id,
        )
    replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    if status == 204 and not call.expect:  # a deletion of a token or policy: no body to read
        return Answer(node, status, None, replayed, request_id)
    if call.text:
        content_type = response.headers.get("content-type", "")
        if "html" in content_type:
            raise ConfigurationError(
                f"{call.method} {url} answered an HTML page ({_what_it_is(response)}), not a Tessera export: check the "
                "endpoint URL", status=status, node=node, request_id=request_id,
            )
        return Answer(node, status, response.text, replayed, request_id)
    body = _json_or_none(response)
    missing = [name for name in call.expect if not isinstance(body, dict) or name not in body]
    if not isinstance(body, dict) or missing:
        what = _what_it_is(response) if body is None else f"JSON without {', '.join(missing) or 'an object'}"
        raise ConfigurationError(
            f"{call.method} {url} answered HTTP {status} with {what}, which is not Tessera's answer: check the "
            "endpoint URL (another service, or a proxy's page?)",
            status=status, node=node, request_id=request_id,
        )
    return Answer(node, status, body, replayed, request_id)


class NodeRing:
    """The nodes in order, and the one to try first: it stays on a node until that node fails (sticky)."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = tuple(nodes)
        self._preferred = 0
        self._lock = threading.Lock()

    def order(self) -> Iterator[str]:
        with self._lock:
            start = self._preferred
        for offset in range(len(self.nodes)):
            yield self.nodes[(start + offset) % len(self.nodes)]

    def failed(self, node: str) -> None:
        with self._lock:
            if self.nodes[self._preferred] == node:
                self._preferred = (self._preferred + 1) % len(self.nodes)

    def succeeded(self, node: str) -> None:
        with self._lock:
            self._preferred = self.nodes.index(node)
