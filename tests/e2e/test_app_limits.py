"""Limits in the application (issue 13 §3) against a real ``tessera serve``: one token cannot hold more long polls,
WebSockets or subscriptions than its cap (``429 too_many_requests`` with ``Retry-After``), another token (and the
same one, once it lets go) is served meanwhile; a WebSocket not yet authenticated counts for its address."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_limits-root-token-0123456789abcdef"
CAPS = {"TESSERA_MAX_LONG_POLLS": "3", "TESSERA_MAX_WEBSOCKETS": "2", "TESSERA_MAX_SUBSCRIPTIONS": "3"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("limits") / "data", root_token=TOKEN, env=CAPS).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tokens(server):
    with server.client() as root:
        root.put("/policies/reader", json={"rules": [{"path": "*", "capabilities": ["read", "list"]}]}).raise_for_status()
        made = [root.post("/auth/tokens", json={"service": f"svc{i}", "policies": ["reader"]}) for i in range(2)]
        return [response.json()["token"] for response in made]


def too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_requests" and error["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["retry-after"]) >= 1


def test_one_token_holds_at_most_its_long_polls(server, tokens):
    greedy, other = tokens
    held: list[int] = []

    def hold() -> None:
        with server.client(greedy) as client:
            for _ in range(100):  # a probe below may hold a slot for an instant
                status = client.get("/watch?keys=nothing.here&timeout=4", timeout=30).status_code
                if status != 429:
                    break
                time.sleep(0.02)
            held.append(status)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    with server.client(greedy) as client, server.client(other) as neighbour:
        deadline = time.monotonic() + 10
        for attempt in range(1000):  # until the three are held (a loaded machine may be slow to send them)
            request_id = f"poll-refused-{attempt}"  # the earlier probes were answered 200: only the last is refused
            response = client.get("/watch?keys=nothing.here&timeout=0", headers={"X-Request-Id": request_id})
            if response.status_code == 429 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        too_many(response)
        assert neighbour.get("/watch?keys=nothing.here&timeout=0").status_code == 200  # another token is served
        assert client.get("/config?limit=1").status_code == 200  # other requests of the same token too
        for thread in threads:
            thread.join(30)
        assert held == [200, 200, 200]
        assert client.get("/watch?keys=nothing.here&timeout=0").status_code == 200  # slots given back
    with server.client() as root:
        entries = root.get("/audit?limit=200").json()["entries"]
    refused = [e for e in entries if e["request_id"] == request_id]
    assert [(e["action"], e["status"], e["outcome"], e["service"]) for e in refused] == [("watch", 429, "error", "svc0")]


def authenticated(url: str, token: str):
    ws = connect(url)
    ws.send(json.dumps({"type": "auth", "token": token}))
    return ws


def refused_socket(ws) -> None:
    message = json.loads(ws.recv(timeout=10))
    assert message["type"] == "error" and message["code"] == "too_many_requests" and message["retry_after"] >= 1
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


def test_one_token_holds_at_most_its_websockets_and_subscriptions(server, tokens):
    greedy, other = tokens
    url = server.url.replace("http", "ws") + "/ws"
    first, second = authenticated(url, greedy), authenticated(url, greedy)
    try:
        for ws, count in ((first, 2), (second, 1)):
            for _ in range(count):
                ws.send(json.dumps({"type": "subscribe", "keys": ["a.*"]}))
        third = authenticated(url, greedy)  # the token's third socket
        refused_socket(third)
        second.send(json.dumps({"type": "subscribe", "keys": ["b.*"]}))  # its fourth subscription
        message = json.loads(second.recv(timeout=10))
        assert message["code"] == "too_many_requests" and message["retry_after"] >= 1
        with authenticated(url, other) as neighbour:  # another token is served
            neighbour.send(json.dumps({"type": "subscribe", "keys": ["a.*"]}))
            with server.client() as root:
                root.put("/config/a.one", json={"value": 1}).raise_for_status()
            assert json.loads(neighbour.recv(timeout=10))["key"] == "a.one"
            assert json.loads(second.recv(timeout=10))["key"] == "a.one"  # the refused subscribe left the socket open
        first.close()  # its socket and two subscriptions given back
        deadline = time.monotonic() + 10
        for attempt in range(100):  # until the server has seen the close (a success is answered by the event)
            second.send(json.dumps({"type": "subscribe", "keys": ["c.*"]}))
            with server.client() as root:
                root.put("/config/c.one", json={"value": attempt}).raise_for_status()
            message = json.loads(second.recv(timeout=10))
            if message.get("code") != "too_many_requests" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert message["type"] == "event" and message["key"] == "c.one", message
        with authenticated(url, greedy) as again:
            again.send(json.dumps({"type": "subscribe", "keys": ["d.*"]}))
            with server.client() as root:
                root.put("/config/d.one", json={"value": 1}).raise_for_status()
            assert json.loads(again.recv(timeout=10))["key"] == "d.one"
    finally:
        first.close()
        second.close()
    with server.client() as root:
        entries = root.get("/audit?service=svc0&limit=200").json()["entries"]
    recorded = {(e["action"], e["status"], e["outcome"]) for e in entries if e["status"] == 429 and e["action"].startswith("ws.")}
    assert recorded == {("ws.connect", 429, "error"), ("ws.subscribe", 429, "error")}


def test_sockets_not_yet_authenticated_count_for_their_address(server, tokens):
    url = server.url.replace("http", "ws") + "/ws"
    silent = [connect(url), connect(url)]  # two sockets that never send their auth message
    try:
        time.sleep(0.3)
        with connect(url) as third:
            refused_socket(third)
    finally:
        for ws in silent:
            ws.close()
    deadline = time.monotonic() + 10
    while True:  # once they are gone, the address may open sockets again
        try:
            with authenticated(url, tokens[1]) as ws:
                ws.send(json.dumps({"type": "subscribe", "keys": ["e.*"]}))
                with server.client() as root:
                    root.put("/config/e.one", json={"value": time.monotonic()}).raise_for_status()
                message = json.loads(ws.recv(timeout=10))
        except ConnectionClosed:  # still refused (1013) until the server has seen the silent sockets go
            message = {"type": "closed"}
        if message.get("type") == "event" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert message["type"] == "event"
