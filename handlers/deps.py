"""FastAPI dependencies: the container, the calling principal, the scope, a JSON body, the request's auditor.

All are ``async``: a sync dependency would cost every request a hop to the thread pool. Store lookups they need
run inline for the embedded store and in a thread for remote ones (``Container.read``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, Request

from tessera.core.backends.factory import Container
from tessera.core.errors import InvalidRequest, InvalidValue, PayloadTooLarge
from tessera.core.formats import MAX_VALUE_DEPTH
from tessera.core.model import Principal, Scope, parse_scope
from tessera.core.service import ConfigService
from tessera.handlers.auditing import Auditor, client_address

MAX_BODY_BYTES = 1024 * 1024


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def get_service(request: Request) -> ConfigService:
    service: ConfigService = request.app.state.container.service
    return service


def get_auditor(request: Request) -> Auditor:
    """The request's auditor (set by the ASGI front for audited paths; a detached one elsewhere)."""
    auditor = request.scope.get("state", {}).get("auditor")
    if auditor is None:
        auditor = Auditor(request.scope.get("state", {}).get("request_id", ""), request.method, request.url.path, client_address(request.scope))
        request.scope.setdefault("state", {})["auditor"] = auditor
    return auditor


async def before_change(request: Request, auditor: Auditor, recorded_in_commit: bool = False) -> None:
    """Before a change whose record cannot ride in its commit (tokens, policies, environments; config writes on
    a store without ``audit_in_commit``): a durable ``phase="request"`` record, so a change is never without
    one. If it cannot be written the change does not run (``503``)."""
    await record_attempt(request.app.state.audit_queue, auditor, recorded_in_commit)


async def record_attempt(audit_queue: Any, auditor: Auditor, recorded_in_commit: bool = False) -> None:
    """:func:`before_change` with the audit queue at hand (the ASGI front's own write path)."""
    if recorded_in_commit:
        return
    from tessera.core.errors import Unavailable

    try:
        await audit_queue.record(auditor.attempt_entry(), durable=True)
    except Exception as exc:  # noqa: BLE001 - not durable (or too slow): do not run the change
        raise Unavailable("the audit log cannot be written; the request was not run") from exc


def parse_bearer(header: str) -> str | None:
    """``Bearer <token>`` → the token; anything else → None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def bearer_token(request: Request) -> str | None:
    return parse_bearer(request.headers.get("authorization", ""))


async def get_principal(request: Request) -> Principal:
    container: Container = request.app.state.container
    principal = await container.read(container.authenticator.authenticate, bearer_token(request))
    get_auditor(request).principal = principal
    return principal


async def get_scope(request: Request, namespace: str | None = None, env: str | None = None) -> Scope:
    auditor = get_auditor(request)
    auditor.note_scope(namespace, env)
    scope = parse_scope(namespace, env)
    auditor.note(scope=scope)
    return scope


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; ``413`` past 1 MiB, ``400 invalid_request`` when not a JSON object."""
    return json_object(await collect_body(request.headers.get("content-length"), request.stream()))


async def value_body(request: Request) -> dict[str, Any]:
    """:func:`json_body` of a config write (:func:`value_object`)."""
    return value_object(await collect_body(request.headers.get("content-length"), request.stream()))


async def asgi_body(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> AsyncIterator[bytes]:
    """A raw ASGI request body as it arrives; it ends early when the client goes away (what arrived is all)."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def collect_body(declared: str | None, chunks: AsyncIterator[bytes]) -> bytearray:
    """A request body, refused (``413``) past 1 MiB: by its declared length before anything is read, else as
    soon as what arrived passes it."""
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge("request body is larger than 1 MiB")
    raw = bytearray()
    async for chunk in chunks:
        raw.extend(chunk)
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge("request body is larger than 1 MiB")
    return raw


def json_object(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def value_object(raw: bytes | bytearray) -> dict[str, Any]:
    """:func:`json_object` of a config write: a body nested past the parser's own limit holds a value nested far
    past the contract's 64 levels, which is ``400 invalid_value`` however deep (the body is valid JSON)."""
    try:
        return json_object(raw)
    except InvalidRequest as exc:
        if isinstance(exc.__cause__, RecursionError):
            raise InvalidValue(f"a value may nest at most {MAX_VALUE_DEPTH} levels deep") from None
        raise


def _reject_constant(name: str) -> None:
    """``NaN`` and ``Infinity`` are not JSON, whatever Python's parser allows."""
    raise ValueError(f"{name} is not valid JSON")


_INTEGER = re.compile(r"-?[0-9]+")


def int_param(raw: str | None, name: str, *, minimum: int = 0, maximum: int = 2**62) -> int | None:
    """Parse an integer query parameter strictly: bad or out-of-range values are ``400 invalid_request``."""
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw):  # int() also takes "1_0", " 5", "+5" and non-ASCII digits
        raise InvalidRequest(f"{name} must be an integer")
    value = int(raw, 10)
    if value < minimum or value > maximum:
        raise InvalidRequest(f"{name} must be between {minimum} and {maximum}")
    return value


ContainerDep = Annotated[Container, Depends(get_container)]
ServiceDep = Annotated[ConfigService, Depends(get_service)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
ScopeDep = Annotated[Scope, Depends(get_scope)]
AuditorDep = Annotated[Auditor, Depends(get_auditor)]
JsonBody = Annotated[dict[str, Any], Depends(json_body)]
ValueBody = Annotated[dict[str, Any], Depends(value_body)]
