"""``GET /config/{key}``: the one read route, shared by the fast path (``handlers/asgi.py``) and FastAPI's
declaration of it (``handlers/config.py``), so both answer byte for byte alike."""

from __future__ import annotations

from collections.abc import Mapping

from tessera.core.model import Principal, parse_scope
from tessera.core.service import ConfigService
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import int_param
from tessera.handlers.render import JSON, dumps, read_body

Headers = list[tuple[bytes, bytes]]


def read_response(
    service: ConfigService,
    auditor: Auditor,
    principal: Principal,
    key: str,
    params: Mapping[str, str],
    if_none_match: bytes | None,
) -> tuple[int, Headers, bytes]:
    """(status, headers, body) of a read; ``TesseraError`` for refusals (the caller renders them)."""
    scope = parse_scope(params.get("namespace"), params.get("env"))
    auditor.note(scope=scope)
    result = service.get(principal, scope, key, int_param(params.get("version"), "version", minimum=1))
    if result.version is not None:
        auditor.note(version=result.version.version)
    rendered = result.memo.get("read")
    if rendered is None:  # a result's body and etag depend only on it (immutable): kept with a cached result
        rendered = result.memo["read"] = (result.etag.encode(), dumps(read_body(result)))
    etag, body = rendered
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.decode("latin-1").split(",") if tag.strip()}
        if etag.decode() in tags or "*" in tags:
            return 304, [(b"etag", etag)], b""
    return 200, [JSON, (b"etag", etag)], body
