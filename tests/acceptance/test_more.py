"""More adversarial checks: CAS vs no-op writes, secrets never in error messages, WebSocket completeness under
concurrent writers, name shapes, bad-token floods (401 promised for every unknown token)."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.acceptance.conftest import ROOT, assert_error, revision, uid
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow


def test_cas_mismatch_on_an_equal_value_still_conflicts(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.a", json={"value": 2})
    error = assert_error(root.put(f"/config/{k}.a", json={"value": 2, "expected_version": 1}), 409, "version_conflict")
    assert error["current_version"] == 2


def test_equal_value_with_other_secret_flag_is_still_refused(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "same"})
    assert_error(root.put(f"/config/{k}.a", json={"value": "same", "secret": True}), 409, "secret_flag_immutable")


def test_secret_values_never_in_error_messages(root):
    k = uid()
    value = "ERRMSG-SECRET-" + uid()
    root.put(f"/config/{k}.pw", json={"value": value, "secret": True})
    root.put(f"/config/{k}.tree.leaf", json={"value": 1})
    responses = [
        root.put(f"/config/{k}.pw", json={"value": value + "x", "secret": False}),
        root.put(f"/config/{k}.pw", json={"value": value + "y", "expected_version": 9}),
        root.put(f"/config/{k}.tree", json={"value": value + "z", "secret": True}),
        root.post("/config/import", json={"values": {f"{k}.tree": value + "w", f"{k}.pw": {"x": value}}, "secrets": [f"{k}.tree"]}),
    ]
    for response in responses:
        assert value not in response.text, response.text


def test_reimporting_an_unchanged_secret_is_unchanged(root):
    k = uid()
    root.post("/config/import", json={"values": {f"{k}.pw": "s1"}, "secrets": [f"{k}.pw"]})
    body = root.post("/config/import", json={"values": {f"{k}.pw": "s1"}}).json()
    assert (body["created"], body["updated"], body["unchanged"]) == (0, 0, 1)
    assert root.get(f"/config/{k}.pw").json()["version"] == 1


@pytest.mark.parametrize("name", ["a", "0abc", "a-b-c", "9"])
def test_short_and_digit_names_are_valid(root, name):
    assert root.put(f"/config/{uid()}.k?namespace={name}", json={"value": 1}).status_code == 201


def test_websocket_misses_nothing_under_concurrent_writers(root, server):
    k = uid()
    since = revision(root)
    with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": ROOT}))
        ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"], "since": since}))

        def writer(n):
            with server.client(ROOT) as client:
                for i in range(40):
                    client.put(f"/config/{k}.w{n}", json={"value": i})

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        messages = []
        deadline = time.monotonic() + 15
        while len(messages) < 160 and time.monotonic() < deadline:
            messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    polled = root.get(f"/watch?keys={k}.*&since={since}&timeout=1").json()["events"]
    assert len(polled) == 160
    assert [m["revision"] for m in messages] == [e["revision"] for e in polled]
    for n in range(4):
        assert [m["value"] for m in messages if m["key"] == f"{k}.w{n}"] == list(range(40))


def test_websocket_replay_joins_live_stream_without_gap_or_duplicate(root, server):
    k = uid()
    stop = threading.Event()

    def writer():
        with server.client(ROOT) as client:
            i = 0
            while not stop.is_set():
                client.put(f"/config/{k}.x", json={"value": i})
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        since = revision(root)
        time.sleep(0.2)
        with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            ws.send(json.dumps({"type": "auth", "token": ROOT}))
            ws.send(json.dumps({"type": "subscribe", "keys": [f"{k}.*"], "since": since}))
            time.sleep(0.5)
            stop.set()
            thread.join()
            last = revision(root)
            messages = []
            while True:
                message = json.loads(ws.recv(timeout=5))
                messages.append(message)
                if message["revision"] >= last:
                    break
    finally:
        stop.set()
        thread.join()
    polled = root.get(f"/watch?keys={k}.*&since={since}&timeout=1").json()["events"]
    assert [m["revision"] for m in messages] == [e["revision"] for e in polled]
    values = [m["value"] for m in messages]
    assert values == list(range(values[0], values[0] + len(values)))


def test_watch_long_poll_concurrent_with_writes_never_skips(root, server):
    k = uid()
    since = revision(root)
    stop = threading.Event()

    def writer():
        with server.client(ROOT) as client:
            for i in range(60):
                client.put(f"/config/{k}.x", json={"value": i})
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    cursor = since
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(seen) < 60:
        body = root.get(f"/watch?keys={k}.*&since={cursor}&timeout=2").json()
        seen += [e["value"] for e in body["events"]]
        if body["events"]:
            cursor = body["events"][-1]["revision"]
    thread.join()
    assert seen == list(range(60))


# --- a flood of unknown tokens ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flood_server(tmp_path_factory):
    # root token given through TESSERA_ROOT_TOKEN (API.md: "or TESSERA_ROOT_TOKEN / --root-token at start")
    process = ServerProcess(tmp_path_factory.mktemp("flood") / "data", env={"TESSERA_ROOT_TOKEN": ROOT}).start()
    yield process
    process.stop()


@pytest.mark.xfail(strict=True, reason="after 100 unknown tokens/min from one address the product answers 429 rate_limited (documented damping); API.md: unknown token is 401 unauthenticated")
def test_every_unknown_token_is_401_even_in_a_flood(flood_server):
    statuses = []
    with httpx.Client(base_url=flood_server.url, timeout=10) as client:
        for i in range(130):
            response = client.get("/envs", headers={"Authorization": f"Bearer tsr_flood-{i}-{uid()}"})
            statuses.append(response.status_code)
    assert set(statuses) == {401}, sorted(set(statuses))


def test_valid_token_still_served_after_a_flood(flood_server):
    with httpx.Client(base_url=flood_server.url, timeout=10) as client:
        for i in range(110):
            client.get("/envs", headers={"Authorization": f"Bearer tsr_flood2-{i}"})
        assert client.get("/envs", headers={"Authorization": f"Bearer {ROOT}"}).status_code == 200
        response = client.get("/envs")
        assert_error(response, 401, "unauthenticated")


def test_root_token_from_env_var_may_do_everything(flood_server):
    with flood_server.client(ROOT) as client:
        assert client.get("/auth/self").json()["service"] == "root"
        assert client.put(f"/config/{uid()}.a", json={"value": 1}).json()["updated_by"] == "root"
        assert client.get("/audit?limit=1").status_code == 200


def test_root_token_from_first_start(tmp_path):
    process = ServerProcess(tmp_path / "data", env={"TESSERA_ROOT_TOKEN": ""}).start()
    try:
        found = None
        for _ in range(30):
            match = re.search(r"(tsr_[A-Za-z0-9_-]{20,})", process.log())
            if match:
                found = match.group(1)
                break
            time.sleep(0.1)
        assert found, process.log()
        with process.client(found) as client:
            assert client.get("/auth/self").json()["service"] == "root"
            assert client.put(f"/envs/{uid('e')}", json={"parent": "default"}).status_code == 201
        with httpx.Client(base_url=process.url) as anon:
            assert_error(anon.get("/envs", headers={"Authorization": "Bearer tsr_not-the-root"}), 401, "unauthenticated")
    finally:
        process.stop()


def test_noop_write_and_unchanged_import_commit_no_change(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    since = revision(root)
    same = root.put(f"/config/{k}.a", json={"value": 1}).json()
    root.post("/config/import", json={"values": {f"{k}.a": 1}})
    assert revision(root) == since
    assert same["version"] == 1
    assert root.get(f"/watch?keys={k}.*&since={since}&timeout=0.5").json()["events"] == []
    root.post(f"/config/rollback/{k}.a?version=1")
    events = root.get(f"/watch?keys={k}.*&since={since}&timeout=2").json()["events"]
    assert [(e["action"], e["version"], e["value"]) for e in events] == [("rollback", 2, 1)]
