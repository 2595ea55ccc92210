"""A subtree read is cached whole per set of policies (issue 8: 20-leaf subtree ≥ 0.5× a plain read): two tokens
with different policies never see each other's cached view, a policy change takes effect at once on this node,
and a commit anywhere in the tree is read at once."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.settings import Settings
from tessera.handlers.app import create_app

ROOT_TOKEN = "tsr_subtree-root-token-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}


@pytest.fixture
def client(tmp_path):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    with TestClient(create_app(container), headers=ROOT) as client:
        yield client
    container.close()


def token(client: TestClient, service: str, rules: list[dict]) -> dict[str, str]:
    client.put(f"/policies/{service}", json={"rules": rules}).raise_for_status()
    created = client.post("/auth/tokens", json={"service": service, "policies": [service]})
    return {"Authorization": f"Bearer {created.json()['token']}"}


def test_cached_subtrees_follow_each_callers_policies_and_every_change(client):
    for leaf, value in {"svc.a": 1, "svc.b": 2, "svc.inner.c": 3}.items():
        client.put(f"/config/{leaf}", json={"value": value}).raise_for_status()
    everything = token(client, "reads-all", [{"path": "svc.*", "capabilities": ["read", "list"]}])
    partial = token(client, "reads-some", [
        {"path": "svc.*", "capabilities": ["read", "list"]},
        {"path": "svc.b", "capabilities": ["read"], "effect": "deny"},
    ])  # fmt: skip
    same_rules = token(client, "reads-all-too", [{"path": "svc.*", "capabilities": ["read", "list"]}])
    for _ in range(3):  # the first round fills the cache, the others are answered from it
        full = client.get("/config/svc", headers=everything).json()
        assert full["value"] == {"a": 1, "b": 2, "inner": {"c": 3}} and full["redacted"] == []
        part = client.get("/config/svc", headers=partial).json()
        assert part["value"] == {"a": 1, "inner": {"c": 3}} and part["redacted"] == ["svc.b"]
        assert client.get("/config/svc", headers=same_rules).json()["value"] == full["value"]
        assert client.get("/config/svc").json()["value"] == full["value"]  # root
    etag = client.get("/config/svc", headers=partial).headers["etag"]
    assert client.get("/config/svc", headers={**partial, "If-None-Match": etag}).status_code == 304

    # A policy changed on this node: the next read decides anew (its decision key changed with its version).
    client.put("/policies/reads-some", json={"rules": [{"path": "svc.*", "capabilities": ["read", "list"]}]}).raise_for_status()
    assert client.get("/config/svc", headers=partial).json()["value"] == {"a": 1, "b": 2, "inner": {"c": 3}}
    assert client.get("/config/svc", headers=everything).json()["redacted"] == []

    # A commit under the tree: read at once by every caller.
    client.put("/config/svc.inner.c", json={"value": 30}).raise_for_status()
    assert client.get("/config/svc", headers=everything).json()["value"]["inner"] == {"c": 30}
    client.delete("/config/svc.a").raise_for_status()
    assert "a" not in client.get("/config/svc", headers=partial).json()["value"]
    response = client.get("/config/svc", headers={**partial, "If-None-Match": etag})
    assert response.status_code == 200 and response.headers["etag"] != etag
