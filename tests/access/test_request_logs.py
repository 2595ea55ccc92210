"""The embedded backend's request logs: each process appends the records not written inside a commit to a file of
its own (``audit-requests-<slot>.db``), and ``GET /audit``, verify and retention see every file as one log."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

from tessera.core.audit import verify
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.backends.sqlite_access import SQLiteAccessStore
from tests.access.test_audit_chain import entry


def open_process(data_dir):
    """What one process of ``serve --workers N`` (or one CLI command) opens: the config store and its access store."""
    store = SQLiteStore(data_dir / "tessera.db")
    return store, SQLiteAccessStore(store)


def close_process(store, access) -> None:
    access.close()
    store.close()


def test_each_process_appends_to_its_own_file_and_every_reader_sees_one_log(tmp_path):
    first, second = open_process(tmp_path), open_process(tmp_path)
    try:
        first[1].append(None, [entry(i, request_id=f"a{i}") for i in range(1, 6)])
        second[1].append(None, [entry(i, request_id=f"b{i}") for i in range(6, 9)])
        first[1].append("main", [entry(20, request_id="in-commit")])  # what a commit writes into the config store's file
        assert sorted(p.name for p in tmp_path.glob("audit-requests-*.db")) == ["audit-requests-0.db", "audit-requests-1.db"]
        offline = open_process(tmp_path)  # `tessera audit verify --data-dir`: reads every file, claims none
        try:
            assert offline[1].chains().keys() == {"main", "requests-0", "requests-1"}
            assert {name: head[0] for name, head in offline[1].chains().items()} == {"main": 1, "requests-0": 5, "requests-1": 3}
            report = verify(offline[1])
            assert report.ok and report.entries == 9
            newest = offline[1].query(key=None, service=None, since=None, limit=4)
            assert [e.request_id for e in newest] == ["in-commit", "b8", "b7", "b6"]  # newest first across files
            assert [e.request_id for e in offline[1].query(key="auth.k3", service=None, since=None, limit=10)] == ["a3"]
            assert sorted(tmp_path.glob("audit-requests-*.db")) == sorted(tmp_path.glob("audit-requests-[01].db"))
        finally:
            close_process(*offline)
        # An edit in another process's file is caught like one in the config store's
        connection = sqlite3.connect(tmp_path / "audit-requests-1.db")
        with connection:
            connection.execute("UPDATE audit SET key = 'billing.x' WHERE seq = 2")
        connection.close()
        report = verify(first[1])
        assert report.problem is not None and report.problem.kind == "edited"
        assert (report.problem.chain, report.problem.seq) == ("requests-1", 2)
    finally:
        close_process(*first)
        close_process(*second)


def test_a_slot_freed_by_an_exit_is_taken_by_the_next_process_which_continues_its_chain(tmp_path):
    first = open_process(tmp_path)
    first[1].append(None, [entry(i) for i in range(1, 4)])
    close_process(*first)  # the kernel frees the slot on any exit (its lock is an flock), kill -9 included
    again = open_process(tmp_path)
    try:
        linked = again[1].append(None, [entry(4)])
        assert (linked[0].chain, linked[0].seq) == ("requests-0", 4)
        assert verify(again[1]).ok
    finally:
        close_process(*again)


def test_appending_reads_records_leaves_the_config_store_file_unchanged(tmp_path):
    """Why reads' records live in another file: every commit to the config store's file makes each reader
    connection drop its page cache and re-read the read stamp."""
    store, access = open_process(tmp_path)
    try:
        watcher = sqlite3.connect(tmp_path / "tessera.db")
        before = watcher.execute("PRAGMA data_version").fetchone()[0]
        stamp = store.read_stamp()
        for i in range(1, 20):
            access.append(None, [entry(i)])
        access.flush()
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == before
        assert store.read_stamp() == stamp
        watcher.close()
    finally:
        close_process(store, access)


def test_retention_prunes_the_processs_own_request_log_too(tmp_path):
    store, access = open_process(tmp_path)
    try:
        long_ago = datetime.now(UTC) - timedelta(days=400)
        access.append(None, [entry(i, ts=long_ago + timedelta(seconds=i)) for i in range(1, 6)])
        access.append(None, [entry(6, ts=datetime.now(UTC))])
        assert access.prune(datetime.now(UTC) - timedelta(days=30)) == 5
        assert access.chain_starts()["requests-0"][0] == 5
        assert verify(access).ok
    finally:
        close_process(store, access)


def test_an_append_during_a_flush_is_left_for_the_next_flush(tmp_path, monkeypatch):
    from tessera.core.backends import sqlite_access

    store, access = open_process(tmp_path)
    try:
        log = access.request_log()
        log.append([entry(1)])
        real_flush = sqlite_access.AuditTables.flush_store
        fsyncs: list[int] = []

        def flush_with_an_append_landing(target):
            fsyncs.append(1)
            if len(fsyncs) == 1:
                log.append([entry(2)])  # the event loop's append, while the fsync runs
            real_flush(target)

        monkeypatch.setattr(sqlite_access.AuditTables, "flush_store", staticmethod(flush_with_an_append_landing))
        log.flush()
        log.flush()  # record 2 may have missed the first fsync: this one must still run
        log.flush()  # nothing new since: no fsync
        assert len(fsyncs) == 2
    finally:
        close_process(store, access)
