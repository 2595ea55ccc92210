"""The audit path under stress: cancelled waiters, a slow or failing writer, closing, request/response entries.

Each test names the review finding it covers; every one of them failed before the fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import wait as wait_futures

import pytest
from fastapi.testclient import TestClient

from tessera.core.access_model import AuditEntry
from tessera.core.audit import AuditLog, entry_hash, verify
from tessera.core.backends.memory_access import MemoryAccessStore
from tessera.core.errors import Unavailable
from tessera.core.model import utcnow
from tessera.handlers.app import create_app
from tessera.handlers.auditing import Auditor, facts_from_route
from tests.access.conftest import ROOT
from tests.access.test_audit_chain import entry
from tests.backends import audit_file_of, break_audit, mend_audit


def read_entry(request_id: str = "r") -> AuditEntry:
    return AuditEntry(ts=utcnow(), request_id=request_id, action="config.read", outcome="allowed", status=200)


class SlowSink:
    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self.seen: list[AuditEntry] = []

    def append(self, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]:
        time.sleep(self.delay)
        self.seen.extend(entries)
        return list(entries)


# ------------------------------------------------------------------------------------------- 1: the writer
def test_a_cancelled_waiter_neither_kills_the_writer_nor_loses_its_entry():
    sink = SlowSink()
    log = AuditLog(sink)

    async def main() -> AuditEntry:
        waiter = asyncio.create_task(asyncio.wait_for(asyncio.wrap_future(log.submit(read_entry("cancelled"))), 10))
        await asyncio.sleep(0.05)
        waiter.cancel()
        await asyncio.sleep(0.5)
        return await asyncio.wait_for(asyncio.wrap_future(log.submit(read_entry("next"))), 5)

    try:
        assert asyncio.run(main()).request_id == "next"
        assert log._thread.is_alive()
        assert [e.request_id for e in sink.seen] == ["cancelled", "next"]  # the cancelled request is recorded
    finally:
        log.close()


def test_the_writer_survives_a_future_resolved_elsewhere_and_a_sink_raising_anything():
    class Odd(BaseException):
        pass

    sink = SlowSink(0.2)
    calls = {"n": 0}

    def append(chain, entries):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Odd("not even an Exception")
        return SlowSink.append(sink, chain, entries)

    sink.append = append  # type: ignore[method-assign]
    log = AuditLog(sink)
    try:
        blocker = log.submit(read_entry("first"))
        stray = log.submit(read_entry("stray"))
        stray.set_result(read_entry("someone else"))  # resolved before the writer gets to it
        assert blocker.result(5).request_id == "first"
        with pytest.raises(Unavailable):
            log.submit(read_entry("odd")).result(5)  # the batch whose append raised a BaseException fails...
        assert log.submit(read_entry("after")).result(5).request_id == "after"  # ...and the writer goes on
        assert "stray" in [e.request_id for e in sink.seen]
    finally:
        log.close()


def test_submit_racing_close_never_leaves_a_future_unresolved():
    """close() runs exactly between submit's closed-check and its put: the entry must not land behind the stop
    marker, where no writer would ever resolve it."""
    log = AuditLog(MemoryAccessStore())
    real = log._queue
    closers: list[threading.Thread] = []

    class RacingQueue:
        def put(self, item):
            if item is not None:
                closer = threading.Thread(target=log.close)
                closers.append(closer)
                closer.start()
                closer.join(0.3)  # with the fix close waits for this submit; without it, it finishes first
            real.put(item)

        def get(self, *args, **kwargs):
            return real.get(*args, **kwargs)

        def get_nowait(self):
            return real.get_nowait()

    log._queue = RacingQueue()
    future = log.submit(read_entry("racing"))
    done, pending = wait_futures([future], timeout=3)
    assert not pending, "a future submitted while closing was never resolved"
    closers[0].join(5)
    with pytest.raises(Unavailable):
        log.submit(read_entry()).result(0)  # after close: fails at once


# ------------------------------------------------------------------------------------------- 1: the HTTP layer
def slow_appends(container, delay: float) -> None:
    stores = container.access.stores
    original = stores.append

    def slow(chain, entries):
        time.sleep(delay)
        return original(chain, entries)

    stores.append = slow


def test_a_websocket_auth_timeout_during_the_record_loses_nothing(container, monkeypatch):
    """The reviewer's ws_dos.py: the auth message arrives just before the server's auth timeout and its audit
    record is still being written when the timeout fires. The writer must survive, the client must get the real
    answer to its message, and the entry must be there."""
    import tessera.handlers.watch as watch

    monkeypatch.setattr(watch, "AUTH_TIMEOUT_SECONDS", 0.5)
    with TestClient(create_app(container)) as client:
        slow_appends(container, 0.4)
        with client.websocket_connect("/ws") as ws:
            time.sleep(0.35)
            ws.send_json({"type": "auth", "token": "tsr_anything"})
            answer = ws.receive_json()
        assert answer["code"] == "unauthenticated" and "unknown" in answer["message"]  # its message was answered
        audit_log = container.access.audit_log
        assert audit_log._thread.is_alive()
        assert client.get("/config", headers=ROOT).status_code == 200
        entries = client.get("/audit?limit=10", headers=ROOT).json()["entries"]
        assert ("ws.connect", 401) in [(e["action"], e["status"]) for e in entries]


def test_a_stuck_audit_writer_answers_503_instead_of_hanging(container, monkeypatch):
    import tessera.handlers.auditing as auditing

    monkeypatch.setattr(auditing, "AUDIT_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(container.access.audit_log, "inline", False)  # the writer thread's appends (see the next test)
    release = threading.Event()
    with TestClient(create_app(container)) as client:
        stores = container.access.stores
        original = stores.append

        def stuck(chain, entries):
            release.wait(10)
            return original(chain, entries)

        stores.append = stuck
        try:
            started = time.monotonic()
            response = client.get("/config", headers=ROOT)
            assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
            assert time.monotonic() - started < 5
        finally:
            release.set()
        stores.append = original
        assert client.get("/config", headers=ROOT).status_code == 200


def test_a_flush_stuck_in_its_fsync_stalls_neither_the_event_loop_nor_unrelated_requests(container, monkeypatch):
    """Reads' records are appended on the event loop, never by waiting for a disk: while a flush's fsync hangs,
    reads are still answered for ``STALLED_FLUSH_SECONDS``; after that their records could not be durable in time,
    so they go to the writer thread (stuck behind the flush), whose wait is bounded (503). ``/health`` is answered
    throughout, and once the fsync returns, reads are served again."""
    import tessera.core.audit as audit_module
    import tessera.handlers.auditing as auditing

    monkeypatch.setattr(auditing, "AUDIT_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(audit_module, "STALLED_FLUSH_SECONDS", 0.2)
    real_fdatasync = os.fdatasync
    hanging, release = threading.Event(), threading.Event()

    def fdatasync_that_hangs(fd):
        hanging.set()
        release.wait(20)
        real_fdatasync(fd)

    with TestClient(create_app(container)) as client:
        client.put("/config/a.b", json={"value": 1}, headers=ROOT).raise_for_status()
        assert client.get("/config/a.b", headers=ROOT).status_code == 200
        container.access.audit_log.flush()
        monkeypatch.setattr(os, "fdatasync", fdatasync_that_hangs)
        try:
            assert client.get("/config/a.b", headers=ROOT).status_code == 200  # appended; its flush hangs
            assert hanging.wait(5)
            assert client.get("/config/a.b", headers=ROOT).status_code == 200  # a flush this young may be a slow one
            time.sleep(0.25)
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            response = client.get("/config/a.b", headers={**ROOT, "X-Request-Id": "during-stall"})
            assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
            assert time.monotonic() - started < 5
        finally:
            release.set()
            monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        deadline = time.monotonic() + 10
        while client.get("/config/a.b", headers=ROOT).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        container.access.audit_log.flush()
        late = [e for e in container.access.stores.query(key="a.b", service=None, since=None, limit=20) if e.request_id == "during-stall"]
        assert [(e.status, e.outcome) for e in late][0] == (503, "error")  # its newest record says what it was answered


# ------------------------------------------------------------------------------------------- 2: request entries
def test_nothing_changes_when_its_record_cannot_be_written(client, container):
    """The reviewer's audit_after.py: a PUT while the audit log is down answered 503 yet committed. A config
    write's record is part of its commit (one transaction), so it fails with it; a token or environment change
    gets a durable request-phase record first and does not run when that cannot be written."""
    break_audit(container)
    response = client.put("/config/db.password", json={"value": "hunter2", "secret": True}, headers=ROOT)
    assert response.status_code == 503 and "hunter2" not in response.text
    assert client.post("/auth/tokens", json={"service": "x", "policies": []}, headers=ROOT).status_code == 503
    assert client.put("/envs/staging", headers=ROOT).status_code == 503
    mend_audit(container)
    wait_ready(client)
    assert client.get("/config/db.password", headers=ROOT).status_code == 404  # nothing was committed
    assert client.get("/auth/tokens", headers=ROOT).json()["tokens"] == []
    assert "staging" not in json.dumps(client.get("/envs", headers=ROOT).json())


def wait_ready(client, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the node did not become ready again"
        time.sleep(0.05)


def test_a_write_and_its_record_commit_together_or_not_at_all(client, container):
    """Only the write's own record is refused (a trigger on it): the write is not committed either, the client
    gets 503, and the value never shows — nothing half-written."""
    with container.store.transaction() as db:
        db.execute(
            "CREATE TRIGGER write_record_broken BEFORE INSERT ON audit WHEN NEW.action = 'config.write' "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    response = client.put("/config/db.host", json={"value": "db1"}, headers=ROOT)
    assert response.status_code == 503 and "db1" not in response.text
    with container.store.transaction() as db:
        db.execute("DROP TRIGGER write_record_broken")
    wait_ready(client)
    assert client.get("/config/db.host", headers=ROOT).status_code == 404
    assert client.get("/config/history/db.host", headers=ROOT).status_code == 404
    client.put("/config/db.host", json={"value": "db2"}, headers=ROOT).raise_for_status()
    records = container.access.stores.query(key="db.host", service=None, since=None, limit=10, phase=None)
    assert [(e.action, e.status, e.version, e.phase) for e in records if e.status != 503][0] == ("config.write", 201, 1, "response")


def test_one_record_per_request_and_request_phase_records_only_where_the_commit_cannot_hold_one(client, container):
    stores = container.access.stores
    before = sum(seq for seq, _ in stores.chains().values())
    client.put("/config/auth.issuer", json={"value": "me"}, headers=ROOT).raise_for_status()
    after_write = sum(seq for seq, _ in stores.chains().values())
    for _ in range(5):
        client.get("/config/auth.issuer", headers=ROOT).raise_for_status()
    after_reads = sum(seq for seq, _ in stores.chains().values())
    assert after_write - before == 1 and after_reads - after_write == 5  # the write's record is in its commit
    shown = client.get("/audit?key=auth.issuer", headers=ROOT).json()["entries"]
    assert [(e["action"], e["phase"], e["outcome"]) for e in shown][-1] == ("config.write", "response", "allowed")
    assert all(e["phase"] == "response" and e["outcome"] != "attempt" for e in shown)  # the contract's enum
    created = client.post("/auth/tokens", json={"service": "svc", "policies": []}, headers=ROOT)
    token_entries = [e for e in stores.query(key=None, service=None, since=None, limit=100, phase=None) if e.action == "token.create"]
    assert sorted(e.phase for e in token_entries) == ["request", "response"]
    assert len({e.request_id for e in token_entries}) == 1
    assert {e.target for e in token_entries if e.phase == "response"} == {created.json()["id"]}
    assert verify(stores).ok
    # The phase is part of the hash: turning an attempt into a response entry is caught.
    attempt = next(e for e in token_entries if e.phase == "request")
    container.access.audit_log.flush()  # a request log's records are in its table once flushed
    with audit_file_of(container, attempt.chain).transaction() as db:
        db.execute("UPDATE audit SET phase = NULL WHERE chain = ? AND seq = ?", (attempt.chain, attempt.seq))
    report = verify(stores)
    assert report.problem is not None and report.problem.kind == "edited" and report.problem.seq == attempt.seq


def test_response_entries_keep_the_hashes_of_entries_from_before_the_phase_field():
    import hashlib

    linked = MemoryAccessStore().append("main", [entry(1)])[0]
    old = [linked.chain, linked.seq, linked.prev_hash, "2026-11-29T10:00:01.000001Z", "r1", "auth-svc", "tok_1",
           "config.read", "default", "default", "auth.k1", 1, "allowed", 200, None, None, None, None]  # fmt: skip
    assert linked.hash == entry_hash(linked) == hashlib.sha256(json.dumps(old, separators=(",", ":")).encode()).hexdigest()


def test_a_sqlite_file_from_before_request_entries_gets_the_column(tmp_path):
    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings
    from tests.access.conftest import ROOT_TOKEN

    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    with TestClient(create_app(container)) as client:
        client.get("/config", headers=ROOT)
    container.close()
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.suffix in (".db", ".sqlite", ".sqlite3")]
    assert files
    with sqlite3.connect(files[0]) as db:
        db.execute("ALTER TABLE audit DROP COLUMN phase")
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    try:
        with TestClient(create_app(container)) as client:
            client.put("/config/a.b", json={"value": "1"}, headers=ROOT).raise_for_status()
            assert client.get("/audit?key=a.b", headers=ROOT).json()["entries"][0]["phase"] == "response"
        assert verify(container.access.stores).ok
    finally:
        container.close()


@pytest.mark.aws
def test_request_entries_on_dynamodb():
    from tessera.core.backends.aws_access import DynamoAccessStore
    from tests.aws.support import moto_target

    with moto_target() as target:
        store = DynamoAccessStore(table=target.table, dynamodb=target.clients.dynamodb)
        linked = store.append(None, [entry(1, action="config.write", outcome="attempt", status=0, phase="request"), entry(2)])
        assert [e.seq for e in store.query(key=None, service=None, since=None, limit=10)] == [2]
        assert [e.phase for e in store.query(key=None, service=None, since=None, limit=10, phase="request")] == ["request"]
        assert {e.phase for e in store.chain_entries(linked[0].chain, 0, 10)} == {"request", "response"}
        assert verify(store).ok


# ------------------------------------------------------------------------------------------- 3, 4: small ones
def test_websocket_auth_failures_count_for_damping(client):
    # conftest sets auth_failure_limit=5: the 6th failure in a minute starts the penalty.
    codes = []
    for i in range(7):
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "auth", "token": f"tsr_guess{i}"})
            codes.append(ws.receive_json()["code"])
    assert codes[:5] == ["unauthenticated"] * 5 and codes[5:] == ["rate_limited"] * 2
    assert client.get("/config", headers=ROOT).status_code == 200  # a valid token from there still works
    statuses = [(e["action"], e["status"]) for e in client.get("/audit?limit=20", headers=ROOT).json()["entries"]]
    assert statuses.count(("ws.connect", 429)) == 2


def test_paths_no_route_matched_are_recorded_with_bounded_names(client):
    for path in ("/auth/" + "x" * 5000, "/auth/", "/policies/a/b/c"):
        assert client.get(path, headers=ROOT).status_code in (404, 405)
    entries = client.get("/audit?limit=5", headers=ROOT).json()["entries"]
    assert [e["action"] for e in entries[:3]] == ["policy.unknown", "auth.unknown", "auth.unknown"]
    auditor = Auditor("r", "GET", "/envs/x/y", "127.0.0.1")
    facts_from_route(auditor, {"path": "/envs/x/y"})
    assert auditor.action == "env.unknown"


def test_a_refused_websocket_subscribe_is_audited_as_refused(client):
    from tests.access.conftest import make_token

    client.put("/config/auth.issuer", json={"value": "me"}, headers=ROOT).raise_for_status()
    token = make_token(client, "watcher", rules=[{"path": "auth.*", "capabilities": ["read"]}])
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": token})
        ws.send_json({"type": "subscribe", "keys": ["auth.*"], "since": "yesterday"})
        bad_since = ws.receive_json()
        ws.send_json({"type": "subscribe", "keys": ["auth.*"], "env": "no-such-env", "since": 0})
        unknown_env = ws.receive_json()
        ws.send_json({"type": "subscribe", "keys": ["auth.*"], "since": 0})
        event = ws.receive_json()
    assert bad_since["type"] == unknown_env["type"] == "error" and event["type"] == "event"
    entries = client.get("/audit?service=watcher&limit=10", headers=ROOT).json()["entries"]
    subscribes = [(e["env"], e["outcome"], e["status"]) for e in entries if e["action"] == "ws.subscribe"]
    assert subscribes[0] == ("default", "allowed", 200)
    assert subscribes[1][0] == "no-such-env" and subscribes[1][1:] != ("allowed", 200)
    assert subscribes[2] == ("default", "error", 400)


def test_no_event_leaves_before_its_subscribe_is_recorded(client, container):
    from tests.access.conftest import make_token

    client.put("/config/auth.issuer", json={"value": "me"}, headers=ROOT).raise_for_status()
    token = make_token(client, "watcher", rules=[{"path": "auth.*", "capabilities": ["read"]}])
    stores = container.access.stores
    original = stores.append

    def subscribe_fails(chain, entries):
        if any(e.action == "ws.subscribe" for e in entries):
            raise OSError("disk full")
        return original(chain, entries)

    stores.append = subscribe_fails
    stores.try_append = lambda entries: subscribe_fails(None, entries)  # the event loop's own appends
    try:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "auth", "token": token})
            ws.send_json({"type": "subscribe", "keys": ["auth.*"], "since": 0})
            assert ws.receive_json() == {"type": "error", "code": "unavailable", "message": "the audit log cannot be written"}
    finally:
        stores.append = original
        del stores.try_append


@pytest.mark.timeout(90)  # a deadlock would otherwise hang the client fixture's teardown
def test_a_refused_subscribe_while_another_subscription_streams_does_not_deadlock(client):
    """Events of an earlier subscription keep flowing while a new subscribe is handled (they may hold the
    app's send lock, which the refusal needs)."""
    from tests.access.conftest import make_token

    client.put("/config/auth.n", json={"value": 0}, headers=ROOT).raise_for_status()
    token = make_token(client, "watcher", rules=[{"path": "auth.*", "capabilities": ["read"]}])
    got: dict[str, list] = {"codes": []}

    def session() -> None:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "auth", "token": token})
            ws.send_json({"type": "subscribe", "keys": ["auth.*"], "since": 0})
            assert ws.receive_json()["type"] == "event"
            writer = threading.Thread(
                target=lambda: [client.put("/config/auth.n", json={"value": i}, headers=ROOT) for i in range(60)]
            )
            writer.start()
            for round_ in range(40):
                time.sleep(0.005)
                ws.send_json({"type": "subscribe", "keys": ["auth.*"], "env": f"missing-{round_}", "since": 0})
                while True:
                    message = ws.receive_json()
                    if message["type"] == "error":
                        got["codes"].append(message["code"])
                        break
            writer.join()

    worker = threading.Thread(target=session, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the socket deadlocked"
    assert len(got["codes"]) == 40
    entries = client.get("/audit?service=watcher&limit=200", headers=ROOT).json()["entries"]
    refused = [e for e in entries if e["action"] == "ws.subscribe" and (e["env"] or "").startswith("missing-")]
    assert len(refused) == 40 and all(e["outcome"] != "allowed" for e in refused)


# ------------------------------------------------------------------------------------------- issue 13 §7
def test_a_request_answered_503_because_its_record_was_late_is_recorded_as_503(container, monkeypatch):
    """A GET whose record timed out got 503 but was recorded later as allowed/200. Now the record says 503: a
    record still queued is amended; one the writer had already taken (being written: the chain is never
    rewritten) is followed by a second record of the same request saying 503."""
    import tessera.handlers.auditing as auditing

    monkeypatch.setattr(auditing, "AUDIT_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(container.access.audit_log, "inline", False)  # a writer thread that has taken the record
    release = threading.Event()
    with TestClient(create_app(container)) as client:
        client.put("/config/a.b", json={"value": 1}, headers=ROOT).raise_for_status()
        stores = container.access.stores
        original = stores.append

        def stuck(chain, entries):
            release.wait(10)
            return original(chain, entries)

        stores.append = stuck
        try:
            first = client.get("/config/a.b", headers={**ROOT, "X-Request-Id": "late-taken"})  # the writer holds it
            second = client.get("/config/a.b", headers={**ROOT, "X-Request-Id": "late-queued"})  # queued behind it
            assert first.status_code == second.status_code == 503
        finally:
            release.set()
        stores.append = original
        container.access.audit_log.flush()
        entries = stores.query(key="a.b", service=None, since=None, limit=20)
        by_request = {rid: [(e.status, e.outcome) for e in entries if e.request_id == rid] for rid in ("late-taken", "late-queued")}
        assert by_request["late-queued"] == [(503, "error")]
        assert by_request["late-taken"] == [(503, "error"), (200, "allowed")]  # newest first: the correction follows


def test_a_websocket_that_never_authenticates_in_time_is_recorded(container, monkeypatch):
    import tessera.handlers.watch as watch

    monkeypatch.setattr(watch, "AUTH_TIMEOUT_SECONDS", 0.3)
    with TestClient(create_app(container)) as client:
        with client.websocket_connect("/ws", headers={"X-Request-Id": "ws-silent"}) as ws:
            assert ws.receive_json()["code"] == "unauthenticated"
        with client.websocket_connect("/ws", headers={"X-Request-Id": "ws-binary"}) as ws:
            ws.send_bytes(json.dumps({"type": "auth", "token": ROOT["Authorization"][7:]}).encode())
            assert ws.receive_json()["code"] == "unauthenticated"
        entries = client.get("/audit?limit=20", headers=ROOT).json()["entries"]
        recorded = {e["request_id"]: (e["action"], e["status"], e["outcome"]) for e in entries}
        assert recorded["ws-silent"] == ("ws.connect", 401, "unauthenticated")
        assert recorded["ws-binary"] == ("ws.connect", 401, "unauthenticated")
