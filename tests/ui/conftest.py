"""Fixtures of the console's tests: an app on a fresh data dir behind an https test client (the session cookie is
``Secure``), and helpers to sign in and to read a page's CSRF token."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.settings import Settings
from tessera.handlers.app import create_app

ROOT_TOKEN = "tsr_console-root-token-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}
ORIGIN = "https://testserver"


@pytest.fixture
def container(tmp_path):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    yield container
    container.close()


@pytest.fixture
def client(container):
    with TestClient(create_app(container), base_url=ORIGIN) as client:
        yield client


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden field {name}"
    return found.group(1)


def sign_in(client: TestClient, token: str = ROOT_TOKEN) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/ui/login")
    response = client.post(
        "/ui/login", data={"token": token, "login_nonce": hidden(page.text, "login_nonce"), "next": "/ui"},
        headers={"origin": ORIGIN}, follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 303, response.text
    return hidden(client.get("/ui").text, "csrf")


def make_token(client: TestClient, service: str, rules: list[dict]) -> str:
    assert client.put(f"/policies/{service}", json={"rules": rules}, headers=ROOT).status_code in (200, 201)
    response = client.post("/auth/tokens", json={"service": service, "policies": [service], "ttl_seconds": 3600}, headers=ROOT)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def audit_entries(client: TestClient, **filters: str) -> list[dict]:
    response = client.get("/audit", params={"limit": "200", **filters}, headers=ROOT)
    assert response.status_code == 200
    return response.json()["entries"]
