"""``/auth``: service tokens (create, list, revoke), ``/auth/self`` and ``/auth/explain``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from tessera.core.access_model import TokenRecord
from tessera.core.access_service import AccessService
from tessera.core.model import Principal, format_time
from tessera.handlers.deps import JsonBody, PrincipalDep

router = APIRouter(prefix="/auth")


def get_access(request: Request) -> AccessService:
    return request.app.state.container.extras["access"].access


AccessDep = Annotated[AccessService, Depends(get_access)]


def token_body(record: TokenRecord | Principal) -> dict[str, Any]:
    expires = record.expires_at
    return {
        "id": record.id,
        "service": record.service,
        "policies": list(record.policies),
        "expires_at": format_time(expires) if expires is not None else None,
    }


@router.post("/tokens")
def create_token(principal: PrincipalDep, body: JsonBody, access: AccessDep) -> JSONResponse:
    token, record = access.create_token(principal, body.get("service"), body.get("policies"), body.get("ttl_seconds"))
    return JSONResponse({**token_body(record), "token": token}, status_code=201)


@router.get("/tokens")
def list_tokens(principal: PrincipalDep, access: AccessDep) -> dict:
    return {"tokens": [token_body(record) for record in access.list_tokens(principal)]}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, principal: PrincipalDep, access: AccessDep) -> Response:
    access.revoke_token(principal, token_id)
    return Response(status_code=204)


@router.get("/self")
def whoami(principal: PrincipalDep) -> dict:
    return {**token_body(principal), "root": principal.is_root}


@router.post("/explain")
def explain(principal: PrincipalDep, body: JsonBody, access: AccessDep) -> dict:
    record, decision = access.explain(principal, body)
    answer = decision.to_dict()
    if record is not None:
        answer["token_id"] = record.id
    return answer
