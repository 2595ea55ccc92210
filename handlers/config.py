"""``/config``: read (and its explanation), subtree, list, write, delete, history, rollback, import, export, promote.

Every route is named after its audit action and states its facts on the request's auditor; reads run inline
for the embedded store (``Container.read``), writes in a thread (``Container.blocking``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from tessera.core.errors import InvalidRequest, NotFound
from tessera.core.formats import parse_content, render
from tessera.core.model import Principal, Scope, format_time, parse_scope
from tessera.core.service import ConfigService, ExplainLayer
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import (
    AuditorDep,
    ContainerDep,
    PrincipalDep,
    ScopeDep,
    ValueBody,
    before_change,
    int_param,
    json_body,
    record_attempt,
)
from tessera.handlers.reads import read_response
from tessera.handlers.render import dumps, history_item, list_item, write_body


class AnyKeyConvertor(Convertor[str]):
    """Like Starlette's ``path`` convertor, but matching newlines too: with ``.*`` a key ending in ``%0A`` would
    match without its newline (``$`` matches before a final newline) and one with a newline inside would match
    no route at all; with this, every such key reaches ``parse_key`` and is refused as ``invalid_key``."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anykey", AnyKeyConvertor())
router = APIRouter(prefix="/config")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def _bool_field(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean")
    return value


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**62:
        raise InvalidRequest(f"'{name}' must be a non-negative integer")
    return value


def _string_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"'{name}' must be a list of strings")
    return value


def _versions_field(body: dict[str, Any], name: str) -> dict[str, int]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= 2**62 for number in value.values()
    ):
        raise InvalidRequest(f"'{name}' must be an object mapping keys to versions (integers, 0 for none)")
    return value


def _flag_param(raw: str | None, name: str) -> bool:
    if raw is None or raw.lower() in ("", "false", "0", "no"):
        return False
    if raw.lower() in ("true", "1", "yes"):
        return True
    raise InvalidRequest(f"{name} must be true or false")


@router.get("", name="config.list")
async def list_keys(
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    prefix: str | None = None,
    limit: str | None = None,
    after: str | None = None,
) -> Response:
    auditor.note("config.list", target=prefix)
    page_size = int_param(limit, "limit", minimum=1, maximum=10_000) or 1000
    page = await container.read(container.service.list_page, principal, scope, prefix, page_size, after or None)
    return json_response({"keys": [list_item(leaf) for leaf in page.leaves], "next": page.next})


@router.get("/export", name="config.export")
async def export(
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    format: str = "json",
    prefix: str | None = None,
) -> Response:
    auditor.note("config.export", target=prefix)
    if format not in ("json", "yaml", "dotenv"):
        raise InvalidRequest("format must be json, yaml or dotenv")
    flat = await container.read(container.service.export, principal, scope, prefix)
    body, media_type = render(format, flat)
    return Response(body, media_type=media_type)


@router.post("/import", name="config.import")
async def import_values(
    principal: PrincipalDep, scope: ScopeDep, container: ContainerDep, auditor: AuditorDep, request: Request
) -> Response:
    auditor.note("config.import")
    auditor.many_commits = True
    service = container.service
    # Cheap checks first: the scope, then the body parsed within bounds (a YAML document is measured before
    # anything expands it), then per key: its syntax, the caller's permission, its value.
    await container.read(service.require_env, scope.env)
    await before_change(request, auditor, service.audit_in_commit)
    body = await json_body(request)
    secrets = _string_list(body, "secrets")
    if "values" in body:
        values = body["values"]
        if not isinstance(values, dict):
            raise InvalidRequest("'values' must be an object")
    elif "content" in body:
        if not isinstance(body["content"], str) or not isinstance(body.get("format", "json"), str):
            raise InvalidRequest("'content' and 'format' must be strings")
        values = await container.blocking(parse_content, body.get("format", "json"), body["content"])
    else:
        raise InvalidRequest("give 'values', or 'format' and 'content'")
    # Each key's commit carries its own record (phase "commit"); the request's record follows, durable.
    result = await container.blocking(service.import_values, principal, scope, values, secrets, auditor)
    return json_response({"created": result.created, "updated": result.updated, "unchanged": result.unchanged, "errors": result.errors})


@router.post("/promote", name="config.promote")
async def promote(
    request: Request,
    principal: PrincipalDep,
    container: ContainerDep,
    auditor: AuditorDep,
    namespace: str | None = None,
    prefix: str | None = None,
) -> Response:
    """Copy the keys that differ from one environment into another, compare-and-set on every key, all or nothing."""
    params = request.query_params
    from_env, to_env = params.get("from"), params.get("to")
    auditor.note("config.promote", target=f"{from_env or ''}..{to_env or ''}")
    auditor.note_scope(namespace, to_env)  # the environment it writes
    auditor.many_commits = True  # each key's commit holds its own record (all in one transaction); the request one more
    if not from_env or not to_env:
        raise InvalidRequest("?from= and ?to= are required")
    source, target = parse_scope(namespace, from_env), parse_scope(namespace, to_env)
    auditor.note(scope=target)
    service = container.service
    await container.read(service.require_env, source.env)
    await container.read(service.require_env, target.env)
    await before_change(request, auditor, service.audit_in_commit)
    body = await json_body(request)
    keys = _string_list(body, "keys") if body.get("keys") is not None else None
    expected = _versions_field(body, "expected")
    result = await container.blocking(
        service.promote, principal, target.namespace, source.env, target.env, prefix, keys, expected, auditor
    )
    return json_response(
        {"promoted": [{"key": v.key, "version": v.version, "revision": v.revision} for v in result.promoted], "unchanged": result.unchanged}
    )


@router.get("/history/{key:anykey}", name="config.history")
async def history(
    key: str,
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    limit: str | None = None,
    before: str | None = None,
) -> Response:
    auditor.note("config.history", key=key)
    entries = await container.read(
        container.service.history,
        principal,
        scope,
        key,
        int_param(limit, "limit", minimum=1, maximum=1000) or 100,
        int_param(before, "before", minimum=1),
    )
    return json_response({"key": key, "namespace": scope.namespace, "env": scope.env, "versions": [history_item(e) for e in entries]})


@router.post("/rollback/{key:anykey}", name="config.rollback")
async def rollback(
    key: str,
    request: Request,
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    version: str | None = None,
) -> Response:
    auditor.note("config.rollback", key=key)
    await before_change(request, auditor, container.service.audit_in_commit)
    target = int_param(version, "version", minimum=1)
    if target is None:
        raise InvalidRequest("?version= is required")
    committed = await container.blocking(container.service.rollback, principal, scope, key, target, auditor)
    auditor.note(version=committed.version)
    return json_response({**write_body(committed), "rolled_back_from": target})


@router.get("/{key:anykey}", name="config.read")
async def read(key: str, request: Request, principal: PrincipalDep, container: ContainerDep, auditor: AuditorDep) -> Response:
    """Answered by the ASGI front's fast path, except ``HEAD`` and ``?explain=``; same logic either way."""
    auditor.note("config.read", key=key)
    params = dict(request.query_params)
    if _flag_param(params.pop("explain", None), "explain"):
        return await container.read(explained_read, container.service, auditor, principal, key, params)
    status, headers, body = await container.read(
        read_response, container.service, auditor, principal, key, params, request.headers.get("if-none-match", "").encode("latin-1") or None
    )
    return Response(body, status_code=status, headers={k.decode(): v.decode("latin-1") for k, v in headers})


def explained_read(service: ConfigService, auditor: Auditor, principal: Principal, key: str, params: dict[str, str]) -> Response:
    """A read with ``"explain": {"chain": [...]}``: each environment walked and what it held. A ``404`` carries the
    chain inside its error (why nothing resolved); a ``403`` never does (it must not reveal anything)."""
    if params.get("version"):
        raise InvalidRequest("?explain=true explains a read of the latest value: leave out ?version=")
    scope = parse_scope(params.get("namespace"), params.get("env"))
    try:
        _, _, body = read_response(service, auditor, principal, key, params, None)  # no etag: the body differs
    except NotFound as exc:
        service.require_env(scope.env)  # an unknown env stays a plain 404
        chain = [explain_item(layer) for layer in service.explain(principal, scope, key)]
        raise NotFound(exc.message, **exc.extra, explain={"chain": chain}) from None
    document = json.loads(body)
    document["explain"] = {"chain": [explain_item(layer) for layer in service.explain(principal, scope, key)]}
    return json_response(document)


def explain_item(layer: ExplainLayer) -> dict[str, Any]:
    item: dict[str, Any] = {"env": layer.env, "state": layer.state}
    version = layer.version
    if version is not None:
        item["version"] = version.version
        item["secret"] = version.secret
        item["updated_at"] = format_time(version.updated_at)
        item["updated_by"] = version.updated_by
    if layer.has_value:
        item["value"] = layer.value
    return item


@router.put("/{key:anykey}", name="config.write")
async def write(
    key: str, request: Request, principal: PrincipalDep, scope: ScopeDep, body: ValueBody, container: ContainerDep, auditor: AuditorDep
) -> Response:
    status, answer = await apply_write(container, request.app.state.audit_queue, auditor, principal, scope, key, body)
    return Response(answer, status_code=status, media_type="application/json")


async def apply_write(
    container: Any, audit_queue: Any, auditor: Auditor, principal: Principal, scope: Scope, key: str, body: dict[str, Any]
) -> tuple[int, bytes]:
    """``PUT /config/{key}`` once its caller, scope and body are known: this route's, and the ASGI front's fast
    write path's (``handlers/asgi.py``), which reaches it without FastAPI's dependency solving."""
    auditor.note("config.write", key=key)
    await record_attempt(audit_queue, auditor, container.service.audit_in_commit)
    if "value" not in body:
        raise InvalidRequest("'value' is required")
    result = await container.blocking(
        container.service.put, principal, scope, key, body["value"], _bool_field(body, "secret"), _int_field(body, "expected_version"), auditor
    )
    auditor.note(version=result.version.version)
    return (201 if result.created else 200), dumps(write_body(result.version))


@router.delete("/{key:anykey}", name="config.delete")
async def delete(
    key: str,
    request: Request,
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    expected_version: str | None = None,
) -> Response:
    auditor.note("config.delete", key=key)
    await before_change(request, auditor, container.service.audit_in_commit)
    tombstone = await container.blocking(
        container.service.delete, principal, scope, key, int_param(expected_version, "expected_version", minimum=0), auditor
    )
    auditor.note(version=tombstone.version)
    return json_response({"key": tombstone.key, "version": tombstone.version, "revision": tombstone.revision})
