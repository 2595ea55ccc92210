"""``/envs`` and ``/diff``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tessera.core.errors import InvalidRequest
from tessera.core.model import parse_name, parse_scope
from tessera.handlers.auth import json_response
from tessera.handlers.deps import AuditorDep, ContainerDep, JsonBody, PrincipalDep, before_change

router = APIRouter()


@router.get("/envs", name="env.list")
async def list_envs(principal: PrincipalDep, container: ContainerDep, auditor: AuditorDep) -> Response:
    auditor.note("env.list")
    envs = await container.read(container.service.list_envs, principal)
    return json_response({"envs": [{"name": e.name, "parent": e.parent} for e in envs]})


@router.put("/envs/{name}", name="env.write")
async def put_env(
    name: str, request: Request, principal: PrincipalDep, body: JsonBody, container: ContainerDep, auditor: AuditorDep
) -> Response:
    auditor.note("env.write", target=name)
    service = container.service
    service.require_admin(principal)
    parent = body.get("parent")  # absent: "default" for any env but default itself, which has none
    if parent is not None and not isinstance(parent, str):
        raise InvalidRequest("'parent' must be a string")
    await before_change(request, auditor)
    created = await container.blocking(service.put_env, principal, parse_name(name, "env"), parent)
    env = {e.name: e for e in await container.read(service.list_envs, principal)}[name]
    return json_response({"name": env.name, "parent": env.parent}, status=201 if created else 200)


@router.get("/diff", name="diff")
async def diff(
    request: Request,
    principal: PrincipalDep,
    container: ContainerDep,
    auditor: AuditorDep,
    namespace: str | None = None,
    prefix: str | None = None,
) -> Response:
    params = request.query_params
    from_env, to_env = params.get("from"), params.get("to")
    auditor.note("diff", target=f"{from_env or ''}..{to_env or ''}")
    auditor.note_scope(namespace, None)
    auditor.env = None
    if not from_env or not to_env:
        raise InvalidRequest("?from= and ?to= are required")
    scope = parse_scope(namespace, from_env)
    target = parse_scope(namespace, to_env)
    service = container.service
    await container.read(service.require_env, scope.env)
    await container.read(service.require_env, target.env)
    return json_response(await container.read(service.diff, principal, scope.namespace, scope.env, target.env, prefix))
