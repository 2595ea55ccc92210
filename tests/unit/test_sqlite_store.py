"""The embedded store's performance shape: reads are index lookups, connections are reused."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core.backends import sqlite as sqlite_backend
from tessera.core.backends.keyring import LocalKeyring
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.crypto import CachingKeyService
from tessera.core.model import ROOT, Scope
from tessera.core.service import ConfigService
from tests.backends import local_backend

READ_WRITE_VERBS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "REPLACE")


@contextlib.contextmanager
def traced_store(path: Path, **kwargs) -> Iterator[tuple[SQLiteStore, list[str]]]:
    """A real store whose every connection (the writer and each reader, opened whenever the store opens one)
    reports the statements it runs, with their parameters bound, as SQLite executes them."""
    statements: list[str] = []
    real_connect = sqlite_backend.connect

    def traced_connect(*args, **kw):
        connection = real_connect(*args, **kw)
        connection.set_trace_callback(statements.append)
        return connection

    sqlite_backend.connect = traced_connect  # for the whole block: readers are opened on demand
    try:
        store = SQLiteStore(path, **kwargs)
        try:
            yield store, statements
        finally:
            store.close()
    finally:
        sqlite_backend.connect = real_connect


def query_plan(path: Path, statement: str) -> list[str]:
    """EXPLAIN QUERY PLAN of one captured statement, on a connection of its own (untraced)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [row[-1] for row in connection.execute("EXPLAIN QUERY PLAN " + statement).fetchall()]


def plans_of(path: Path, statements: list[str]) -> dict[str, list[str]]:
    data = [s for s in statements if s.lstrip().split(None, 1)[0].upper() in READ_WRITE_VERBS]
    return {s: query_plan(path, s) for s in dict.fromkeys(data)}


def full_scans(plan: list[str]) -> list[str]:
    """Plan lines that walk a whole table or sort in a temporary tree (an index *search* is neither)."""
    return [line for line in plan if line.startswith("SCAN ") or "TEMP B-TREE" in line]


@pytest.fixture
def populated(tmp_path):
    """A traced store holding several keys with several versions each, a secret, a deletion and a compacted
    change log, analyzed so the planner decides as it would on a store in use."""
    path = tmp_path / "tessera.db"
    with traced_store(path, change_log_retention=20) as (store, statements):
        keys = CachingKeyService(LocalKeyring.load_or_create(tmp_path / "keyring.json"))
        service = ConfigService(store, keys)
        for i in range(60):
            service.put(ROOT, Scope(), f"svc{i % 12}.k{i % 5}", i)
        service.put(ROOT, Scope(), "svc0.password", "hunter2", secret=True)
        service.delete(ROOT, Scope(), "svc1.k1")
        with contextlib.closing(sqlite3.connect(path)) as analyze:
            analyze.execute("ANALYZE")
        yield path, store, service, statements


def test_the_stores_own_statements_are_index_lookups(populated):
    """Every statement the store really runs on the commit and read paths (captured from its connections by
    SQLite's trace hook, not copied from the source) is planned as an index search: no table scan, no sort."""
    path, store, service, statements = populated
    scope = Scope()
    service.put(ROOT, scope, "svc3.deep.below", 1)  # a new key: the key-conflict checks run both ways
    service.put(ROOT, scope, "svc3.k3", "changed")
    service.delete(ROOT, scope, "svc3.k3")
    reads = len(statements)
    latest = store.latest(scope, "svc0.password")
    assert latest is not None
    store.get_version(scope, "svc0.k0", 1)
    store.load_envelope(latest)
    store.history(scope, "svc0.k0", 5, None)
    store.history(scope, "svc0.k0", 5, 3)
    store.list_latest(scope, "")
    store.changes_since(store.current_revision() - 5, 100)
    store.oldest_retained_revision()
    store.current_revision()
    plans = plans_of(path, statements)
    read_plans = plans_of(path, statements[reads:])
    # What was captured is the store's own traffic: versions, head moves, change-log rows and their compaction,
    # and every read above.
    assert any(s.startswith("INSERT INTO versions") for s in plans), statements
    assert any(s.startswith("DELETE FROM changes") for s in plans), statements
    assert any(s.startswith("SELECT") and "JOIN" in s for s in read_plans), read_plans
    searched = [s for s, plan in read_plans.items() if any(line.startswith("SEARCH ") for line in plan)]
    assert len(searched) >= 7, read_plans  # real lookups of real tables, not constants
    scans = {s: full_scans(plan) for s, plan in plans.items() if full_scans(plan)}
    assert not scans, scans


def test_a_prefix_listing_walks_the_primary_key_in_order(populated):
    path, store, _service, statements = populated
    before = len(statements)
    assert [v.key for v in store.list_latest(Scope(), "svc2")] == [f"svc2.k{i}" for i in range(5)]  # i % 12 == 2: k0..k4
    plans = plans_of(path, statements[before:])
    assert plans and all(any(line.startswith("SEARCH ") for line in plan) for plan in plans.values()), plans
    scans = {s: full_scans(plan) for s, plan in plans.items() if full_scans(plan)}
    assert not scans, scans


def test_reader_connections_are_reused_and_bounded_as_threads_come_and_go(tmp_path):
    with local_backend(tmp_path) as (store, keys):
        service = ConfigService(store, keys)
        service.put(ROOT, Scope(), "k", 1)
        for _ in range(50):
            service.get(ROOT, Scope(), "k")
        assert store.readers_opened == 1  # never one per request
        for _burst in range(10):  # worker threads retire and new ones start: connections must not pile up
            threads = [threading.Thread(target=lambda: [store.latest(Scope(), "k") for _ in range(20)]) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert store.readers_opened <= 5
        assert len(store._idle_readers) <= 5


def test_a_failed_commit_leaves_the_writer_usable(tmp_path):
    import sqlite3

    import pytest

    with local_backend(tmp_path) as (store, keys):
        with pytest.raises(Exception):  # noqa: B017 - any failure inside the transaction
            with store.transaction() as db:
                db.execute("INSERT INTO meta (name, value) VALUES ('x', '1')")
                raise sqlite3.OperationalError("disk I/O error")
        assert not store._writer.in_transaction
        ConfigService(store, keys).put(ROOT, Scope(), "after", 1)
        assert store.get_meta("x") is None


def test_store_reopens_with_everything(tmp_path):
    with local_backend(tmp_path) as (store, keys):
        service = ConfigService(store, keys)
        for i in range(5):
            service.put(ROOT, Scope(), "persist", i)
        service.put_env(ROOT, "dev", "default")
    with local_backend(tmp_path) as (store, keys):
        service = ConfigService(store, keys)
        assert service.get(ROOT, Scope(), "persist").value == 4
        assert store.current_revision() == 5
        assert "dev" in service.envs(fresh=True)


COMMIT_ELSEWHERE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("UPDATE counters SET value = value + 1 WHERE name = 'revision'")
"""


def test_the_read_stamp_sees_another_process_commit_at_once_and_costs_no_statement_until_then(tmp_path):
    """The stamp every cached answer is checked against: unchanged, it is the WAL-index header compared in memory
    (no statement runs); a commit by another process moves it at once, each time."""
    import subprocess
    import sys

    path = tmp_path / "tessera.db"
    with traced_store(path) as (store, statements):
        ConfigService(store, CachingKeyService(LocalKeyring.load_or_create(tmp_path / "keyring.json"))).put(ROOT, Scope(), "k", 1)
        assert store._wal_header is not None
        first = store.read_stamp()
        statements.clear()
        assert [store.read_stamp() for _ in range(100)] == [first] * 100
        assert statements == []  # not even PRAGMA data_version
        for step in (1, 2, 3):
            subprocess.run([sys.executable, "-c", COMMIT_ELSEWHERE, str(path)], check=True)
            assert store.read_stamp() == (first[0] + step, first[1])
        # and from another thread of this process, with a connection of its own
        seen: list[tuple[int, int]] = []
        reader = threading.Thread(target=lambda: seen.append(store.read_stamp()))
        reader.start()
        reader.join()
        assert seen == [(first[0] + 3, first[1])]


def test_value_cache_is_bounded_by_bytes_too():
    from tessera.core.service import ValueCache

    cache = ValueCache(max_entries=100, max_bytes=1000)
    for version in range(1, 21):
        cache.put((Scope(), "k", version), "x" * 100, 100)
    assert cache.total_bytes <= 1000 and len(cache._entries) == 10
    assert cache.get((Scope(), "k", 20)) == (True, "x" * 100) and cache.get((Scope(), "k", 1)) == (False, None)
    cache.put((Scope(), "big", 1), "y", 5000)  # larger than the whole bound: not cached, and evicts nothing
    assert len(cache._entries) == 10 and cache.get((Scope(), "big", 1)) == (False, None)
    small = ValueCache(max_entries=3)
    for version in range(1, 6):
        small.put((Scope(), "k", version), version, 1)
    small.get((Scope(), "k", 3))  # used: the least recently used is now 4
    small.put((Scope(), "k", 6), 6, 1)
    assert [small.get((Scope(), "k", v))[0] for v in (3, 4, 5, 6)] == [True, False, True, True]


@pytest.mark.parametrize("durable_by_default", [True, False])
def test_the_checkpointer_restarts_the_wal_except_where_writes_must_never_wait(tmp_path, monkeypatch, durable_by_default):
    """Past WAL_RESTART_BYTES of frames the checkpointer RESTARTs the WAL (it waits for readers and holds writers
    off), except on a store whose writes must never wait: the audit request log, appended to on the event loop.
    It judges by the frames the checkpoint reports, not the file's size (which stays large after a burst)."""
    monkeypatch.setattr(sqlite_backend, "CHECKPOINT_SECONDS", 0.02)
    monkeypatch.setattr(sqlite_backend, "WAL_RESTART_BYTES", 1)  # any frame left is "too many"
    checkpoints: list[str] = []
    real_connect = sqlite_backend.connect

    def tracing(path):
        connection = real_connect(path)
        connection.set_trace_callback(lambda sql: checkpoints.append(sql) if "wal_checkpoint" in sql else None)
        return connection

    monkeypatch.setattr(sqlite_backend, "connect", tracing)
    store = SQLiteStore(tmp_path / "t.db", durable_by_default=durable_by_default)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("PASSIVE" in sql for sql in checkpoints):
            with store.transaction() as db:
                db.execute("INSERT INTO meta (name, value) VALUES ('n', '1') ON CONFLICT (name) DO UPDATE SET value = value + 1")
            time.sleep(0.005)
    finally:
        store.close()
    assert any("PASSIVE" in sql for sql in checkpoints)
    assert any("RESTART" in sql for sql in checkpoints) == durable_by_default
