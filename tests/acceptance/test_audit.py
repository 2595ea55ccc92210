"""API.md § Audit."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from websockets.sync.client import connect

from tests.acceptance.conftest import assert_error, make_token, parse_time, uid

pytestmark = pytest.mark.slow

FIELDS = {"id", "ts", "request_id", "service", "token_id", "action", "namespace", "env", "key", "version", "outcome",
          "status"}
OUTCOMES = {"allowed", "denied", "not_found", "error", "unauthenticated"}


def entry_for(root, rid: str, tries: int = 20) -> dict:
    for _ in range(tries):
        entries = root.get("/audit?limit=1000").json()["entries"]
        found = [e for e in entries if e["request_id"] == rid]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no audit entry for request {rid}")


def test_audit_entry_shape_for_allowed_write(root):
    k = uid()
    rid = uid("req")
    root.put(f"/config/{k}.a", json={"value": "audit-plain-value"}, headers={"X-Request-Id": rid})
    entry = entry_for(root, rid)
    assert FIELDS <= set(entry)
    parse_time(entry["ts"])
    assert entry["outcome"] == "allowed" and entry["status"] == 201
    assert entry["key"] == f"{k}.a" and entry["version"] == 1
    assert entry["namespace"] == "default" and entry["env"] == "default"
    assert entry["service"] == "root"
    assert isinstance(entry["action"], str) and entry["action"]


def test_audit_response_shape_newest_first(root):
    for _ in range(3):
        root.get("/envs")
    response = root.get("/audit?limit=50")
    assert response.status_code == 200
    entries = response.json()["entries"]
    assert 3 <= len(entries) <= 50
    times = [parse_time(e["ts"]) for e in entries]
    assert times == sorted(times, reverse=True)
    for e in entries:
        assert FIELDS <= set(e) and e["outcome"] in OUTCOMES and isinstance(e["status"], int)


def test_audit_limit_default_100(root):
    for _ in range(105):
        root.get("/auth/self")
    assert len(root.get("/audit").json()["entries"]) == 100
    assert len(root.get("/audit?limit=7").json()["entries"]) == 7
    big = root.get("/audit?limit=1000").json()["entries"]
    assert 100 < len(big) <= 1000


def test_audit_outcomes_for_refused_requests(root, anon, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    nobody = token_client([], service=uid("svc"))
    cases = []
    rid = uid("req")
    nobody.get(f"/config/{k}.a", headers={"X-Request-Id": rid})
    cases.append((rid, "denied", 403))
    rid = uid("req")
    root.get(f"/config/{k}.missing", headers={"X-Request-Id": rid})
    cases.append((rid, "not_found", 404))
    rid = uid("req")
    root.put(f"/config/{k}.a", json={"value": {"obj": 1}}, headers={"X-Request-Id": rid})
    cases.append((rid, "error", 400))
    rid = uid("req")
    anon.get(f"/config/{k}.a", headers={"X-Request-Id": rid})
    cases.append((rid, "unauthenticated", 401))
    rid = uid("req")
    anon.get(f"/config/{k}.a", headers={"X-Request-Id": rid, "Authorization": "Bearer tsr_unknown-audit-token-xyz"})
    cases.append((rid, "unauthenticated", 401))
    rid = uid("req")
    root.put(f"/config/{k}.a", json={"value": 5, "expected_version": 9}, headers={"X-Request-Id": rid})
    cases.append((rid, "error", 409))
    for rid, outcome, status in cases:
        entry = entry_for(root, rid)
        assert (entry["outcome"], entry["status"]) == (outcome, status), (rid, entry)
    denied = entry_for(root, cases[0][0])
    assert denied["service"] == nobody.token_info["service"] and denied["token_id"] == nobody.token_info["id"]
    assert denied["key"] == f"{k}.a"


def expected_outcome(status: int) -> str:
    """The contract's outcome for a response status (API.md, Audit)."""
    if status < 400:
        return "allowed"
    return {401: "unauthenticated", 403: "denied", 404: "not_found"}.get(status, "error")


# Every audited HTTP route: (method, path, JSON body, the root caller's status, the status of a token without any
# permission, the key its entry names). ``{k}`` is a fresh key prefix holding ``{k}.a`` (version 1), ``{env}`` a fresh
# environment name, ``{policy}`` an existing policy, ``{token}`` the id of a live token: each case gets its own, so
# revoking or deleting in one leaves the others intact. Lists, exports, watches and diffs leave out what the caller
# may not see (200), an import reports forbidden keys in ``errors`` (200), ``/envs`` and ``/auth/self`` need a token only.
AUDITED_ROUTES = [
    # reads
    ("GET", "/config/{k}.a", None, 200, 403, "{k}.a"),
    ("GET", "/config?prefix={k}", None, 200, 200, None),
    ("GET", "/config/history/{k}.a", None, 200, 403, "{k}.a"),
    ("GET", "/config/export?format=json&prefix={k}", None, 200, 200, None),
    ("GET", "/watch?timeout=0&keys={k}.*", None, 200, 200, None),
    ("GET", "/diff?from=default&to=default&prefix={k}", None, 200, 200, None),
    ("GET", "/envs", None, 200, 200, None),
    ("GET", "/auth/self", None, 200, 200, None),
    # writes
    ("PUT", "/config/{k}.b", {"value": "new"}, 201, 403, "{k}.b"),
    ("PUT", "/config/{k}.a", {"value": "changed"}, 200, 403, "{k}.a"),
    ("DELETE", "/config/{k}.a", None, 200, 403, "{k}.a"),
    ("POST", "/config/rollback/{k}.a?version=1", None, 200, 403, "{k}.a"),
    ("POST", "/config/import", {"values": {"{k}": {"c": 1}}}, 200, 200, None),
    # admin
    ("PUT", "/envs/{env}", {"parent": "default"}, 201, 403, None),
    ("POST", "/auth/tokens", {"service": "audited-svc", "policies": []}, 201, 403, None),
    ("GET", "/auth/tokens", None, 200, 403, None),
    ("DELETE", "/auth/tokens/{token}", None, 204, 403, None),
    ("POST", "/auth/explain", {"token_id": "{token}", "capability": "read", "key": "{k}.a"}, 200, 403, None),
    ("PUT", "/policies/{env}", {"rules": [{"path": "{k}.*", "capabilities": ["read"]}]}, 201, 403, None),
    ("GET", "/policies", None, 200, 403, None),
    ("GET", "/policies/{policy}", None, 200, 403, None),
    ("DELETE", "/policies/{policy}", None, 204, 403, None),
]


def _fill(template, names):
    if isinstance(template, str):
        return template.format(**names)
    if isinstance(template, dict):
        return {_fill(k, names): _fill(v, names) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, names) for v in template]
    return template


@pytest.mark.parametrize("method,path,body,root_status,nobody_status,key", AUDITED_ROUTES,
                         ids=[f"{m} {p.split('?')[0]}" for m, p, *_ in AUDITED_ROUTES])
def test_every_audited_route_is_recorded_with_its_outcome(root, anon, token_client, method, path, body, root_status,
                                                          nobody_status, key):
    """Each route, called by root, without a token and by a token without permissions, leaves one entry per request
    whose status is the response's and whose outcome is the contract's for that status."""
    k = uid()
    assert root.put(f"/config/{k}.a", json={"value": "first"}).status_code == 201
    policy = uid("p")
    assert root.put(f"/policies/{policy}", json={"rules": [{"path": f"{k}.*", "capabilities": ["read"]}]}).status_code == 201
    token = make_token(root, [])["id"]
    names = {"k": k, "env": uid("e"), "policy": policy, "token": token}
    url = _fill(path, names)
    payload = _fill(body, names)
    nobody = token_client([], service=uid("nobody"))
    calls = [  # the refusals first: the allowed call may delete what they name
        (anon, "unauthenticated", 401, None),
        (nobody, expected_outcome(nobody_status), nobody_status, nobody.token_info),
        (root, "allowed", root_status, None),
    ]
    for client, outcome, status, caller in calls:
        rid = uid("req")
        response = client.request(method, url, json=payload, headers={"X-Request-Id": rid})
        assert response.status_code == status, (method, url, response.status_code, response.text)
        entry = entry_for(root, rid)
        assert (entry["outcome"], entry["status"]) == (outcome, status), (method, url, entry)
        assert entry["outcome"] == expected_outcome(entry["status"])
        assert isinstance(entry["action"], str) and entry["action"], entry
        if caller is not None:
            assert (entry["service"], entry["token_id"]) == (caller["service"], caller["id"]), entry
        if client is root:
            assert entry["service"] == "root", entry
        if key is not None and client is root:
            assert entry["key"] == _fill(key, names), entry
            if method != "GET":  # a write's entry names the version it made
                assert entry["version"] == response.json()["version"], (entry, response.text)


def test_ws_is_recorded(root, server):
    created = make_token(root, [{"path": "*", "capabilities": ["read"]}], service=uid("wssvc"))
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": created["token"]}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["nothing.here"]}))
        time.sleep(0.3)
    for _ in range(20):
        entries = root.get(f"/audit?service={created['service']}").json()["entries"]
        if entries:
            break
        time.sleep(0.1)
    assert entries and all(e["service"] == created["service"] for e in entries)
    # an unauthenticated socket is recorded too
    started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": "tsr_bad-ws-token"}))
        json.loads(ws.recv(timeout=5))
    found = []
    for _ in range(20):
        found = [e for e in root.get("/audit", params={"since": started}).json()["entries"]
                 if e["outcome"] == "unauthenticated"]
        if found:
            break
        time.sleep(0.1)
    assert found, "no unauthenticated /ws entry"
    assert all("tsr_bad-ws-token" not in json.dumps(e) for e in found)


def test_audit_never_holds_values_or_token_strings(root, anon, server):
    k = uid()
    secret_value = "AUDIT-SECRET-" + uid()
    plain_value = "AUDIT-PLAIN-" + uid()
    root.put(f"/config/{k}.pw", json={"value": secret_value, "secret": True})
    root.put(f"/config/{k}.plain", json={"value": plain_value})
    root.get(f"/config/{k}.pw")
    root.post("/config/import", json={"values": {f"{k}.imp": plain_value + "-imp"}})
    created = make_token(root, [{"path": "*", "capabilities": ["read"]}])
    with server.client(created["token"]) as client:
        client.get(f"/config/{k}.plain")
    bad = "tsr_presented-but-unknown-" + uid()
    anon.get("/envs", headers={"Authorization": f"Bearer {bad}"})
    text = root.get("/audit?limit=1000").text
    for needle in (secret_value, plain_value, created["token"], bad, "acceptance-root-token"):
        assert needle not in text, needle


def test_audit_filters(root, token_client):
    k = uid()
    service = uid("svc")
    caller = token_client([{"path": f"{k}.*", "capabilities": ["write", "read"]}], service=service)
    caller.put(f"/config/{k}.a", json={"value": 1})
    caller.get(f"/config/{k}.a")
    root.put(f"/config/{k}.a", json={"value": 2})
    root.put(f"/config/{k}.b", json={"value": 2})
    by_key = root.get(f"/audit?key={k}.a").json()["entries"]
    assert len(by_key) >= 3 and all(e["key"] == f"{k}.a" for e in by_key)
    by_service = root.get(f"/audit?service={service}").json()["entries"]
    assert len(by_service) >= 2 and all(e["service"] == service for e in by_service)
    assert {e["key"] for e in by_service} == {f"{k}.a"}
    both = root.get(f"/audit?service={service}&key={k}.a&limit=1").json()["entries"]
    assert len(both) == 1 and both[0]["service"] == service
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert root.get("/audit", params={"since": future}).json()["entries"] == []
    cutoff_dt = datetime.now(UTC)
    time.sleep(0.05)
    root.put(f"/config/{k}.c", json={"value": 1})
    cutoff = cutoff_dt.isoformat().replace("+00:00", "Z")
    recent = root.get("/audit", params={"since": cutoff}).json()["entries"]
    assert recent and all(parse_time(e["ts"]) >= cutoff_dt for e in recent)
    assert any(e["key"] == f"{k}.c" for e in recent)
    assert all(e["key"] != f"{k}.b" for e in recent)


def test_audit_needs_admin(token_client):
    caller = token_client([{"path": "*", "capabilities": ["read", "write", "list", "history"]}])
    assert_error(caller.get("/audit"), 403, "forbidden")
