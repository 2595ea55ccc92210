"""Long-poll ``/watch`` and the ``/ws`` WebSocket against a real ``tessera serve`` process."""

from __future__ import annotations

import json
import threading
import time

import pytest
from websockets.sync.client import connect

from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_watch-root-token-abcdefghijklm"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(
        tmp_path_factory.mktemp("watch") / "data",
        root_token=TOKEN,
        env={"TESSERA_CHANGE_LOG_RETENTION": "50", "TESSERA_MAX_WATCH_SECONDS": "3"},
    ).start()
    yield process
    process.stop()


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def revision(client) -> int:
    return client.get("/health").json()["revision"]


def test_returns_at_once_when_changes_match(client):
    since = revision(client)
    client.put("/config/w1.a", json={"value": 1})
    client.put("/config/other.b", json={"value": 2})
    client.put("/config/w1.secret", json={"value": "hidden", "secret": True})
    client.delete("/config/w1.a")
    started = time.monotonic()
    body = client.get(f"/watch?keys=w1.*&since={since}&timeout=10").json()
    assert time.monotonic() - started < 2
    assert [(e["key"], e["action"]) for e in body["events"]] == [
        ("w1.a", "create"), ("w1.secret", "create"), ("w1.a", "delete")
    ]
    first, secret, deletion = body["events"]
    assert first["value"] == 1 and first["env"] == "default" and first["namespace"] == "default"
    assert "value" not in secret and secret["secret"] is True
    assert "value" not in deletion
    revisions = [e["revision"] for e in body["events"]]
    assert revisions == sorted(revisions) and body["revision"] >= revisions[-1]


def test_holds_until_a_change_then_returns(client, server):
    since = revision(client)
    result: dict = {}

    def watch() -> None:
        with server.client() as watcher:
            started = time.monotonic()
            result["body"] = watcher.get(f"/watch?keys=w2.flag&since={since}&timeout=20").json()
            result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    client.put("/config/w2.other", json={"value": "not watched"})
    time.sleep(0.3)
    assert thread.is_alive()
    client.put("/config/w2.flag", json={"value": True})
    thread.join(10)
    # Held through the unwatched change (still alive above), released by the watched one, with only it.
    assert [e["key"] for e in result["body"]["events"]] == ["w2.flag"]


def test_timeout_returns_empty_and_defaults_to_future_changes(client):
    client.put("/config/w3.old", json={"value": 1})
    started = time.monotonic()
    body = client.get("/watch?keys=w3.*&timeout=0.5").json()
    assert body["events"] == [] and body["revision"] == revision(client)
    assert 0.4 < time.monotonic() - started < 3


def test_env_watch_sees_ancestor_changes(client):
    assert client.put("/envs/wprod", json={"parent": "default"}).status_code in (200, 201)
    since = revision(client)
    client.put("/config/w4.k", json={"value": "base"})
    client.put("/config/w4.k?env=wprod", json={"value": "override"})
    client.put("/config/w4.k?namespace=elsewhere", json={"value": "other namespace"})
    body = client.get(f"/watch?keys=w4.k&since={since}&env=wprod&timeout=1").json()
    assert [(e["env"], e["value"]) for e in body["events"]] == [("default", "base"), ("wprod", "override")]
    default_only = client.get(f"/watch?keys=w4.k&since={since}&timeout=1").json()
    assert [e["env"] for e in default_only["events"]] == ["default"]


def test_bad_watch_parameters(client):
    for query, code in [("since=-1&timeout=0", "invalid_request"), ("since=x&timeout=0", "invalid_request"),
                        ("timeout=abc", "invalid_request"), ("timeout=-1", "invalid_request"),
                        ("keys=a..b&timeout=0", "invalid_request"), ("env=nope&timeout=0", "not_found")]:
        response = client.get(f"/watch?{query}")
        assert response.json()["error"]["code"] == code, query
    assert client.get("/watch", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_compacted_revision_is_410(client):
    for i in range(120):
        client.put("/config/w5.churn", json={"value": i})
    response = client.get("/watch?since=1&timeout=0")
    assert response.status_code == 410
    error = response.json()["error"]
    assert error["code"] == "revision_compacted" and error["current_revision"] == revision(client)


def ws_messages(ws, count, timeout=10.0):
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    return messages


def test_websocket_delivers_every_change_in_order(client, server):
    since = revision(client)
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["w6.*"], "since": since}))
        for i in range(60):
            client.put(f"/config/w6.k{i % 3}", json={"value": i})
        client.put("/config/w6.secret", json={"value": "never-in-an-event", "secret": True})
        events = ws_messages(ws, 61)
    assert all(m["type"] == "event" for m in events)
    assert [e["value"] for e in events[:60]] == list(range(60))
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 61
    assert "value" not in events[60] and "never-in-an-event" not in json.dumps(events)


def test_websocket_replays_from_since_and_supports_several_subscriptions(client, server):
    since = revision(client)
    client.put("/config/w7.a", json={"value": "a1"})
    client.put("/config/w8.b", json={"value": "b1"})
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["w7.*"], "since": since}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["w8.b"], "since": since}))
        events = ws_messages(ws, 2)
        assert sorted(e["key"] for e in events) == ["w7.a", "w8.b"]
        client.put("/config/w8.b", json={"value": "b2"})
        assert ws_messages(ws, 1)[0]["value"] == "b2"


def test_websocket_refuses_bad_auth_and_bad_subscriptions(server, client):
    for i in range(60):  # more changes than the server's 50-revision change log keeps, so revision 1 is gone
        client.put("/config/w9.churn", json={"value": i})
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": "tsr_wrong"}))
        assert json.loads(ws.recv(timeout=5)) | {"message": ""} == {"type": "error", "code": "unauthenticated", "message": ""}
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "subscribe", "keys": ["*"]}))
        assert json.loads(ws.recv(timeout=5))["code"] == "unauthenticated"
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["a..b"]}))
        assert json.loads(ws.recv(timeout=5))["code"] == "invalid_request"
        ws.send(json.dumps({"type": "subscribe", "env": "missing"}))
        assert json.loads(ws.recv(timeout=5))["code"] == "not_found"
        ws.send(json.dumps({"type": "subscribe", "since": 1}))
        message = json.loads(ws.recv(timeout=5))
        assert message["code"] == "revision_compacted" and message["current_revision"] > 1


def test_future_since_reports_the_latest_revision_and_long_waits_are_clamped(client):
    current = revision(client)
    response = client.get(f"/watch?since={current + 100}&timeout=0")
    assert response.status_code == 200 and response.json() == {"revision": current, "events": []}
    started = time.monotonic()
    assert client.get("/watch?keys=w10.none&timeout=60").json()["events"] == []
    assert 2.5 < time.monotonic() - started < 6  # this server clamps at 3 s (TESSERA_MAX_WATCH_SECONDS), as on Lambda


def test_a_token_revoked_during_a_held_watch_is_cut_off(client, server):
    client.put("/policies/w11-read", json={"rules": [{"path": "w11.*", "capabilities": ["read"]}]})
    created = client.post("/auth/tokens", json={"service": "w11-svc", "policies": ["w11-read"], "ttl_seconds": 600}).json()
    result: dict = {}

    def watch() -> None:
        with server.client(created["token"]) as watcher:
            started = time.monotonic()
            result["response"] = watcher.get("/watch?keys=w11.*&timeout=20")
            result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    assert client.delete(f"/auth/tokens/{created['id']}").status_code == 204
    client.put("/config/w11.secret-after-revoke", json={"value": "must-not-arrive"})
    thread.join(10)
    assert result["response"].status_code == 401 and "must-not-arrive" not in result["response"].text
    assert result["elapsed"] < 3


def test_subscriptions_per_socket_are_capped(server):
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        for _ in range(64):
            ws.send(json.dumps({"type": "subscribe", "keys": ["w12.*"]}))
        ws.send(json.dumps({"type": "subscribe", "keys": ["w12.*"]}))
        message = json.loads(ws.recv(timeout=10))
        assert message["type"] == "error" and message["code"] == "invalid_request"


def audit_of(client, request_ids: set[str] | None = None, action_prefix: str = "ws.") -> list[tuple[str, int, str]]:
    entries = client.get("/audit?limit=200").json()["entries"]
    return [(e["action"], e["status"], e["outcome"]) for e in entries if e["action"].startswith(action_prefix)]


def test_every_websocket_outcome_is_audited_and_a_binary_frame_after_auth_is_refused_cleanly(server, client):
    """Issue 13 §7: a binary auth frame is a refusal (401, not allowed/101); a socket that leaves without
    authenticating is recorded; a binary frame (or any bad message) after auth is answered and recorded as a 400,
    and the socket goes on working (it raised KeyError once)."""
    url = server.url.replace("http", "ws") + "/ws"
    before = len(audit_of(client))
    with connect(url) as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}).encode())  # a binary frame holding a valid auth message
        assert json.loads(ws.recv(timeout=5))["code"] == "unauthenticated"
    with connect(url):
        pass  # never authenticates
    with connect(url) as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        ws.send(b"\x00\x01binary")
        assert json.loads(ws.recv(timeout=5))["code"] == "invalid_request"
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=5))["code"] == "invalid_request"
        ws.send(json.dumps({"type": "unsubscribe"}))
        assert json.loads(ws.recv(timeout=5))["code"] == "invalid_request"
        since = revision(client)
        client.put("/config/w7.after", json={"value": 1}).raise_for_status()
        ws.send(json.dumps({"type": "subscribe", "keys": ["w7.*"], "since": since}))
        assert json.loads(ws.recv(timeout=5))["key"] == "w7.after"  # still serving after the bad frames
    deadline = time.monotonic() + 5
    while True:  # the never-authenticated socket's record is written when the server sees it close
        recorded = audit_of(client)
        if len(recorded) - before >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    newest_first = recorded[: len(recorded) - before]
    assert sorted(newest_first) == sorted(
        [
            ("ws.connect", 401, "unauthenticated"),  # the binary auth frame
            ("ws.connect", 401, "unauthenticated"),  # never authenticated
            ("ws.connect", 101, "allowed"),
            ("ws.message", 400, "error"),
            ("ws.message", 400, "error"),
            ("ws.message", 400, "error"),
            ("ws.subscribe", 200, "allowed"),
        ]
    ), newest_first
    assert "Traceback" not in server.log_path.read_text() and "KeyError" not in server.log_path.read_text()
