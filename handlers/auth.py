"""``/auth``: service tokens (create, list, revoke), ``/auth/self`` and ``/auth/explain``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from tessera.core.access_model import TokenRecord
from tessera.core.access_service import AccessService
from tessera.core.model import Principal, format_time
from tessera.handlers.deps import AuditorDep, ContainerDep, JsonBody, PrincipalDep, before_change
from tessera.handlers.render import dumps

router = APIRouter(prefix="/auth")


def get_access(request: Request) -> AccessService:
    access = request.app.state.container.access.access
    assert access is not None
    return access


AccessDep = Annotated[AccessService, Depends(get_access)]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def token_body(record: TokenRecord | Principal) -> dict[str, Any]:
    expires = record.expires_at
    return {
        "id": record.id,
        "service": record.service,
        "policies": list(record.policies),
        "expires_at": format_time(expires) if expires is not None else None,
    }


@router.post("/tokens", name="token.create")
async def create_token(
    request: Request, principal: PrincipalDep, body: JsonBody, access: AccessDep, container: ContainerDep, auditor: AuditorDep
) -> Response:
    auditor.note("token.create")
    access.require_admin(principal)
    await before_change(request, auditor)
    token, record = await container.blocking(
        access.create_token, principal, body.get("service"), body.get("policies"), body.get("ttl_seconds"), auditor.idempotency_guard
    )
    auditor.note(target=record.id)  # the new token's id, never its string
    return json_response({**token_body(record), "token": token}, status=201)


@router.get("/tokens", name="token.list")
async def list_tokens(principal: PrincipalDep, access: AccessDep, container: ContainerDep, auditor: AuditorDep) -> Response:
    auditor.note("token.list")
    records = await container.read(access.list_tokens, principal)
    return json_response({"tokens": [token_body(record) for record in records]})


@router.delete("/tokens/{token_id}", name="token.revoke")
async def revoke_token(
    token_id: str, request: Request, principal: PrincipalDep, access: AccessDep, container: ContainerDep, auditor: AuditorDep
) -> Response:
    auditor.note("token.revoke", target=token_id)
    access.require_admin(principal)
    await before_change(request, auditor)
    await container.blocking(access.revoke_token, principal, token_id)
    return Response(status_code=204)


@router.get("/self", name="auth.self")
async def whoami(principal: PrincipalDep, auditor: AuditorDep) -> Response:
    auditor.note("auth.self")
    return json_response({**token_body(principal), "root": principal.is_root})


@router.post("/explain", name="auth.explain")
async def explain(principal: PrincipalDep, body: JsonBody, access: AccessDep, container: ContainerDep, auditor: AuditorDep) -> Response:
    auditor.note("auth.explain")
    record, decision = await container.read(access.explain, principal, body)
    answer = decision.to_dict()
    if record is not None:
        answer["token_id"] = record.id
    return json_response(answer)
