"""Retention of the local audit log: expired records go, a checkpoint stays, `verify` starts there and still
catches what it caught before (edits, removals, insertions among the records kept)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tessera.core.access_model import AuditEntry
from tessera.core.audit import AuditLog, verify
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.backends.sqlite_access import SQLiteAccessStore


def record(ts: datetime, index: int) -> AuditEntry:
    return AuditEntry(ts=ts, request_id=f"r{index}", action="config.read", outcome="allowed", status=200, key=f"k{index}")


@pytest.fixture
def access(tmp_path):
    store = SQLiteStore(tmp_path / "tessera.db")
    yield SQLiteAccessStore(store)
    store.close()


def test_prune_leaves_a_checkpoint_and_verify_starts_there(access):
    now = datetime.now(UTC)
    old = [record(now - timedelta(days=100), i) for i in range(1, 1201)]
    new = [record(now - timedelta(days=1), i) for i in range(1201, 1301)]
    access.append("main", old)
    access.append("main", new)
    assert access.prune(now - timedelta(days=90), batch=500) == 1200
    assert access.chain_starts() == {"main": (1200, access.chain_entries("main", 1199, 1)[0].prev_hash)}
    kept = access.chain_entries("main", 0, 10_000)
    assert [e.seq for e in kept][:1] == [1201] and len(kept) == 100
    report = verify(access)
    assert report.ok and report.entries == 100
    assert access.prune(now - timedelta(days=90)) == 0  # nothing more expired
    # Tampering with what is kept is still caught, including removing the first kept record.
    with access.store.transaction() as db:
        db.execute("DELETE FROM audit WHERE chain = 'main' AND seq = 1201")
    problem = verify(access).problem
    assert problem is not None and problem.kind == "removed" and problem.seq == 1201


def test_the_newest_record_is_never_pruned(access):
    long_ago = datetime.now(UTC) - timedelta(days=400)
    access.append("main", [record(long_ago, i) for i in range(1, 4)])
    assert access.prune(datetime.now(UTC)) == 2
    assert [e.seq for e in access.chain_entries("main", 0, 10)] == [3]
    assert verify(access).ok


def test_the_writer_prunes_by_its_retention_period(access, monkeypatch):
    import tessera.core.audit as audit

    long_ago = datetime.now(UTC) - timedelta(days=30)
    access.append("main", [record(long_ago, i) for i in range(1, 51)])
    log = AuditLog(access, retention_seconds=86400)
    log._next_prune = 0.0  # due now
    try:
        log.submit(record(datetime.now(UTC), 51), durable=True).result(10)
        monkeypatch.setattr(audit, "PRUNE_INTERVAL", 3600)
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while not access.chain_starts() and datetime.now(UTC) < deadline:
            log.flush()
        assert access.chain_starts()["main"][0] == 50
        assert verify(access).ok
    finally:
        log.close()
