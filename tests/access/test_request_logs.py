"""The embedded backend's request logs: each process appends the records not written inside a commit to a file of
its own (``audit-requests-<slot>.db``), and ``GET /audit``, verify and retention see every file as one log."""

from __future__ import annotations

import contextlib
import os
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
        # An edit in another process's file is caught like one in the config store's (once its records have left
        # the segments for the table: see the next test for an edit in a segment)
        second[1].flush()
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
        access.flush()  # retention works on the table (the segments hold the last moments' records)
        assert access.prune(datetime.now(UTC) - timedelta(days=30)) == 5
        assert access.chain_starts()["requests-0"][0] == 5
        assert verify(access).ok
    finally:
        close_process(store, access)


def test_an_append_during_a_flush_is_left_for_the_next_flush(tmp_path, monkeypatch):
    store, access = open_process(tmp_path)
    try:
        log = access.request_log()
        log.append([entry(1)])
        real_fdatasync = os.fdatasync
        fsyncs: list[int] = []

        def fdatasync_with_an_append_landing(fd):
            fsyncs.append(fd)
            if len(fsyncs) == 1:
                log.append([entry(2)])  # the event loop's append, while the fsync runs
            real_fdatasync(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync_with_an_append_landing)
        log.flush()
        log.flush()  # record 2 may have missed the first fsync: this one must still run
        log.flush()  # nothing new since: no fsync
        assert len(fsyncs) == 2
        assert table_seqs(tmp_path / "audit-requests-0.db") == [1, 2]  # each flush copied what it made durable
    finally:
        close_process(store, access)


def table_seqs(path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [row[0] for row in connection.execute("SELECT seq FROM audit ORDER BY seq")]


def segment_bytes(tmp_path) -> list[int]:
    return [(tmp_path / f"audit-requests-0.db-segment-{i}").stat().st_size for i in (0, 1)]


def test_a_read_record_is_one_line_of_a_segment_until_a_flush_copies_it_into_the_table(tmp_path):
    """No SQLite transaction per append: the event loop writes lines; the flush (fsync) copies them into the table,
    and every reader sees each record once, wherever it is."""
    store, access = open_process(tmp_path)
    try:
        access.append(None, [entry(i, request_id=f"r{i}") for i in range(1, 4)])
        assert table_seqs(tmp_path / "audit-requests-0.db") == []
        assert segment_bytes(tmp_path)[0] > 0
        assert [e.request_id for e in access.query(key=None, service=None, since=None, limit=10)] == ["r3", "r2", "r1"]
        assert access.chains()["requests-0"][0] == 3 and verify(access).ok
        access.flush()
        assert table_seqs(tmp_path / "audit-requests-0.db") == [1, 2, 3]
        access.append(None, [entry(4, request_id="r4")])
        assert [e.request_id for e in access.query(key=None, service=None, since=None, limit=10)] == ["r4", "r3", "r2", "r1"]
        report = verify(access)
        assert report.ok and report.entries == 4
    finally:
        close_process(store, access)


def test_a_full_segment_is_swapped_and_emptied_once_its_records_are_durable_in_the_table(tmp_path, monkeypatch):
    from tessera.core.backends import sqlite_access

    monkeypatch.setattr(sqlite_access, "SEGMENT_BYTES", 2000)
    store, access = open_process(tmp_path)
    try:
        for i in range(1, 41):
            access.append(None, [entry(i)])
            access.flush()
        sizes = segment_bytes(tmp_path)
        assert max(sizes) < 2000 + 400 and min(sizes) == 0 or sum(sizes) < 2 * (2000 + 400)
        assert table_seqs(tmp_path / "audit-requests-0.db") == list(range(1, 41))
        report = verify(access)
        assert report.ok and report.entries == 40
    finally:
        close_process(store, access)


CRASH_AFTER_APPENDS = """
import os, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.backends.sqlite_access import SQLiteAccessStore
from tests.access.test_audit_chain import entry
access = SQLiteAccessStore(SQLiteStore(Path(sys.argv[1]) / "tessera.db"))
access.append(None, [entry(i, request_id=f"flushed{i}") for i in range(1, 4)])
access.flush()
access.append(None, [entry(i, request_id=f"appended{i}") for i in range(4, 6)])
os.kill(os.getpid(), 9)
"""


def test_records_a_killed_process_left_in_its_segments_are_taken_in_by_the_next_process_of_its_slot(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", CRASH_AFTER_APPENDS, str(tmp_path), root], cwd=root)
    assert done.returncode == -signal.SIGKILL
    assert table_seqs(tmp_path / "audit-requests-0.db") == [1, 2, 3]  # the last two only in a segment (page cache)
    offline = open_process(tmp_path)  # a reader that claims nothing sees them already
    try:
        assert [e.request_id for e in offline[1].query(key=None, service=None, since=None, limit=2)] == ["appended5", "appended4"]
    finally:
        close_process(*offline)
    store, access = open_process(tmp_path)
    try:
        linked = access.append(None, [entry(6)])  # claims slot 0: takes the segments in, then continues the chain
        assert linked[0].seq == 6
        assert table_seqs(tmp_path / "audit-requests-0.db") == [1, 2, 3, 4, 5]
        report = verify(access)
        assert report.ok and report.entries == 6
    finally:
        close_process(store, access)


def test_a_torn_last_line_is_dropped_and_the_chain_goes_on_from_the_last_whole_record(tmp_path):
    """A power loss can leave a segment's last append half written (at most the last flush interval's records are
    lost: docs/audit.md). The next process keeps every whole record before it and continues the chain."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    subprocess.run([sys.executable, "-c", CRASH_AFTER_APPENDS, str(tmp_path), root], cwd=root)
    segment = tmp_path / "audit-requests-0.db-segment-0"
    whole = segment.read_bytes()
    segment.write_bytes(whole[: len(whole) - 40])  # as if the power went mid-write: record 5's line is cut
    store, access = open_process(tmp_path)
    try:
        assert access.append(None, [entry(6)])[0].seq == 5
        assert table_seqs(tmp_path / "audit-requests-0.db") == [1, 2, 3, 4]
        report = verify(access)
        assert report.ok and report.entries == 5
    finally:
        close_process(store, access)


def test_an_edit_in_a_segment_is_caught_like_one_in_a_table(tmp_path):
    store, access = open_process(tmp_path)
    try:
        access.append(None, [entry(i) for i in range(1, 4)])
        segment = tmp_path / "audit-requests-0.db-segment-0"
        segment.write_bytes(segment.read_bytes().replace(b'"auth.k2"', b'"billing.x"'))
        report = verify(access)
        assert report.problem is not None and report.problem.kind == "edited"
        assert (report.problem.chain, report.problem.seq) == ("requests-0", 2)
    finally:
        close_process(store, access)


def test_records_pruned_from_the_table_do_not_come_back_from_a_segment(tmp_path):
    """A quiet process's segment can hold records longer than the retention period (it is emptied when full):
    readers leave out what retention removed."""
    store, access = open_process(tmp_path)
    try:
        long_ago = datetime.now(UTC) - timedelta(days=400)
        access.append(None, [entry(i, ts=long_ago + timedelta(seconds=i), request_id=f"old{i}") for i in range(1, 4)])
        access.append(None, [entry(4, request_id="new")])
        access.flush()
        assert access.prune(datetime.now(UTC) - timedelta(days=30)) == 3
        assert [e.request_id for e in access.query(key=None, service=None, since=None, limit=10)] == ["new"]
        report = verify(access)
        assert report.ok and report.entries == 1
    finally:
        close_process(store, access)


def test_a_request_log_of_the_previous_layout_without_segments_goes_on(tmp_path):
    """The previous release kept a request log's records in its table only (no segment files): the next process
    of the slot creates its segments and continues the chain."""
    first = open_process(tmp_path)
    first[1].append(None, [entry(i) for i in range(1, 4)])
    close_process(*first)  # its records are copied into the table at close
    for path in tmp_path.glob("audit-requests-0.db-segment-*"):
        path.unlink()
    store, access = open_process(tmp_path)
    try:
        assert access.append(None, [entry(4)])[0].seq == 4
        access.flush()
        assert table_seqs(tmp_path / "audit-requests-0.db") == [1, 2, 3, 4]
        report = verify(access)
        assert report.ok and report.entries == 4
    finally:
        close_process(store, access)


def test_a_segment_line_that_is_no_record_is_reported_and_breaks_nothing(tmp_path):
    """Valid JSON that is not a record (an edit): readers skip it, so its seq is missing and verify says so; the
    next process of the slot still starts (it keeps the records before it)."""
    store, access = open_process(tmp_path)
    try:
        access.append(None, [entry(i) for i in range(1, 4)])
        segment = tmp_path / "audit-requests-0.db-segment-0"
        lines = segment.read_bytes().split(b"\n")
        segment.write_bytes(b"\n".join([lines[0], b'{"seq": 2}', *lines[2:]]))
        report = verify(access)
        assert report.problem is not None and report.problem.seq == 2
    finally:
        close_process(store, access)
    store, access = open_process(tmp_path)
    try:
        assert access.append(None, [entry(9)])[0].seq >= 2
    finally:
        close_process(store, access)
