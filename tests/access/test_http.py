"""Access control and audit over the HTTP API (in-process): tokens, policies, enforcement on every
endpoint, redaction and list filtering per caller, explain, /audit, fail-closed audit and damping."""

from __future__ import annotations

import time

import pytest

from tests.access.conftest import ROOT, bearer, make_token
from tests.backends import break_audit, mend_audit


def error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["request_id"] == response.headers["x-request-id"]


@pytest.fixture
def seeded(client):
    for key, value, secret in [
        ("auth.jwt_secret", "jwt-s3cr3t", True),
        ("auth.issuer", "tessera", False),
        ("billing.stripe_key", "sk_live_x", True),
        ("billing.currency", "EUR", False),
        ("database.host", "db.internal", False),
        ("database.password", "pw", True),
    ]:
        assert client.put(f"/config/{key}", json={"value": value, "secret": secret}, headers=ROOT).status_code == 201
    return client


def test_token_lifecycle_and_self(client):
    response = client.post("/auth/tokens", json={"service": "auth-svc", "policies": ["p"], "ttl_seconds": 60}, headers=ROOT)
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "token", "service", "policies", "expires_at"}
    assert created["token"].startswith("tsr_") and len(created["token"]) >= 40
    listed = client.get("/auth/tokens", headers=ROOT).json()["tokens"]
    assert [t["id"] for t in listed] == [created["id"]] and "token" not in listed[0]
    me = client.get("/auth/self", headers=bearer(created["token"])).json()
    assert (me["id"], me["service"], me["policies"], me["expires_at"]) == (created["id"], "auth-svc", ["p"], created["expires_at"])
    assert client.get("/auth/self", headers=ROOT).json()["service"] == "root"
    assert client.delete(f"/auth/tokens/{created['id']}", headers=ROOT).status_code == 204
    error(client.get("/auth/self", headers=bearer(created["token"])), 401, "unauthenticated")
    refused = client.get("/audit?limit=1", headers=ROOT).json()["entries"][0]
    assert (refused["status"], refused["outcome"], refused["token_id"], refused["service"]) == (
        401, "unauthenticated", created["id"], "auth-svc")  # the revoked token is named: who still uses it
    assert client.get("/auth/tokens", headers=ROOT).json()["tokens"] == []
    error(client.delete("/auth/tokens/tok_nope", headers=ROOT), 404, "not_found")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"service": ""},
        {"service": "a b"},
        {"service": "root"},
        {"service": "x", "policies": "p"},
        {"service": "x", "policies": [1]},
        {"service": "x", "ttl_seconds": 0},
        {"service": "x", "ttl_seconds": "60"},
        {"service": "x", "ttl_seconds": True},
    ],
)
def test_token_body_validation(client, body):
    error(client.post("/auth/tokens", json=body, headers=ROOT), 400, "invalid_request")


def test_expired_token_is_401_within_a_second(client):
    token = make_token(client, "short", rules=[], ttl=1)
    assert client.get("/auth/self", headers=bearer(token)).status_code == 200
    time.sleep(1.05)
    error(client.get("/auth/self", headers=bearer(token)), 401, "unauthenticated")


def test_unknown_missing_malformed_tokens(client):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, bearer("tsr_nope")):
        error(client.get("/config/x", headers=headers), 401, "unauthenticated")


def test_policy_crud_and_validation(client):
    rules = [{"path": "auth.*", "capabilities": ["read", "list", "history"]}]
    created = client.put("/policies/auth-read", json={"rules": rules}, headers=ROOT)
    assert created.status_code == 201
    assert created.json()["rules"] == [{**rules[0], "effect": "allow", "namespaces": ["*"], "envs": ["*"]}]
    assert client.put("/policies/auth-read", json={"rules": rules}, headers=ROOT).status_code == 200
    assert [p["name"] for p in client.get("/policies", headers=ROOT).json()["policies"]] == ["auth-read"]
    assert client.get("/policies/auth-read", headers=ROOT).json()["name"] == "auth-read"
    for bad in (
        {},
        {"rules": "x"},
        {"rules": [{"path": "a..b", "capabilities": ["read"]}]},
        {"rules": [{"path": "a.*", "capabilities": ["sing"]}]},
        {"rules": [{"path": "a.*", "capabilities": ["read"], "effect": "perhaps"}]},
    ):
        error(client.put("/policies/auth-read", json=bad, headers=ROOT), 400, "invalid_request")
    error(client.put("/policies/auth-read", content=b"{not json", headers=ROOT), 400, "invalid_request")
    assert client.delete("/policies/auth-read", headers=ROOT).status_code == 204
    error(client.get("/policies/auth-read", headers=ROOT), 404, "not_found")
    error(client.delete("/policies/auth-read", headers=ROOT), 404, "not_found")


def test_admin_endpoints_need_admin(seeded):
    token = make_token(seeded, "reader", rules=[{"path": "*", "capabilities": ["read", "list", "write"]}])
    headers = bearer(token)
    error(seeded.get("/policies", headers=headers), 403, "forbidden")
    error(seeded.put("/policies/x", json={"rules": []}, headers=headers), 403, "forbidden")
    error(seeded.post("/auth/tokens", json={"service": "x"}, headers=headers), 403, "forbidden")
    error(seeded.get("/auth/tokens", headers=headers), 403, "forbidden")
    error(seeded.get("/audit", headers=headers), 403, "forbidden")
    error(seeded.put("/envs/prod", json={}, headers=headers), 403, "forbidden")
    error(seeded.post("/auth/explain", json={"service": "reader", "key": "a"}, headers=headers), 403, "forbidden")
    admin = make_token(seeded, "ops", rules=[{"path": "*", "capabilities": ["admin"]}])
    assert seeded.get("/policies", headers=bearer(admin)).status_code == 200
    assert seeded.put("/envs/prod", json={}, headers=bearer(admin)).status_code == 201


def test_forbidden_read_reveals_nothing(seeded):
    token = make_token(seeded, "auth-svc", rules=[{"path": "auth.*", "capabilities": ["read"]}])
    headers = bearer(token)
    assert seeded.get("/config/auth.jwt_secret", headers=headers).json()["value"] == "jwt-s3cr3t"
    existing = seeded.get("/config/billing.stripe_key", headers=headers)
    missing = seeded.get("/config/billing.no_such_key", headers=headers)
    for response in (existing, missing):
        error(response, 403, "forbidden")
    strip = lambda r: {**r.json()["error"], "request_id": None}  # noqa: E731
    assert strip(existing) == strip(missing)
    assert set(existing.headers) - {"x-request-id"} == set(missing.headers) - {"x-request-id"}
    error(seeded.get("/config/billing.stripe_key?version=1", headers=headers), 403, "forbidden")
    error(seeded.get("/config/billing.stripe_key?version=99", headers=headers), 403, "forbidden")
    error(seeded.get("/config/billing", headers=headers), 403, "forbidden")
    error(seeded.get("/config/history/billing.stripe_key", headers=headers), 403, "forbidden")
    error(seeded.get("/config/history/billing.nope", headers=headers), 403, "forbidden")


def test_subtree_redaction_and_list_filtering_per_caller(seeded):
    rules = [
        {"path": "database.host", "capabilities": ["read", "list"]},
        {"path": "database.password", "capabilities": ["list"]},
        {"path": "auth.*", "capabilities": ["list"]},
    ]
    headers = bearer(make_token(seeded, "app", rules=rules))
    tree = seeded.get("/config/database", headers=headers).json()
    assert tree["value"] == {"host": "db.internal"} and tree["redacted"] == ["database.password"]
    listed = [k["key"] for k in seeded.get("/config", headers=headers).json()["keys"]]
    assert listed == ["auth.issuer", "auth.jwt_secret", "database.host", "database.password"]
    # auth.* is list-only: its subtree shows nothing readable, both names redacted; billing is invisible.
    assert seeded.get("/config/auth", headers=headers).json()["redacted"] == ["auth.issuer", "auth.jwt_secret"]
    root_tree = seeded.get("/config/database", headers=ROOT).json()
    assert root_tree["value"] == {"host": "db.internal", "password": "pw"} and not root_tree.get("redacted")
    exported = seeded.get("/config/export?format=json", headers=headers).json()
    assert exported == {"database": {"host": "db.internal"}}


def test_write_delete_rollback_history_enforced(seeded):
    rules = [
        {"path": "auth.*", "capabilities": ["read", "write", "history"]},
        {"path": "auth.jwt_secret", "capabilities": ["write"], "effect": "deny"},
    ]
    headers = bearer(make_token(seeded, "writer", rules=rules))
    assert seeded.put("/config/auth.issuer", json={"value": "new"}, headers=headers).status_code == 200
    assert seeded.get("/config/auth.issuer", headers=ROOT).json()["updated_by"] == "writer"
    error(seeded.put("/config/auth.jwt_secret", json={"value": "x"}, headers=headers), 403, "forbidden")
    error(seeded.put("/config/billing.currency", json={"value": "USD"}, headers=headers), 403, "forbidden")
    error(seeded.delete("/config/auth.issuer", headers=headers), 403, "forbidden")
    error(seeded.post("/config/rollback/auth.issuer?version=1", headers=headers), 403, "forbidden")
    assert len(seeded.get("/config/history/auth.issuer", headers=headers).json()["versions"]) == 2
    assert seeded.get("/config/auth.jwt_secret", headers=ROOT).json()["value"] == "jwt-s3cr3t"


def test_scoped_policy(seeded):
    assert seeded.put("/envs/prod", json={}, headers=ROOT).status_code == 201
    headers = bearer(make_token(seeded, "prod-only", rules=[{"path": "*", "capabilities": ["read"], "envs": ["prod"], "namespaces": ["default"]}]))
    assert seeded.get("/config/database.host?env=prod", headers=headers).status_code == 200
    error(seeded.get("/config/database.host", headers=headers), 403, "forbidden")
    error(seeded.get("/config/database.host?env=prod&namespace=other", headers=headers), 403, "forbidden")


def test_explain(seeded):
    make_token(seeded, "auth-svc", rules=[
        {"path": "auth.*", "capabilities": ["read"]},
        {"path": "auth.jwt_secret", "capabilities": ["read"], "effect": "deny", "envs": ["prod"]},
    ])  # fmt: skip
    token_id = seeded.get("/auth/tokens", headers=ROOT).json()["tokens"][0]["id"]
    allowed = seeded.post("/auth/explain", json={"service": "auth-svc", "key": "auth.jwt_secret", "capability": "read"}, headers=ROOT)
    assert allowed.json()["allowed"] is True
    assert allowed.json()["rule"] == {"policy": "auth-svc-policy", "index": 0, "rule": {
        "path": "auth.*", "capabilities": ["read"], "effect": "allow", "namespaces": ["*"], "envs": ["*"]}}  # fmt: skip
    denied = seeded.post("/auth/explain", json={"token_id": token_id, "key": "auth.jwt_secret", "capability": "read", "env": "prod"}, headers=ROOT)
    assert denied.json()["allowed"] is False and denied.json()["rule"]["index"] == 1
    nothing = seeded.post("/auth/explain", json={"service": "auth-svc", "key": "billing.x", "capability": "read"}, headers=ROOT)
    assert nothing.json() == {"allowed": False, "rule": None}
    error(seeded.post("/auth/explain", json={"service": "nobody", "key": "a"}, headers=ROOT), 404, "not_found")
    error(seeded.post("/auth/explain", json={"key": "a"}, headers=ROOT), 400, "invalid_request")
    error(seeded.post("/auth/explain", json={"service": "auth-svc", "key": "a", "capability": "fly"}, headers=ROOT), 400, "invalid_request")


def test_every_request_is_audited_with_filters(seeded):
    headers = bearer(make_token(seeded, "auth-svc", rules=[{"path": "auth.*", "capabilities": ["read"]}]))
    seeded.get("/config/auth.jwt_secret", headers=headers)
    seeded.get("/config/billing.stripe_key", headers=headers)
    seeded.get("/config/auth.jwt_secret", headers=bearer("tsr_wrong"))
    seeded.get("/envs", headers=headers)
    seeded.get("/diff?from=default&to=default", headers=headers)
    entries = seeded.get("/audit?service=auth-svc", headers=ROOT).json()["entries"]
    actions = [(e["action"], e["key"], e["outcome"], e["status"]) for e in entries]
    assert actions[:4] == [
        ("diff", None, "allowed", 200),
        ("env.list", None, "allowed", 200),
        ("config.read", "billing.stripe_key", "denied", 403),
        ("config.read", "auth.jwt_secret", "allowed", 200),
    ]
    read = entries[3]
    assert read["version"] == 1 and read["namespace"] == "default" and read["env"] == "default"
    assert read["token_id"].startswith("tok_") and read["request_id"]
    by_key = seeded.get("/audit?key=auth.jwt_secret", headers=ROOT).json()["entries"]
    assert [e["outcome"] for e in by_key][:2] == ["unauthenticated", "allowed"]
    assert by_key[0]["service"] is None and by_key[0]["status"] == 401
    created = [e for e in seeded.get("/audit?limit=1000", headers=ROOT).json()["entries"] if e["action"] == "token.create"]
    assert created[0]["target"].startswith("tok_")  # the new token's id, never its string
    newest = seeded.get("/audit?limit=1", headers=ROOT).json()["entries"]
    assert len(newest) == 1 and newest[0]["action"] == "audit.read"
    since = seeded.get("/audit?since=2999-01-01T00:00:00Z", headers=ROOT).json()["entries"]
    assert since == []
    assert seeded.get("/audit?since=2000-01-01T00:00:00+00:00", headers=ROOT).json()["entries"]  # "+" unencoded
    error(seeded.get("/audit?limit=0", headers=ROOT), 400, "invalid_request")
    error(seeded.get("/audit?since=yesterday", headers=ROOT), 400, "invalid_request")
    # Entries never hold values or token strings.
    blob = seeded.get("/audit?limit=1000", headers=ROOT).text
    assert "jwt-s3cr3t" not in blob and "sk_live_x" not in blob and "tsr_" not in blob


def test_audit_write_failure_fails_closed(seeded, container):
    break_audit(container)
    response = seeded.get("/config/auth.jwt_secret", headers=ROOT)
    error(response, 503, "unavailable")
    assert "jwt-s3cr3t" not in response.text
    # A write is refused before it runs: its request entry cannot be written, so nothing is committed.
    error(seeded.put("/config/auth.issuer", json={"value": "x"}, headers=ROOT), 503, "unavailable")
    error(seeded.get("/config/auth.jwt_secret", headers=bearer("tsr_wrong")), 503, "unavailable")
    # The node says it cannot serve (what a load balancer probes), and keeps refusing until records can be
    # written again: the audit log retries with a real record ("audit.resumed") every half second.
    error(seeded.get("/ready"), 503, "not_ready")
    error(seeded.get("/config/auth.jwt_secret", headers=ROOT), 503, "unavailable")
    mend_audit(container)
    deadline = time.monotonic() + 5
    while seeded.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seeded.get("/ready").json() == {"status": "ready"}
    assert seeded.get("/config/auth.jwt_secret", headers=ROOT).json()["value"] == "jwt-s3cr3t"
    assert seeded.get("/config/auth.issuer", headers=ROOT).json()["value"] == "tessera"
    resumed = [e for e in seeded.get("/audit?limit=20", headers=ROOT).json()["entries"] if e["action"] == "audit.resumed"]
    assert len(resumed) == 1 and resumed[0]["status"] == 503


def test_health_is_not_audited_and_unaudited_paths_pass(client):
    assert client.get("/envs", headers=ROOT).status_code == 200  # audited: the list below is not empty
    assert client.get("/health").status_code == 200
    entries = client.get("/audit", headers=ROOT).json()["entries"]
    assert "env.list" in [e["action"] for e in entries], entries
    assert all(e["action"] != "health" and e.get("path") != "/health" for e in entries), entries


def test_repeated_401s_from_one_address_become_429(client):
    # conftest sets auth_failure_limit=5: the 6th failure in a minute starts the penalty.
    statuses = [client.get("/config/x", headers=bearer(f"tsr_guess{i}")).status_code for i in range(8)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3
    response = client.get("/config/x", headers=bearer("tsr_guess"))
    error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    # A valid token from the same address is still served; a request without a token is a plain 401.
    assert client.get("/auth/self", headers=ROOT).status_code == 200
    error(client.get("/config/x"), 401, "unauthenticated")
    outcomes = {(e["status"], e["outcome"]) for e in client.get("/audit", headers=ROOT).json()["entries"]}
    assert (429, "unauthenticated") in outcomes


def test_websocket_sessions_are_audited_and_fail_closed(seeded, container):
    token = make_token(seeded, "watcher", rules=[{"path": "auth.*", "capabilities": ["read"]}])
    with seeded.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": token})
        ws.send_json({"type": "subscribe", "keys": ["auth.*"], "since": 0})
        event = ws.receive_json()
        assert event["type"] == "event" and event["key"].startswith("auth.")
    with seeded.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": "tsr_wrong"})
        assert ws.receive_json()["code"] == "unauthenticated"
    entries = seeded.get("/audit?limit=10", headers=ROOT).json()["entries"]
    ws_entries = [(e["action"], e["service"], e["outcome"], e["status"]) for e in entries if e["action"].startswith("ws.")]
    assert ws_entries[:3] == [
        ("ws.connect", None, "unauthenticated", 401),
        ("ws.subscribe", "watcher", "allowed", 200),
        ("ws.connect", "watcher", "allowed", 101),
    ]
    break_audit(container)
    with seeded.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": token})
        message = ws.receive_json()
        assert message == {"type": "error", "code": "unavailable", "message": "the audit log cannot be written"}
    mend_audit(container)
