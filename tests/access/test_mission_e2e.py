"""The mission scenario end to end, over HTTP against real ``tessera serve`` processes on 127.0.0.1.

A token for ``auth-svc`` with a policy on ``auth.*`` reads ``auth.jwt_secret``, gets ``403`` on
``billing.stripe_key`` and cannot tell it from a missing key; both reads are in ``/audit``. Revocation on
one node is effective on another node (same data dir) within a second. Token strings appear neither in
the store's files nor in the server logs.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.servers import ServerProcess

ROOT_TOKEN = "tsr_e2e-root-token-0123456789abcdef"


@pytest.fixture
def nodes(tmp_path):
    data_dir = tmp_path / "data"
    # Audit records also as JSON lines on stdout (off by default outside Lambda): the logs are checked below.
    first = ServerProcess(data_dir, root_token=ROOT_TOKEN, env={"TESSERA_AUDIT_STDOUT": "1"}).start()
    second = first.worker()  # a second node on the directory: a worker, as tessera serve --workers starts them
    yield first, second
    first.stop()
    second.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_mission_scenario_two_nodes(nodes, tmp_path):
    first, second = nodes
    with first.client() as root:
        assert root.put("/config/auth.jwt_secret", json={"value": "jwt-signing-key-42", "secret": True}).status_code == 201
        assert root.put("/config/billing.stripe_key", json={"value": "sk_live_abc", "secret": True}).status_code == 201
        policy = {"rules": [{"path": "auth.*", "capabilities": ["read", "list", "history"]}]}
        assert root.put("/policies/auth-read", json=policy).status_code == 201
        created = root.post("/auth/tokens", json={"service": "auth-svc", "policies": ["auth-read"], "ttl_seconds": 86400})
        assert created.status_code == 201
        token, token_id = created.json()["token"], created.json()["id"]

    with httpx.Client(base_url=second.url, headers=bearer(token), timeout=10) as svc:
        read = svc.get("/config/auth.jwt_secret")
        assert read.status_code == 200 and read.json()["value"] == "jwt-signing-key-42"
        existing = svc.get("/config/billing.stripe_key")
        missing = svc.get("/config/billing.no_such_key")
        assert existing.status_code == missing.status_code == 403
        assert existing.json()["error"]["code"] == missing.json()["error"]["code"] == "forbidden"
        assert existing.json()["error"]["message"] == missing.json()["error"]["message"]
        assert "sk_live_abc" not in existing.text
        assert svc.get("/auth/self").json()["service"] == "auth-svc"

    with first.client() as root:
        entries = root.get("/audit", params={"service": "auth-svc"}).json()["entries"]
        seen = {(e["key"], e["outcome"], e["status"]) for e in entries}
        assert ("auth.jwt_secret", "allowed", 200) in seen
        assert ("billing.stripe_key", "denied", 403) in seen
        assert all(e["token_id"] == token_id for e in entries)

        # Revoke on the first node; the second stops accepting the token within a second.
        assert root.delete(f"/auth/tokens/{token_id}").status_code == 204
        revoked_at = time.monotonic()
    with httpx.Client(base_url=second.url, headers=bearer(token), timeout=10) as svc:
        while svc.get("/auth/self").status_code != 401:
            assert time.monotonic() - revoked_at < 1.0, "revocation took longer than a second on the other node"
            time.sleep(0.05)
        assert svc.get("/config/auth.jwt_secret").json()["error"]["code"] == "unauthenticated"

    # Expired tokens: 401 once the TTL has passed, on any node.
    with first.client() as root:
        short = root.post("/auth/tokens", json={"service": "short", "policies": [], "ttl_seconds": 1}).json()["token"]
    assert httpx.get(f"{second.url}/auth/self", headers=bearer(short)).status_code == 200
    time.sleep(1.1)
    assert httpx.get(f"{second.url}/auth/self", headers=bearer(short)).status_code == 401

    # The audit chain written by both nodes at once is intact.
    from typer.testing import CliRunner

    from tessera.client.cli import app as cli

    result = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(first.data_dir)])
    assert result.exit_code == 0, result.output

    first.stop()
    second.stop()
    # No token string in any file of the store (db, WAL, keyring) nor in the logs (which hold the audit lines).
    files = [p for p in first.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "tessera.db" for p in files)
    logs = first.log() + second.log()
    assert '"message":"audit"' in logs  # the structured audit line is there …
    for secret in (token, short, ROOT_TOKEN):
        needle = secret.encode()
        for path in files:
            assert needle not in path.read_bytes(), f"a token string is stored in {path.name}"
            assert needle[4:20] not in path.read_bytes()
        assert secret not in logs  # … without token strings
    assert "jwt-signing-key-42" not in logs and "sk_live_abc" not in logs
