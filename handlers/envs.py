"""``/envs`` and ``/diff``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tessera.core.errors import InvalidRequest
from tessera.core.model import parse_name, parse_scope
from tessera.handlers.deps import JsonBody, PrincipalDep, ServiceDep

router = APIRouter()


@router.get("/envs")
def list_envs(principal: PrincipalDep, service: ServiceDep) -> dict:
    return {"envs": [{"name": e.name, "parent": e.parent} for e in service.list_envs(principal)]}


@router.put("/envs/{name}")
def put_env(name: str, principal: PrincipalDep, body: JsonBody, service: ServiceDep) -> JSONResponse:
    parent = body.get("parent")  # absent: "default" for any env but default itself, which has none
    if parent is not None and not isinstance(parent, str):
        raise InvalidRequest("'parent' must be a string")
    created = service.put_env(principal, parse_name(name, "env"), parent)
    env = {e.name: e for e in service.list_envs(principal)}[name]
    return JSONResponse({"name": env.name, "parent": env.parent}, status_code=201 if created else 200)


@router.get("/diff")
def diff(
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
    namespace: str | None = None,
    prefix: str | None = None,
) -> dict:
    params = request.query_params
    from_env, to_env = params.get("from"), params.get("to")
    if not from_env or not to_env:
        raise InvalidRequest("?from= and ?to= are required")
    scope = parse_scope(namespace, from_env)
    target = parse_scope(namespace, to_env)
    service.require_env(scope.env)
    service.require_env(target.env)
    return service.diff(principal, scope.namespace, scope.env, target.env, prefix)
