"""``/config``: read, subtree, list, write, delete, history, rollback, import, export."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from tessera.core.errors import InvalidRequest
from tessera.core.formats import parse_content, render
from tessera.handlers.deps import JsonBody, PrincipalDep, ScopeDep, ServiceDep, int_param
from tessera.handlers.render import history_item, list_item, read_body, write_body


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


@router.get("")
def list_keys(principal: PrincipalDep, scope: ScopeDep, service: ServiceDep, prefix: str | None = None) -> dict:
    return {"keys": [list_item(leaf) for leaf in service.list(principal, scope, prefix)]}


@router.get("/export")
def export(
    principal: PrincipalDep, scope: ScopeDep, service: ServiceDep, format: str = "json", prefix: str | None = None
) -> Response:
    if format not in ("json", "yaml", "dotenv"):
        raise InvalidRequest("format must be json, yaml or dotenv")
    body, media_type = render(format, service.export(principal, scope, prefix))
    return Response(body, media_type=media_type)


@router.post("/import")
def import_values(principal: PrincipalDep, scope: ScopeDep, body: JsonBody, service: ServiceDep) -> dict:
    secrets = _string_list(body, "secrets")
    if "values" in body:
        values = body["values"]
        if not isinstance(values, dict):
            raise InvalidRequest("'values' must be an object")
    elif "content" in body:
        if not isinstance(body["content"], str) or not isinstance(body.get("format", "json"), str):
            raise InvalidRequest("'content' and 'format' must be strings")
        values = parse_content(body.get("format", "json"), body["content"])
    else:
        raise InvalidRequest("give 'values', or 'format' and 'content'")
    result = service.import_values(principal, scope, values, secrets)
    return {"created": result.created, "updated": result.updated, "unchanged": result.unchanged, "errors": result.errors}


@router.get("/history/{key:anykey}")
def history(
    key: str,
    principal: PrincipalDep,
    scope: ScopeDep,
    service: ServiceDep,
    limit: str | None = None,
    before: str | None = None,
) -> dict:
    entries = service.history(
        principal,
        scope,
        key,
        int_param(limit, "limit", minimum=1, maximum=1000) or 100,
        int_param(before, "before", minimum=1),
    )
    return {"key": key, "namespace": scope.namespace, "env": scope.env, "versions": [history_item(e) for e in entries]}


@router.post("/rollback/{key:anykey}")
def rollback(key: str, principal: PrincipalDep, scope: ScopeDep, service: ServiceDep, version: str | None = None) -> dict:
    target = int_param(version, "version", minimum=1)
    if target is None:
        raise InvalidRequest("?version= is required")
    committed = service.rollback(principal, scope, key, target)
    return {**write_body(committed), "rolled_back_from": target}


@router.get("/{key:anykey}")
def read(
    key: str, request: Request, principal: PrincipalDep, scope: ScopeDep, service: ServiceDep, version: str | None = None
) -> Response:
    result = service.get(principal, scope, key, int_param(version, "version", minimum=1))
    etag = result.etag
    tags = _if_none_match(request)
    if etag in tags or "*" in tags:
        return Response(status_code=304, headers={"ETag": etag})
    return JSONResponse(read_body(result), headers={"ETag": etag})


def _if_none_match(request: Request) -> set[str]:
    header = request.headers.get("if-none-match", "")
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@router.put("/{key:anykey}")
def write(key: str, principal: PrincipalDep, scope: ScopeDep, body: JsonBody, service: ServiceDep) -> JSONResponse:
    if "value" not in body:
        raise InvalidRequest("'value' is required")
    result = service.put(
        principal, scope, key, body["value"], _bool_field(body, "secret"), _int_field(body, "expected_version")
    )
    return JSONResponse(write_body(result.version), status_code=201 if result.created else 200)


@router.delete("/{key:anykey}")
def delete(key: str, principal: PrincipalDep, scope: ScopeDep, service: ServiceDep, expected_version: str | None = None) -> dict:
    tombstone = service.delete(principal, scope, key, int_param(expected_version, "expected_version", minimum=0))
    return {"key": tombstone.key, "version": tombstone.version, "revision": tombstone.revision}
