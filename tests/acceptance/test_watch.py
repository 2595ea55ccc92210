"""API.md § Watching: /watch long-poll and the /ws WebSocket; § Health."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.acceptance.conftest import ROOT, assert_error, make_env, make_token, revision, uid
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow

EVENT_FIELDS = {"revision", "key", "version", "action", "namespace", "env", "secret"}


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def recv_all(ws, count, timeout=10.0) -> list[dict]:
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        try:
            messages.append(json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic()))))
        except TimeoutError:
            break
    return messages


def recv_none(ws, wait=0.7) -> list[dict]:
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=wait)))
    except TimeoutError:
        return messages


# --- revisions -----------------------------------------------------------------------------------------------------

def test_revisions_strictly_increase_store_wide(root):
    k = uid()
    env = make_env(root)
    revs = [
        root.put(f"/config/{k}.a", json={"value": 1}).json()["revision"],
        root.put(f"/config/{k}.b?namespace={uid('ns')}", json={"value": 1}).json()["revision"],
        root.put(f"/config/{k}.a?env={env}", json={"value": 1}).json()["revision"],
        root.put(f"/config/{k}.a", json={"value": 2}).json()["revision"],
    ]
    assert revs == sorted(revs) and len(set(revs)) == 4
    assert revision(root) >= revs[-1]


# --- /watch --------------------------------------------------------------------------------------------------------

def test_watch_returns_at_once_with_events_in_order(root):
    k = uid()
    since = revision(root)
    root.put(f"/config/{k}.a", json={"value": "one"})
    root.put(f"/config/{k}-other.b", json={"value": "no"})
    root.put(f"/config/{k}.pw", json={"value": "watch-secret-value", "secret": True})
    root.put(f"/config/{k}.a", json={"value": "two"})
    root.delete(f"/config/{k}.a")
    root.post(f"/config/rollback/{k}.a?version=1")
    started = time.monotonic()
    response = root.get(f"/watch?keys={k}.*&since={since}&timeout=20")
    assert time.monotonic() - started < 3
    assert response.status_code == 200
    body = response.json()
    assert body["revision"] == revision(root)
    events = body["events"]
    assert [(e["key"], e["action"], e["version"]) for e in events] == [
        (f"{k}.a", "create", 1), (f"{k}.pw", "create", 1), (f"{k}.a", "update", 2), (f"{k}.a", "delete", 3),
        (f"{k}.a", "rollback", 4)]
    for e in events:
        assert EVENT_FIELDS <= set(e)
        assert e["namespace"] == "default" and e["env"] == "default"
    revs = [e["revision"] for e in events]
    assert revs == sorted(revs) and len(set(revs)) == len(revs) and revs[0] > since
    assert events[0]["value"] == "one" and events[2]["value"] == "two" and events[4]["value"] == "one"
    assert events[1]["secret"] is True and "value" not in events[1]
    assert "value" not in events[3]
    assert "watch-secret-value" not in response.text


def test_watch_since_is_exclusive(root):
    k = uid()
    first = root.put(f"/config/{k}.a", json={"value": 1}).json()["revision"]
    root.put(f"/config/{k}.a", json={"value": 2})
    body = root.get(f"/watch?keys={k}.*&since={first}&timeout=2").json()
    assert [e["value"] for e in body["events"]] == [2]


def test_watch_keys_exact_and_star(root):
    k = uid()
    since = revision(root)
    root.put(f"/config/{k}.x.y", json={"value": 1})
    root.put(f"/config/{k}.z", json={"value": 2})
    exact = root.get(f"/watch?keys={k}.z&since={since}&timeout=5").json()
    assert [e["key"] for e in exact["events"]] == [f"{k}.z"]
    multi = root.get(f"/watch?keys={k}.z,{k}.x.*&since={since}&timeout=5").json()
    assert [e["key"] for e in multi["events"]] == [f"{k}.x.y", f"{k}.z"]
    everything = root.get(f"/watch?keys=*&since={since}&timeout=5").json()
    assert {f"{k}.x.y", f"{k}.z"} <= {e["key"] for e in everything["events"]}
    not_itself = root.get(f"/watch?keys={k}.z.*&since={since}&timeout=0.3").json()
    assert not_itself["events"] == []


def test_watch_holds_until_a_matching_change(root, server):
    k = uid()
    since = revision(root)
    result: dict = {}

    def watch():
        with server.client(ROOT) as client:
            result["sent"] = time.monotonic()
            result["response"] = client.get(f"/watch?keys={k}.flag&since={since}&timeout=20")
            result["returned"] = time.monotonic()

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    root.put(f"/config/{k}.unrelated", json={"value": 1})
    time.sleep(0.4)
    assert thread.is_alive()
    flag_put = time.monotonic()
    root.put(f"/config/{k}.flag", json={"value": True})
    thread.join(10)
    body = result["response"].json()
    assert [(e["key"], e["value"]) for e in body["events"]] == [(f"{k}.flag", True)]
    # Ordering, not durations (a loaded machine may start the thread late): the watch did not return on the
    # unrelated change, only once the matching one was committed, and well before its own timeout.
    assert result["returned"] > flag_put, result
    assert result["returned"] - max(result["sent"], flag_put) < 10, result


def test_watch_timeout_returns_empty_events(root):
    k = uid()
    root.put(f"/config/{k}.old", json={"value": 1})
    started = time.monotonic()
    response = root.get(f"/watch?keys={k}.*&timeout=1")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert body["events"] == [] and body["revision"] == revision(root)
    assert 0.8 < elapsed < 4


def test_watch_since_defaults_to_now_and_timeout_defaults_to_holding(root, server):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "old"})
    result: dict = {}

    def watch():
        with server.client(ROOT) as client:
            started = time.monotonic()
            result["body"] = client.get(f"/watch?keys={k}.*").json()
            result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(1.2)
    assert thread.is_alive()  # not returned: old change not replayed and default timeout is not tiny
    root.put(f"/config/{k}.a", json={"value": "new"})
    thread.join(10)
    assert [e["value"] for e in result["body"]["events"]] == ["new"]


def test_watch_timeout_above_60_is_accepted(root, server):
    k = uid()
    result: dict = {}

    def watch():
        with server.client(ROOT) as client:
            result["response"] = client.get(f"/watch?keys={k}.*&timeout=3600")

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    root.put(f"/config/{k}.a", json={"value": 1})
    thread.join(10)
    assert result["response"].status_code == 200
    assert [e["key"] for e in result["response"].json()["events"]] == [f"{k}.a"]


def test_watch_in_env_sees_ancestor_changes_only_in_namespace(root):
    k = uid()
    staging = make_env(root)
    prod = make_env(root, parent=staging)
    sibling = make_env(root)
    since = revision(root)
    root.put(f"/config/{k}.a", json={"value": "d"})
    root.put(f"/config/{k}.a?env={staging}", json={"value": "s"})
    root.put(f"/config/{k}.a?env={prod}", json={"value": "p"})
    root.put(f"/config/{k}.a?env={sibling}", json={"value": "sib"})
    root.put(f"/config/{k}.a?namespace={uid('ns')}", json={"value": "other-ns"})
    body = root.get(f"/watch?keys={k}.*&since={since}&env={prod}&timeout=2").json()
    assert [(e["env"], e["value"]) for e in body["events"]] == [("default", "d"), (staging, "s"), (prod, "p")]
    assert all(e["namespace"] == "default" for e in body["events"])
    staging_only = root.get(f"/watch?keys={k}.*&since={since}&env={staging}&timeout=2").json()
    assert [e["env"] for e in staging_only["events"]] == ["default", staging]
    default_only = root.get(f"/watch?keys={k}.*&since={since}&timeout=2").json()
    assert [e["env"] for e in default_only["events"]] == ["default"]


def test_watch_namespace_scope(root):
    k, ns = uid(), uid("ns")
    since = revision(root)
    root.put(f"/config/{k}.a?namespace={ns}", json={"value": 1})
    root.put(f"/config/{k}.a", json={"value": 2})
    body = root.get(f"/watch?keys={k}.*&since={since}&namespace={ns}&timeout=2").json()
    assert [(e["namespace"], e["value"]) for e in body["events"]] == [(ns, 1)]


def test_watch_only_events_for_readable_keys(root, token_client):
    k = uid()
    caller = token_client([{"path": f"{k}.open.*", "capabilities": ["read"]},
                           {"path": f"{k}.listonly.*", "capabilities": ["list", "history"]}])
    since = revision(root)
    root.put(f"/config/{k}.open.a", json={"value": "seen"})
    root.put(f"/config/{k}.listonly.b", json={"value": "unseen-value"})
    root.put(f"/config/{k}.closed.c", json={"value": "unseen-value"})
    response = caller.get(f"/watch?keys={k}.*&since={since}&timeout=1")
    assert response.status_code == 200
    assert [e["key"] for e in response.json()["events"]] == [f"{k}.open.a"]
    assert "unseen" not in response.text and "listonly" not in response.text and "closed" not in response.text


def test_watch_without_read_gets_nothing(root, token_client):
    k = uid()
    caller = token_client([{"path": f"{k}.*", "capabilities": ["list", "history", "write"]}])
    since = revision(root)
    root.put(f"/config/{k}.a", json={"value": "x"})
    response = caller.get(f"/watch?keys={k}.*&since={since}&timeout=0.5")
    assert response.status_code in (200, 403)
    if response.status_code == 200:
        assert response.json()["events"] == []


@pytest.mark.parametrize("query,status,code", [
    ("since=abc&timeout=0", 400, "invalid_request"), ("since=-1&timeout=0", 400, "invalid_request"),
    ("timeout=-1", 400, "invalid_request"), ("timeout=soon", 400, "invalid_request"),
    ("keys=a..b&timeout=0", 400, "invalid_request"),
])
def test_watch_bad_parameters(root, query, status, code):
    response = root.get(f"/watch?{query}")
    assert response.status_code == status
    assert response.json()["error"]["code"] in (code, "invalid_key")


def test_watch_unauthenticated(anon):
    assert_error(anon.get("/watch?timeout=0"), 401, "unauthenticated")


# --- compaction (its own server with a short change log) -----------------------------------------------------------

@pytest.fixture(scope="module")
def small_log_server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("compact") / "data", root_token=ROOT,
                            env={"TESSERA_CHANGE_LOG_RETENTION": "20"}).start()
    yield process
    process.stop()


def test_compacted_since_is_410_with_current_revision(small_log_server):
    with small_log_server.client(ROOT) as client:
        for i in range(80):
            client.put("/config/churn.k", json={"value": i})
        current = revision(client)
        error = assert_error(client.get("/watch?since=1&timeout=0"), 410, "revision_compacted")
        assert error["current_revision"] == current
        assert client.get(f"/watch?since={current}&timeout=0").status_code == 200
        with connect(ws_url(small_log_server)) as ws:
            ws.send(json.dumps({"type": "auth", "token": ROOT}))
            ws.send(json.dumps({"type": "subscribe", "keys": ["*"], "since": 1}))
            message = json.loads(ws.recv(timeout=5))
            assert message["type"] == "error" and message["code"] == "revision_compacted"
            assert message.get("current_revision", current) >= current


# --- /ws -------------------------------------------------------------------------------------------------------------

def test_ws_auth_then_subscribe_delivers_every_event_in_order(root, server):
    k = uid()
    since = revision(root)
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": ROOT}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"], "since": since}))
        for i in range(30):
            root.put(f"/config/{k}.n{i % 3}", json={"value": i})
        root.put(f"/config/{k}.pw", json={"value": "ws-secret-value", "secret": True})
        root.delete(f"/config/{k}.n0")
        messages = recv_all(ws, 32)
    assert len(messages) == 32
    assert all(m["type"] == "event" for m in messages)
    for m in messages:
        assert EVENT_FIELDS <= set(m)
    assert [m["value"] for m in messages[:30]] == list(range(30))
    revs = [m["revision"] for m in messages]
    assert revs == sorted(revs) and len(set(revs)) == 32
    assert messages[30]["secret"] is True and "value" not in messages[30]
    assert messages[31]["action"] == "delete" and "value" not in messages[31]
    assert "ws-secret-value" not in json.dumps(messages)


def test_ws_since_defaults_to_now(root, server):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "old"})
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": ROOT}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"]}))
        time.sleep(0.3)
        root.put(f"/config/{k}.a", json={"value": "new"})
        messages = recv_all(ws, 1)
        assert [m.get("value") for m in messages] == ["new"]
        assert recv_none(ws, 0.5) == []


def test_ws_replays_and_supports_several_subscriptions_with_scope(root, server):
    k, ns = uid(), uid("ns")
    env = make_env(root)
    since = revision(root)
    root.put(f"/config/{k}.a", json={"value": "default-a"})
    root.put(f"/config/{k}.a?env={env}", json={"value": "env-a"})
    root.put(f"/config/{k}.b?namespace={ns}", json={"value": "ns-b"})
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": ROOT}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.a"], "since": since, "env": env}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.b"], "since": since, "namespace": ns}))
        messages = recv_all(ws, 3)
        got = sorted((m["key"], m["env"], m["namespace"], m["value"]) for m in messages)
        assert got == sorted([(f"{k}.a", "default", "default", "default-a"), (f"{k}.a", env, "default", "env-a"),
                              (f"{k}.b", "default", ns, "ns-b")])
        assert recv_none(ws, 0.5) == []


def test_ws_only_readable_keys(root, server):
    k = uid()
    created = make_token(root, [{"path": f"{k}.open.*", "capabilities": ["read"]},
                                {"path": f"{k}.listonly.*", "capabilities": ["list"]}])
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": created["token"]}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"]}))
        time.sleep(0.3)
        root.put(f"/config/{k}.listonly.x", json={"value": "ws-unseen"})
        root.put(f"/config/{k}.closed.x", json={"value": "ws-unseen"})
        root.put(f"/config/{k}.open.x", json={"value": "seen"})
        messages = recv_all(ws, 1) + recv_none(ws, 0.5)
    events = [m for m in messages if m.get("type") == "event"]
    assert [e["key"] for e in events] == [f"{k}.open.x"]
    assert "ws-unseen" not in json.dumps(messages)


def test_ws_refusals(root, server):
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": "tsr_wrong-ws-token"}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["code"] == "unauthenticated"
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "subscribe", "keys": ["*"]}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["code"] == "unauthenticated"
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": ROOT}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["a..b"]}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["code"] in ("invalid_request", "invalid_key")
        ws.send(json.dumps({"type": "subscribe", "keys": ["*"], "env": uid("missing")}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["code"] == "not_found"


def test_ws_revoked_or_expired_token_refused(root, server):
    created = make_token(root, [{"path": "*", "capabilities": ["read"]}])
    root.delete(f"/auth/tokens/{created['id']}")
    time.sleep(1.0)
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "auth", "token": created["token"]}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["code"] == "unauthenticated"


# --- health ----------------------------------------------------------------------------------------------------------

def test_health_unauthenticated(server, root):
    response = httpx.get(server.url + "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["backend"] == "local" and isinstance(body["revision"], int)
    assert response.headers.get("x-request-id")
    k = uid()
    written = root.put(f"/config/{k}.a", json={"value": 1}).json()["revision"]
    assert httpx.get(server.url + "/health").json()["revision"] >= written
