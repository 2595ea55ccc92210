"""``/policies``: create or replace, list, read and delete named policies (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from tessera.core.access_model import PolicyDoc
from tessera.handlers.auth import AccessDep, json_response
from tessera.handlers.deps import AuditorDep, ContainerDep, JsonBody, PrincipalDep, before_change

router = APIRouter(prefix="/policies")


def policy_body(doc: PolicyDoc) -> dict[str, Any]:
    return {"name": doc.name, "rules": [rule.to_dict() for rule in doc.rules], "version": doc.version}


@router.put("/{name}", name="policy.write")
async def put_policy(
    name: str, request: Request, principal: PrincipalDep, body: JsonBody, access: AccessDep, container: ContainerDep, auditor: AuditorDep
) -> Response:
    auditor.note("policy.write", target=name)
    access.require_admin(principal)
    await before_change(request, auditor)
    created, doc = await container.blocking(access.put_policy, principal, name, body)
    return json_response(policy_body(doc), status=201 if created else 200)


@router.get("", name="policy.list")
async def list_policies(principal: PrincipalDep, access: AccessDep, container: ContainerDep, auditor: AuditorDep) -> Response:
    auditor.note("policy.list")
    docs = await container.read(access.list_policies, principal)
    return json_response({"policies": [policy_body(doc) for doc in docs]})


@router.get("/{name}", name="policy.read")
async def get_policy(name: str, principal: PrincipalDep, access: AccessDep, container: ContainerDep, auditor: AuditorDep) -> Response:
    auditor.note("policy.read", target=name)
    return json_response(policy_body(await container.read(access.get_policy, principal, name)))


@router.delete("/{name}", name="policy.delete")
async def delete_policy(
    name: str, request: Request, principal: PrincipalDep, access: AccessDep, container: ContainerDep, auditor: AuditorDep
) -> Response:
    auditor.note("policy.delete", target=name)
    access.require_admin(principal)
    await before_change(request, auditor)
    await container.blocking(access.delete_policy, principal, name)
    return Response(status_code=204)
