"""``GET /audit``: the audit log, newest first, filtered by key, service and time (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tessera.core.audit import entry_to_api
from tessera.handlers.auth import AccessDep, json_response
from tessera.handlers.deps import AuditorDep, ContainerDep, PrincipalDep, int_param

router = APIRouter()


@router.get("/audit", name="audit.read")
async def list_audit(
    principal: PrincipalDep,
    access: AccessDep,
    container: ContainerDep,
    auditor: AuditorDep,
    key: str | None = None,
    service: str | None = None,
    since: str | None = None,
    limit: str | None = None,
    phase: str = "response",
) -> Response:
    auditor.note("audit.read")
    limit_value = int_param(limit, "limit", minimum=1, maximum=1000) or 100
    entries = await container.read(access.query_audit, principal, key, service, since, limit_value, phase)
    return json_response({"entries": [entry_to_api(entry) for entry in entries]})
