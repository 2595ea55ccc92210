"""Fixtures of the access-control tests: an app on a fresh data dir, helpers to make tokens and policies."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build, build_access
from tessera.core.settings import Settings
from tessera.handlers.app import create_app

ROOT_TOKEN = "tsr_access-root-token-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def container(tmp_path, monkeypatch):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN, auth_failure_limit=5))
    yield container
    container.close()


@pytest.fixture
def client(container):
    with TestClient(create_app(container)) as client:
        yield client


def make_token(client: TestClient, service: str, rules: list[dict] | None = None, ttl: int = 3600, name: str | None = None) -> str:
    policies = []
    if rules is not None:
        name = name or f"{service}-policy"
        response = client.put(f"/policies/{name}", json={"rules": rules}, headers=ROOT)
        assert response.status_code in (200, 201), response.text
        policies = [name]
    response = client.post("/auth/tokens", json={"service": service, "policies": policies, "ttl_seconds": ttl}, headers=ROOT)
    assert response.status_code == 201, response.text
    return response.json()["token"]


__all__ = ["build_access"]
