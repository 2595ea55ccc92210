"""The group-committing writer (``core/audit.AuditLog``): batches, durability before resolution, fail-closed."""

from __future__ import annotations

import threading
import time

import pytest

from tessera.core.audit import AuditLog, verify
from tessera.core.backends.memory_access import MemoryAccessStore
from tessera.core.errors import Unavailable
from tests.access.test_audit_chain import entry


class SlowSink(MemoryAccessStore):
    """Holds each append until released, so requests pile up behind it the way they do behind an fsync."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.sizes: list[int] = []
        self.fail = False

    def append(self, chain, entries):
        self.release.wait(5)
        self.sizes.append(len(entries))
        if self.fail:
            raise OSError("disk full")
        return super().append(chain, entries)


def test_entries_queued_behind_a_commit_share_the_next_one():
    sink = SlowSink()
    emitted = []
    log = AuditLog(sink, emit=emitted.append)
    first = log.submit(entry(1))
    while not log._queue.empty():  # wait until the writer has taken it (and is stuck in the append)
        pass
    rest = [log.submit(entry(i)) for i in range(2, 12)]
    assert not first.done()  # not resolved before it is durable
    sink.release.set()
    assert [f.result(5).seq for f in [first, *rest]] == list(range(1, 12))
    assert sink.sizes[0] == 1 and sum(sink.sizes) == 11 and len(sink.sizes) <= 3
    assert [e.seq for e in emitted] == list(range(1, 12))  # log lines only for durable entries
    assert verify(sink).ok
    log.close()


def test_a_failed_append_fails_every_waiter_of_its_batch():
    sink = SlowSink()
    sink.fail = True
    sink.release.set()
    emitted = []
    log = AuditLog(sink, emit=emitted.append)
    futures = [log.submit(entry(i)) for i in range(1, 6)]
    for future in futures:
        with pytest.raises(Unavailable):
            future.result(5)
    assert emitted == [] and sink.chains() == {}
    assert log.ready  # every append is its own durable write here: a failure fails only its own batch
    sink.fail = False
    assert log.submit(entry(7)).result(5).seq == 1  # recovers once the store does
    log.close()
    with pytest.raises(Unavailable):
        log.submit(entry(8)).result(1)  # closed: refuses rather than dropping silently


class FlushingSink(MemoryAccessStore):
    """Appends land at once; ``flush`` makes them durable (like SQLite's non-fsynced appends)."""

    durable_appends = False

    def __init__(self) -> None:
        super().__init__()
        self.flush_fails = False
        self.flushed = 0

    def flush(self) -> None:
        if self.flush_fails:
            raise OSError("fsync: input/output error")
        self.flushed = sum(seq for seq, _ in self.heads.values())


def test_reads_are_flushed_within_the_interval_and_a_failed_flush_stops_everything_until_a_probe_succeeds():
    sink = FlushingSink()
    log = AuditLog(sink, flush_interval=0.05)
    try:
        assert log.submit(entry(1)).result(5).seq == 1  # appended: answered before any flush
        deadline = time.monotonic() + 5
        while sink.flushed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.flushed == 1  # durable within the interval, with nobody asking
        sink.flush_fails = True
        log.submit(entry(2)).result(5)  # appended; its flush will fail
        while log.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not log.ready and "OSError" in (log.failure or "")
        with pytest.raises(Unavailable):
            log.submit(entry(3)).result(5)  # refused at once while the log cannot flush
        with pytest.raises(Unavailable):
            log.submit(entry(4), durable=True).result(5)
        sink.flush_fails = False
        while not log.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.ready
        chain = sink.chain_entries("main", 0, 10)
        assert [e.action for e in chain][-1] == "audit.resumed"  # the gap is marked in the chain itself
        assert log.submit(entry(5), durable=True).result(5).seq == len(chain) + 1
        assert verify(sink).ok
    finally:
        log.close()


class InlineSink(FlushingSink):
    """Appended to on the caller's thread too (``try_append``, as the embedded request log is by the event loop);
    its first flush lets an inline append land while it runs, as the event loop may during an fsync."""

    def __init__(self) -> None:
        super().__init__()
        self.during_flush: list = []
        self.log: AuditLog | None = None

    def try_append(self, entries):
        return self.append("main", entries)

    def flush(self) -> None:
        covered = sum(seq for seq, _ in self.heads.values())  # what this fsync makes durable: what it started with
        if self.during_flush:
            assert self.log is not None
            self.log.append_now([self.during_flush.pop()])
        self.flushed = covered


def test_a_record_appended_on_the_event_loop_while_a_flush_runs_is_flushed_by_the_next_one():
    """A flush counts as durable only what was appended before it began: one appended during it (the event loop
    does not wait for the writer thread) is due within the interval of its own, not forgotten."""
    sink = InlineSink()
    log = AuditLog(sink, flush_interval=0.05)
    sink.log = log
    try:
        assert log.inline
        sink.during_flush.append(entry(2))
        assert log.append_now([entry(1)])[0].seq == 1  # opens a window; its flush appends record 2 meanwhile
        deadline = time.monotonic() + 5
        while sink.flushed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.flushed == 2  # record 2 made durable by a flush of its own, nobody asking
    finally:
        log.close()
