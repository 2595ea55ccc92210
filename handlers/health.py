"""``GET /health`` and ``GET /ready``, declared for the OpenAPI document; the ASGI front answers both itself
(``handlers/asgi.py``) without routing, as load balancers probe them often."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


@router.get("/health", name="health")
async def health() -> dict:  # pragma: no cover - answered by the ASGI front
    raise AssertionError("answered by the ASGI front")


@router.get("/ready", name="ready")
async def ready() -> dict:  # pragma: no cover - answered by the ASGI front
    raise AssertionError("answered by the ASGI front")
