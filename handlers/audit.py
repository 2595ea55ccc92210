"""``GET /audit``: the audit log, newest first, filtered by key, service and time (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.core.audit import entry_to_api
from tessera.handlers.auth import AccessDep
from tessera.handlers.deps import PrincipalDep, int_param

router = APIRouter()


@router.get("/audit")
def list_audit(
    principal: PrincipalDep,
    access: AccessDep,
    key: str | None = None,
    service: str | None = None,
    since: str | None = None,
    limit: str | None = None,
    phase: str = "response",
) -> dict:
    limit_value = int_param(limit, "limit", minimum=1, maximum=1000) or 100
    entries = access.query_audit(principal, key, service, since, limit_value, phase)
    return {"entries": [entry_to_api(entry) for entry in entries]}
