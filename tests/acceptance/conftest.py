"""Black-box acceptance fixtures: one real ``tessera serve`` process per test session (127.0.0.1 only).

Every test works under its own random key prefix / env names, so tests do not depend on each other's data.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import httpx
import pytest

from tests.servers import ServerProcess

ROOT = "tsr_acceptance-root-token-0123456789abcdef"

BOOT_CONFIG = """\
bootcfg:
  database:
    host: boot-db.internal
    port: 5432
  flags:
    dark-mode: true
"""


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("acceptance")
    config_file = base / "config.yaml"
    config_file.write_text(BOOT_CONFIG)
    process = ServerProcess(base / "data", root_token=ROOT, extra_args=["--config-file", str(config_file)]).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def root(server):
    with server.client(ROOT) as client:
        yield client


@pytest.fixture(scope="session")
def anon(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def uid(prefix: str = "t") -> str:
    """A fresh key segment / env / namespace name: lower-case, valid everywhere."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_env(root, parent: str = "default", name: str | None = None) -> str:
    name = name or uid("e")
    response = root.put(f"/envs/{name}", json={"parent": parent})
    assert response.status_code == 201, response.text
    return name


def make_token(root, rules: list[dict] | None = None, service: str | None = None, ttl: int | None = 3600,
               policies: list[str] | None = None) -> dict:
    """Create (optionally) a fresh policy with ``rules`` and a token bound to it; returns the 201 body."""
    policies = list(policies or [])
    if rules is not None:
        name = uid("p")
        response = root.put(f"/policies/{name}", json={"rules": rules})
        assert response.status_code == 201, response.text
        policies.append(name)
    body = {"service": service or uid("svc"), "policies": policies}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    response = root.post("/auth/tokens", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def token_client(server, root):
    """Factory: ``token_client(rules, service=None)`` -> httpx.Client authenticated with a fresh token."""
    clients: list[httpx.Client] = []

    def factory(rules, service=None, **kwargs):
        created = make_token(root, rules, service=service, **kwargs)
        client = server.client(created["token"])
        client.token_info = created  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def assert_error(response: httpx.Response, status: int, code: str | tuple[str, ...]) -> dict:
    """The one error shape: {"error": {"code", "message", "request_id"}} with request_id == X-Request-Id."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    codes = (code,) if isinstance(code, str) else code
    assert error["code"] in codes, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["request_id"], str) and error["request_id"], error
    assert response.headers.get("x-request-id") == error["request_id"], (response.headers, error)
    return error


def parse_time(value: str) -> datetime:
    """RFC 3339 timestamp, timezone-aware."""
    assert isinstance(value, str)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def revision(client) -> int:
    return client.get("/health").json()["revision"]


def dumps(value) -> str:
    return json.dumps(value)
