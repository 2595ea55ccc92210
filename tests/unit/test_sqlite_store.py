"""The embedded store's performance shape: reads are index lookups, connections are reused."""

from __future__ import annotations

import threading

from tessera.core.backends.sqlite import VERSION_COLUMNS, SQLiteStore
from tessera.core.model import ROOT, Scope
from tessera.core.service import ConfigService
from tests.backends import local_backend


def plan(store: SQLiteStore, sql: str, params: tuple) -> str:
    rows = store._query("EXPLAIN QUERY PLAN " + sql, params)
    return " | ".join(row[-1] for row in rows)


def test_latest_and_version_reads_are_primary_key_lookups(tmp_path):
    with local_backend(tmp_path) as (store, _keys):
        latest = plan(
            store,
            f"SELECT {VERSION_COLUMNS} FROM heads h JOIN versions v ON v.namespace = h.namespace AND v.env = h.env "
            "AND v.key = h.key AND v.version = h.version WHERE h.namespace = ? AND h.env = ? AND h.key = ?",
            ("default", "default", "k"),
        )
        assert "SCAN" not in latest and latest.count("USING PRIMARY KEY") == 2, latest
        history = plan(
            store,
            f"SELECT {VERSION_COLUMNS} FROM versions v WHERE namespace = ? AND env = ? AND key = ? AND version < ? "
            "ORDER BY version DESC LIMIT ?",
            ("default", "default", "k", 10, 5),
        )
        assert "SCAN" not in history and "TEMP B-TREE" not in history, history
        changes = plan(store, "SELECT * FROM changes WHERE revision > ? ORDER BY revision LIMIT ?", (1, 10))
        assert "TEMP B-TREE" not in changes, changes


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



def test_value_cache_is_bounded_by_bytes_too():
    from tessera.core.service import ValueCache

    cache = ValueCache(max_entries=100, max_bytes=1000)
    for version in range(1, 21):
        cache.put((Scope(), "k", version), "x" * 100, 100)
    assert cache.total_bytes <= 1000 and len(cache._entries) == 10
    assert cache.get((Scope(), "k", 20)) == (True, "x" * 100) and cache.get((Scope(), "k", 1)) == (False, None)
    cache.put((Scope(), "big", 1), "y", 5000)  # one oversized value is kept alone rather than never cached
    assert len(cache._entries) == 1
