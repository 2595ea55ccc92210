from __future__ import annotations

from fastapi import APIRouter

from tessera.handlers.deps import ContainerDep

router = APIRouter()


@router.get("/health")
def health(container: ContainerDep) -> dict:
    return {"status": "ok", "backend": container.store.backend_name, "revision": container.store.current_revision()}
