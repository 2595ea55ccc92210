"""The group-committing writer (``core/audit.AuditLog``): batches, durability before resolution, fail-closed."""

from __future__ import annotations

import threading

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
    sink.fail = False
    assert log.submit(entry(6)).result(5).seq == 1  # recovers once the store does
    log.close()
    with pytest.raises(Unavailable):
        log.submit(entry(7)).result(1)  # closed: refuses rather than dropping silently
