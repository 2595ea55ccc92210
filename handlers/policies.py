"""``/policies``: create or replace, list, read and delete named policies (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from tessera.core.access_model import PolicyDoc
from tessera.handlers.auth import AccessDep
from tessera.handlers.deps import JsonBody, PrincipalDep

router = APIRouter(prefix="/policies")


def policy_body(doc: PolicyDoc) -> dict[str, Any]:
    return {"name": doc.name, "rules": [rule.to_dict() for rule in doc.rules], "version": doc.version}


@router.put("/{name}")
def put_policy(name: str, principal: PrincipalDep, body: JsonBody, access: AccessDep) -> JSONResponse:
    created, doc = access.put_policy(principal, name, body)
    return JSONResponse(policy_body(doc), status_code=201 if created else 200)


@router.get("")
def list_policies(principal: PrincipalDep, access: AccessDep) -> dict:
    return {"policies": [policy_body(doc) for doc in access.list_policies(principal)]}


@router.get("/{name}")
def get_policy(name: str, principal: PrincipalDep, access: AccessDep) -> dict:
    return policy_body(access.get_policy(principal, name))


@router.delete("/{name}")
def delete_policy(name: str, principal: PrincipalDep, access: AccessDep) -> Response:
    access.delete_policy(principal, name)
    return Response(status_code=204)
