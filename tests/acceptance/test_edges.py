"""Adversarial edges of API.md statements: concurrency of compare-and-set, key shapes, reserved routes,
If-None-Match lists, audit of refused/odd requests, restart re-import, permission checks on absent keys."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from tests.acceptance.conftest import BOOT_CONFIG, ROOT, assert_error, make_env, uid
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow


def audit_entry(root, rid):
    for _ in range(20):
        found = [e for e in root.get("/audit?limit=1000").json()["entries"] if e["request_id"] == rid]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no audit entry for {rid}")


# --- concurrency -------------------------------------------------------------------------------------------------

def test_concurrent_compare_and_set_has_one_winner(server, root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 0})
    barrier = threading.Barrier(8)

    def attempt(i):
        with server.client(ROOT) as client:
            barrier.wait()
            return client.put(f"/config/{k}.a", json={"value": i + 1, "expected_version": 1})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(attempt, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 7, statuses
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "version_conflict" and r.json()["error"]["current_version"] == 2
    assert root.get(f"/config/{k}.a").json()["version"] == 2


def test_concurrent_create_with_expected_zero_has_one_winner(server, root):
    k = uid()
    barrier = threading.Barrier(6)

    def attempt(i):
        with server.client(ROOT) as client:
            barrier.wait()
            return client.put(f"/config/{k}.new", json={"value": i, "expected_version": 0}).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(attempt, range(6)))
    assert statuses == [201] + [409] * 5, statuses


def test_concurrent_writes_get_distinct_increasing_revisions_and_versions(server, root):
    k = uid()

    def write(i):
        with server.client(ROOT) as client:
            return client.put(f"/config/{k}.c", json={"value": i}).json()

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(write, range(24)))
    assert sorted(b["version"] for b in bodies) == list(range(1, 25))
    assert len({b["revision"] for b in bodies}) == 24
    by_version = sorted(bodies, key=lambda b: b["version"])
    assert [b["revision"] for b in by_version] == sorted(b["revision"] for b in bodies)


def test_concurrent_conflicting_keys_never_both_exist(server, root):
    for _ in range(3):
        k = uid()
        barrier = threading.Barrier(2)

        def write(key, barrier=barrier):
            with server.client(ROOT) as client:
                barrier.wait()
                return client.put(f"/config/{key}", json={"value": 1}).status_code

        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(write, [f"{k}.a.b", f"{k}.a.b.c"]))
        assert sorted(statuses) == [201, 409], statuses


# --- key shapes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("segment", ["-", "_", "A-b_C", "0", "UPPER"])
def test_unusual_but_valid_segments(root, segment):
    k = uid()
    assert root.put(f"/config/{k}.{segment}", json={"value": segment}).status_code == 201
    assert root.get(f"/config/{k}.{segment}").json()["value"] == segment


def test_keys_are_case_sensitive(root):
    k = uid()
    root.put(f"/config/{k}.Host", json={"value": "upper"})
    root.put(f"/config/{k}.host", json={"value": "lower"})
    assert root.get(f"/config/{k}.Host").json()["value"] == "upper"
    assert root.get(f"/config/{k}.host").json()["value"] == "lower"


@pytest.mark.parametrize("key", ["a%00b", "a%5Cb", "a%22b", "a%27b", "a@b", "a=b", "a%25b", "%C3%A9", "a.%20"])
def test_more_bad_key_shapes(root, key):
    assert_error(root.put(f"/config/{uid()}.{key}", json={"value": 1}), 400, "invalid_key")


@pytest.mark.parametrize("first", ["export", "import", "history", "rollback", "promote"])
def test_reserved_word_alone_cannot_be_written(root, first):
    response = root.put(f"/config/{first}", json={"value": 1})
    assert_error(response, 400, "invalid_key")


@pytest.mark.parametrize("first", ["export", "import", "history", "rollback", "promote"])
def test_reserved_word_alone_cannot_be_deleted_or_read_as_a_key(root, first):
    assert_error(root.delete(f"/config/{first}.x"), 400, "invalid_key")
    assert_error(root.get(f"/config/{first}.x"), 400, "invalid_key")


def test_bad_prefix_is_400(root):
    response = root.get("/config?prefix=a..b")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_key", "invalid_request")


# --- ETag list forms -----------------------------------------------------------------------------------------------

def test_if_none_match_with_a_list(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    etag = root.get(f"/config/{k}.a").headers["etag"]
    assert root.get(f"/config/{k}.a", headers={"If-None-Match": f'"nope", {etag}'}).status_code == 304


def test_304_carries_etag(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    etag = root.get(f"/config/{k}.a").headers["etag"]
    response = root.get(f"/config/{k}.a", headers={"If-None-Match": etag})
    assert response.status_code == 304 and response.headers.get("etag") == etag


# --- permissions on absent things --------------------------------------------------------------------------------

def test_forbidden_delete_and_write_do_not_reveal_existence(root, token_client):
    k = uid()
    root.put(f"/config/{k}.exists", json={"value": 1})
    caller = token_client([{"path": f"{k}.*", "capabilities": ["read"]}])
    assert_error(caller.delete(f"/config/{k}.exists"), 403, "forbidden")
    assert_error(caller.delete(f"/config/{k}.absent"), 403, "forbidden")
    assert_error(caller.put(f"/config/{k}.absent", json={"value": 1}), 403, "forbidden")
    assert_error(caller.post(f"/config/rollback/{k}.exists?version=99"), 403, "forbidden")
    assert_error(caller.post(f"/config/rollback/{k}.absent?version=1"), 403, "forbidden")


def test_deleted_policy_removes_access(root, server):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    name = uid("p")
    root.put(f"/policies/{name}", json={"rules": [{"path": f"{k}.*", "capabilities": ["read"]}]})
    created = root.post("/auth/tokens", json={"service": uid("svc"), "policies": [name], "ttl_seconds": 600}).json()
    with server.client(created["token"]) as client:
        assert client.get(f"/config/{k}.a").status_code == 200
        assert root.delete(f"/policies/{name}").status_code == 204
        time.sleep(1.0)
        assert_error(client.get(f"/config/{k}.a"), 403, "forbidden")


def test_subtree_of_a_prefix_star_grant_is_readable(root, token_client):
    k = uid()
    root.put(f"/config/{k}.app.a", json={"value": 1})
    root.put(f"/config/{k}.app.b.c", json={"value": 2})
    caller = token_client([{"path": f"{k}.app.*", "capabilities": ["read"]}])
    body = caller.get(f"/config/{k}.app").json()
    assert body["value"] == {"a": 1, "b": {"c": 2}} and body.get("redacted", []) == []


# --- audit of odd requests -----------------------------------------------------------------------------------------

def test_audit_records_payload_too_large_and_malformed_json_and_304(root):
    k = uid()
    rid1 = uid("req")
    big = json.dumps({"value": "x" * (1024 * 1024 + 10)})
    root.put(f"/config/{k}.big", content=big, headers={"X-Request-Id": rid1, "Content-Type": "application/json"})
    rid2 = uid("req")
    root.put(f"/config/{k}.bad", content=b"{", headers={"X-Request-Id": rid2, "Content-Type": "application/json"})
    root.put(f"/config/{k}.a", json={"value": 1})
    etag = root.get(f"/config/{k}.a").headers["etag"]
    rid3 = uid("req")
    root.get(f"/config/{k}.a", headers={"X-Request-Id": rid3, "If-None-Match": etag})
    e1, e2, e3 = audit_entry(root, rid1), audit_entry(root, rid2), audit_entry(root, rid3)
    assert (e1["status"], e1["outcome"]) == (413, "error")
    assert (e2["status"], e2["outcome"]) == (400, "error")
    assert (e3["status"], e3["outcome"]) == (304, "allowed")


def test_audit_records_policy_env_token_admin_calls(root, token_client):
    caller = token_client([])
    cases = [
        (root, "PUT", f"/policies/{uid('p')}", {"rules": []}, "allowed"),
        (caller, "PUT", f"/policies/{uid('p')}", {"rules": []}, "denied"),
        (root, "PUT", f"/envs/{uid('e')}", {"parent": "default"}, "allowed"),
        (caller, "PUT", f"/envs/{uid('e')}", {"parent": "default"}, "denied"),
        (caller, "POST", "/auth/tokens", {"service": "x", "policies": []}, "denied"),
        (root, "DELETE", f"/policies/{uid('p')}", None, "not_found"),
    ]
    for client, method, path, body, outcome in cases:
        rid = uid("req")
        client.request(method, path, json=body, headers={"X-Request-Id": rid})
        assert audit_entry(root, rid)["outcome"] == outcome, (method, path)


def test_audit_since_accepts_offsets(root):
    from datetime import datetime, timedelta, timezone
    future = (datetime.now(timezone(timedelta(hours=5))) + timedelta(minutes=30)).isoformat(timespec="seconds")
    response = root.get("/audit", params={"since": future})
    assert response.status_code == 200 and response.json()["entries"] == []
    past = (datetime.now(timezone(timedelta(hours=-3))) - timedelta(minutes=30)).isoformat(timespec="seconds")
    assert root.get("/audit", params={"since": past, "limit": 5}).json()["entries"]


def test_audit_limit_is_at_most_1000(root):
    response = root.get("/audit?limit=5000")
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert len(response.json()["entries"]) <= 1000
    else:
        assert response.json()["error"]["code"] == "invalid_request"


# --- /ws first message ---------------------------------------------------------------------------------------------

def test_ws_garbage_first_message_is_refused(server):
    with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        ws.send("this is not json")
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and isinstance(message["code"], str)


def test_ws_events_match_watch_events(root, server):
    k = uid()
    since = root.get("/health").json()["revision"]
    with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": ROOT}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"], "since": since}))
        root.put(f"/config/{k}.a", json={"value": [1, 2]})
        message = json.loads(ws.recv(timeout=5))
    polled = root.get(f"/watch?keys={k}.*&since={since}&timeout=1").json()["events"][0]
    assert message["type"] == "event"
    assert {key: v for key, v in message.items() if key != "type"} == polled


# --- import/export details -----------------------------------------------------------------------------------------

def test_import_updated_by_is_the_caller(root, token_client):
    k = uid()
    service = uid("svc")
    caller = token_client([{"path": f"{k}.*", "capabilities": ["write", "read"]}], service=service)
    assert caller.post("/config/import", json={"values": {f"{k}.a": 1}}).json()["created"] == 1
    assert root.get(f"/config/{k}.a").json()["updated_by"] == service


def test_import_without_write_commits_nothing(root, token_client):
    k = uid()
    caller = token_client([{"path": f"{k}.*", "capabilities": ["read"]}])
    response = caller.post("/config/import", json={"values": {f"{k}.a": 1}})
    assert response.status_code in (200, 403)
    assert root.get(f"/config/{k}.a").status_code == 404


def test_export_namespace_scope(root):
    k, ns = uid(), uid("ns")
    root.put(f"/config/{k}.a?namespace={ns}", json={"value": "ns"})
    root.put(f"/config/{k}.a", json={"value": "default"})
    assert json.loads(root.get(f"/config/export?format=json&prefix={k}&namespace={ns}").text) == {k: {"a": "ns"}}


def test_export_needs_auth(anon):
    assert_error(anon.get("/config/export?format=json"), 401, "unauthenticated")


def test_restart_with_same_config_file_makes_no_new_versions(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(BOOT_CONFIG)
    process = ServerProcess(tmp_path / "data", root_token=ROOT, extra_args=["--config-file", str(config)]).start()
    try:
        with process.client(ROOT) as client:
            assert client.get("/config/bootcfg.database.host").json()["version"] == 1
    finally:
        process.stop()
    process = ServerProcess(tmp_path / "data", root_token=ROOT, extra_args=["--config-file", str(config)],
                            port=0).start()
    try:
        with process.client(ROOT) as client:
            body = client.get("/config/bootcfg.database.host").json()
            assert body["version"] == 1 and body["updated_by"] == "config-file"
            assert httpx.get(process.url + "/health").status_code == 200
    finally:
        process.stop()


def test_env_inheritance_for_subtree_listing_export_consistent(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.t.a", json={"value": "base"})
    root.put(f"/config/{k}.t.a?env={env}", json={"value": "env"})
    root.delete(f"/config/{k}.t.a?env={env}")
    assert root.get(f"/config/{k}.t.a?env={env}").json()["value"] == "base"
    assert root.get(f"/config/{k}.t?env={env}").json()["value"] == {"a": "base"}
    assert json.loads(root.get(f"/config/export?format=json&prefix={k}&env={env}").text) == {k: {"t": {"a": "base"}}}
    listed = root.get(f"/config?prefix={k}&env={env}").json()["keys"]
    assert [e["key"] for e in listed] == [f"{k}.t.a"]


# --- newline inside a key ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
def test_key_with_embedded_newline_is_invalid_key(root, method):
    response = root.request(method, f"/config/{uid()}.a%0Ab", json={"value": 1} if method == "PUT" else None)
    assert_error(response, 400, "invalid_key")


def test_key_with_embedded_newline_is_invalid_key_on_history_and_rollback(root):
    assert_error(root.get(f"/config/history/{uid()}.a%0Ab"), 400, "invalid_key")
    assert_error(root.post(f"/config/rollback/{uid()}.a%0Ab?version=1"), 400, "invalid_key")


def test_key_with_trailing_newline_is_invalid_key(root):
    k = uid()
    response = root.put(f"/config/{k}.a%0A", json={"value": "smuggled"})
    assert root.get(f"/config/{k}.a").status_code == 404
    assert_error(response, 400, "invalid_key")


def test_read_and_delete_with_trailing_newline_are_invalid_key(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    assert_error(root.get(f"/config/{k}.a%0A"), 400, "invalid_key")
    assert_error(root.delete(f"/config/{k}.a%0A"), 400, "invalid_key")
    assert root.get(f"/config/{k}.a").json()["value"] == 1


def test_watch_keys_with_trailing_newline_refused(root):
    response = root.get(f"/watch?keys={uid()}.a%0A&timeout=0")
    assert response.status_code == 400


# --- body size boundaries --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,code", [(1024 * 1024, "value_too_large"), (1024 * 1024 + 1, "payload_too_large")])
def test_one_mib_body_boundary(root, size, code):
    pre, post = b'{"value":"', b'"}'
    body = pre + b"x" * (size - len(pre) - len(post)) + post
    assert len(body) == size
    response = root.put(f"/config/{uid()}.v", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413, code)


def test_chunked_body_over_1_mib_is_413(root):
    def chunks():
        yield b'{"value": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'"}'
    response = root.put(f"/config/{uid()}.v", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")


def test_unauthenticated_beats_validation(anon):
    assert_error(anon.put("/config/a..b", json={"value": 1}), 401, "unauthenticated")
    assert_error(anon.get(f"/config/a.b?env={uid('nope')}"), 401, "unauthenticated")


# --- request id echo -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rid", ["0f8fad5b-d9cb-469f-a165-70867728950e", "req_123.abc:7"])
def test_common_request_ids_are_echoed(root, rid):
    assert root.get("/envs", headers={"X-Request-Id": rid}).headers["x-request-id"] == rid


@pytest.mark.parametrize("rid", ["Root=1-5759e988-bd862e3fe1be46a994272793", "trace/2026/abc"])
def test_request_id_with_other_characters_is_echoed(root, rid):
    response = root.get("/envs", headers={"X-Request-Id": rid})
    assert response.headers["x-request-id"] == rid


# --- watch response revision -----------------------------------------------------------------------------------------

def test_watch_with_future_since_reports_latest_revision(root):
    current = root.get("/health").json()["revision"]
    response = root.get(f"/watch?since={current + 100000}&timeout=0")
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert response.json()["revision"] == root.get("/health").json()["revision"]


# --- revocation / expiry of a token holding a long-poll --------------------------------------------------------------

def _held_watch(server, token, key_prefix, timeout=8):
    result: dict = {}

    def watch():
        with server.client(token) as client:
            result["response"] = client.get(f"/watch?keys={key_prefix}.*&timeout={timeout}")

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, result


def test_revoked_token_held_watch_gets_no_values(root, server):
    from tests.acceptance.conftest import make_token
    k = uid()
    created = make_token(root, [{"path": f"{k}.*", "capabilities": ["read"]}])
    thread, result = _held_watch(server, created["token"], k)
    time.sleep(0.5)
    assert root.delete(f"/auth/tokens/{created['id']}").status_code == 204
    time.sleep(2.0)
    root.put(f"/config/{k}.a", json={"value": "after-revocation"})
    thread.join(15)
    response = result["response"]
    assert "after-revocation" not in response.text
    assert response.status_code == 401


def test_expired_token_held_watch_gets_no_values(root, server):
    from tests.acceptance.conftest import make_token
    k = uid()
    created = make_token(root, [{"path": f"{k}.*", "capabilities": ["read"]}], ttl=1)
    thread, result = _held_watch(server, created["token"], k)
    time.sleep(3.0)
    root.put(f"/config/{k}.a", json={"value": "after-expiry"})
    thread.join(15)
    response = result["response"]
    assert "after-expiry" not in response.text
    assert response.status_code == 401


def test_revoked_token_open_websocket_is_cut_off(root, server):
    """A socket whose token is revoked gets ``{"type": "error", "code": "unauthenticated"}`` and is closed with
    1008 (policy violation), and no event committed after the revocation reaches it."""
    from websockets.exceptions import ConnectionClosed

    from tests.acceptance.conftest import make_token
    k = uid()
    created = make_token(root, [{"path": f"{k}.*", "capabilities": ["read"]}])
    with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": created["token"]}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"]}))
        time.sleep(0.3)
        root.put(f"/config/{k}.a", json={"value": "before"})
        assert json.loads(ws.recv(timeout=5))["value"] == "before"
        assert root.delete(f"/auth/tokens/{created['id']}").status_code == 204
        time.sleep(1.2)
        root.put(f"/config/{k}.a", json={"value": "after-ws-revocation"})
        received = []
        deadline = time.monotonic() + 10  # revocation is effective within 1 s, the socket re-checks every second
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() < deadline:
                received.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
    assert not any(m.get("value") == "after-ws-revocation" for m in received), received
    errors = [m for m in received if m.get("type") == "error"]
    assert [m["code"] for m in errors] == ["unauthenticated"], received
