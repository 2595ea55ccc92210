"""The audit log: hash chains, group commit, and verification.

**Chaining scheme.** Entries live in one or more *chains*. Each entry carries ``chain``, ``seq`` (1, 2, 3 …
within its chain, no gaps), ``prev_hash`` (the ``hash`` of the entry before it; 64 zeros for the first)
and ``hash = SHA-256(canonical JSON of every field but hash)``. The store appends a batch to a chain in one
atomic step that reads the chain's head, links the batch to it and moves the head (the ``audit_heads``
row/item) — so two nodes writing at once can never fork a chain:

- SQLite: one chain (``main``) for the whole file; ``BEGIN IMMEDIATE`` serializes every writer, in this
  process or another one.
- DynamoDB: one chain per node (``node-<random>``), so nodes never contend; every put is conditional on
  the (chain, seq) item not existing, so a chain still cannot fork.

``verify`` walks every chain and reports the first entry that was edited, inserted or removed, and
compares each chain's last entry with its recorded head (which catches a truncated tail). The head is
stored next to the entries, so someone able to rewrite *everything* consistently is only caught by
comparing against a head recorded elsewhere: ``tessera audit verify --json`` prints the heads to keep.

**Group commit.** Requests hand their entry to :class:`AuditLog` and wait on a future; one writer thread
takes everything queued, appends it in one transaction (one fsync for the batch) and then resolves the
futures. A request completes only once its batch is durable; if the append fails, every waiter gets
``Unavailable`` and the HTTP layer answers ``503`` instead of the response (fail-closed).
The writer thread cannot be killed by a batch: a waiter that went away (its request was cancelled) still
gets its entry written — the request happened — only the result is not delivered; any other failure is
logged (its type only) and the loop goes on. ``submit`` after ``close`` fails at once.

**Request and response entries.** A mutating request gets two entries with the same ``request_id``: a
``phase="request"`` entry written *before* the route runs (``outcome="attempt"``, ``status=0``) and the usual
``phase="response"`` entry. ``phase`` is hashed only when it is not ``"response"``, so chains written before
the field existed still verify.

>>> first = link("main", [AuditEntry(ts=EPOCH, request_id="r1", action="config.read", outcome="allowed", status=200)], 0, GENESIS)
>>> first[0].seq, first[0].prev_hash == GENESIS, len(first[0].hash)
(1, True, 64)
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from tessera.core.access_model import AuditEntry
from tessera.core.errors import Unavailable
from tessera.core.model import format_time

logger = logging.getLogger("tessera.audit")
GENESIS = "0" * 64
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_BATCH = 1000
HASHED_FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "ts",
    "request_id",
    "service",
    "token_id",
    "action",
    "namespace",
    "env",
    "key",
    "version",
    "outcome",
    "status",
    "target",
    "client",
    "method",
    "path",
)  # fmt: skip  (then "phase", only when it is not "response")
RESPONSE = "response"
REQUEST = "request"
ATTEMPT = "attempt"  # the outcome of a request entry: the request was received, its outcome is not known yet


_ENTRY_FIELDS = HASHED_FIELDS[4:]  # after chain, seq, prev_hash, ts
entry_fields = operator.attrgetter(*_ENTRY_FIELDS)  # one C call per entry: the writer hashes thousands a second


def _digest(entry: AuditEntry, chain: str, seq: int, prev_hash: str) -> str:
    return chain_digest(chain, seq, prev_hash, format_time(entry.ts), entry_fields(entry), entry.phase)


def chain_digest(chain: str, seq: int, prev_hash: str, ts_text: str, fields: tuple[Any, ...], phase: str) -> str:
    """The hash of a record from its parts: ``ts_text`` is ``format_time(ts)``, ``fields`` ``entry_fields(entry)``
    (a caller that already has them, the request log's append, passes them instead of having them made twice)."""
    fields = (chain, seq, prev_hash, ts_text, *fields)
    if phase != RESPONSE:  # appended only then: entries from before the field keep their hashes
        fields = (*fields, phase)
    # The canonical form is the standard library's compact, ASCII-escaped JSON. orjson writes the same bytes for
    # ASCII text except DEL (which json escapes): use it when its output holds neither DEL nor non-ASCII.
    canonical = orjson.dumps(fields)
    if b"\x7f" in canonical or not canonical.isascii():
        canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(canonical).hexdigest()


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 of the canonical JSON of every field but ``hash`` (``ts`` as RFC 3339 to the microsecond)."""
    return _digest(entry, entry.chain, entry.seq, entry.prev_hash)


def link(chain: str, entries: list[AuditEntry], last_seq: int, last_hash: str) -> list[AuditEntry]:
    """Give ``entries`` their place after (``last_seq``, ``last_hash``) in ``chain``, and their hashes."""
    linked = []
    prev = last_hash
    for offset, entry in enumerate(entries, start=1):
        seq = last_seq + offset
        digest = _digest(entry, chain, seq, prev)
        linked.append(placed(entry, chain, seq, prev, digest))
        prev = digest
    return linked


def placed(entry: AuditEntry, chain: str, seq: int, prev_hash: str, digest: str) -> AuditEntry:
    """``replace(entry, chain=…, seq=…, prev_hash=…, hash=…)`` without ``dataclasses.replace``'s per-field
    checks: a copy of the frozen entry's fields with the four set (the entry was validated when it was made)."""
    copy = object.__new__(AuditEntry)
    fields = dict(entry.__dict__)
    fields.update(chain=chain, seq=seq, prev_hash=prev_hash, hash=digest)
    object.__setattr__(copy, "__dict__", fields)
    return copy


def entry_to_api(entry: AuditEntry) -> dict[str, Any]:
    """The ``GET /audit`` shape (plus ``target``, ``client`` and ``hash`` as extensions)."""
    return {
        "id": entry.id,
        "ts": format_time(entry.ts),
        "request_id": entry.request_id,
        "service": entry.service,
        "token_id": entry.token_id,
        "action": entry.action,
        "namespace": entry.namespace,
        "env": entry.env,
        "key": entry.key,
        "version": entry.version,
        "outcome": entry.outcome,
        "status": entry.status,
        "target": entry.target,
        "client": entry.client,
        "phase": entry.phase,
        "hash": entry.hash,
    }


def entry_to_log(entry: AuditEntry) -> dict[str, Any]:
    """Every field, for the structured log line (built by hand: ``dataclasses.asdict`` deep-copies, and is slow)."""
    return {
        **entry_to_api(entry),
        "method": entry.method,
        "path": entry.path,
        "chain": entry.chain,
        "seq": entry.seq,
        "prev_hash": entry.prev_hash,
    }


# ---------------------------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class Problem:
    kind: str  # "edited" | "inserted" | "removed"
    chain: str
    seq: int
    detail: str

    @property
    def id(self) -> str:
        return f"{self.chain}:{self.seq}"


@dataclass
class VerifyReport:
    entries: int = 0
    chains: dict[str, tuple[int, str]] = field(default_factory=dict)
    problem: Problem | None = None
    pruned_anchors: list[str] = field(default_factory=list)  # anchors older than a retention checkpoint

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "chains": {name: {"seq": seq, "hash": digest} for name, (seq, digest) in sorted(self.chains.items())},
            "pruned_anchors": self.pruned_anchors,
            "problem": None
            if self.problem is None
            else {"kind": self.problem.kind, "id": self.problem.id, "chain": self.problem.chain,
                  "seq": self.problem.seq, "detail": self.problem.detail},
        }  # fmt: skip


class AuditReader(Protocol):
    """What ``verify`` reads. A store with retention also has ``chain_starts() -> {chain: (seq, hash)}``: the last
    entry it removed from each chain."""

    def chains(self) -> dict[str, tuple[int, str]]: ...

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]: ...


def _walk(reader: AuditReader, chain: str, page: int, after: int = 0) -> Iterator[AuditEntry]:
    while True:
        batch = reader.chain_entries(chain, after, page)
        yield from batch
        if len(batch) < page:
            return
        after = batch[-1].seq


RECENT_HASHES = 4096  # how far back an out-of-place link is traced to name the inserted entry


RENUMBER_SEARCH = 64  # how far a renumbered entry's original place is searched for (only after a hash mismatch)


def _original_seq(entry: AuditEntry) -> int | None:
    """The seq this entry's hash was computed for, when only its seq was changed (a renumbering)."""
    for distance in range(1, RENUMBER_SEARCH + 1):
        for candidate in (entry.seq + distance, entry.seq - distance):
            if candidate > 0 and entry_hash(replace(entry, seq=candidate)) == entry.hash:
                return candidate
    return None


def verify_chain(
    chain: str, entries: Iterator[AuditEntry], head: tuple[int, str] | None, start: tuple[int, str] = (0, GENESIS)
) -> tuple[int, Problem | None]:
    """Walk one chain in seq order from ``start`` (the seq and hash the first entry links to: the genesis, or a
    retention checkpoint); returns (entries checked, first problem or None)."""
    expected_seq, prev_hash, count = start[0] + 1, start[1], 0
    recent: OrderedDict[str, int] = OrderedDict({start[1]: start[0]})  # hash → seq of recent entries
    for entry in entries:
        count += 1
        if entry_hash(entry) != entry.hash:
            original = _original_seq(entry)
            if original is None:
                return count, Problem("edited", chain, entry.seq, "the entry's content does not match its hash")
            if original > entry.seq:
                return count, Problem(
                    "removed", chain, entry.seq,
                    f"entry {chain}:{original} was renumbered to {entry.seq}: the {original - entry.seq} entr(y/ies) "
                    "before it were removed",
                )  # fmt: skip
            linked_to = recent.get(entry.prev_hash)
            first_inserted = linked_to + 1 if linked_to is not None else original
            return count, Problem(
                "inserted", chain, first_inserted,
                f"entry {chain}:{original} was renumbered to {entry.seq}: entries from {chain}:{first_inserted} "
                "up to it were inserted",
            )  # fmt: skip
        if entry.seq != expected_seq or entry.prev_hash != prev_hash:
            if entry.seq < expected_seq:
                return count, Problem("inserted", chain, entry.seq, "a second entry with this sequence number")
            if entry.prev_hash in recent and entry.prev_hash != prev_hash:
                first_inserted = recent[entry.prev_hash] + 1
                return count, Problem(
                    "inserted", chain, first_inserted,
                    f"entry {chain}:{entry.seq} links to {chain}:{first_inserted - 1}, so the entries from "
                    f"{chain}:{first_inserted} up to it were inserted",
                )  # fmt: skip
            if entry.seq > expected_seq and entry.prev_hash == prev_hash:
                return count, Problem("removed", chain, expected_seq, f"entries {expected_seq}..{entry.seq - 1} are missing")
            if entry.seq > expected_seq:
                return count, Problem("removed", chain, expected_seq, f"entry {chain}:{expected_seq} is missing")
            return count, Problem(
                "removed", chain, entry.seq,
                "the entry does not link to the one before it: an entry before it was removed "
                "(and the rest renumbered), or the previous entry was edited and re-hashed",
            )  # fmt: skip
        expected_seq, prev_hash = entry.seq + 1, entry.hash
        recent[entry.hash] = entry.seq
        if len(recent) > RECENT_HASHES:
            recent.popitem(last=False)
    last_seq = expected_seq - 1
    if head is not None and (head[0], head[1]) != (last_seq, prev_hash):
        if head[0] > last_seq:
            return count, Problem("removed", chain, last_seq + 1, f"the chain ends at {last_seq} but its head says {head[0]}")
        if head[0] < last_seq:
            return count, Problem("inserted", chain, head[0] + 1, f"entries after the recorded head ({head[0]}) were appended")
        return count, Problem("edited", chain, last_seq, "the last entry does not match the recorded head")
    return count, None


def verify(reader: AuditReader, page: int = 5000, anchors: dict[str, tuple[int, str]] | None = None) -> VerifyReport:
    """Check every chain; the report names the first problem found (chains in name order).

    ``anchors`` are heads recorded earlier and kept elsewhere (``verify --json`` prints them): each must still
    be in the log with the same hash. Since every link up to the head is checked, a matching anchor proves that
    nothing up to it was rewritten — even by someone who recomputed every hash and the stored head.
    """
    report = VerifyReport(chains=reader.chains())
    # A store whose records expire (DynamoDB's TTL, the embedded store's retention) names where each chain's
    # retained part starts.
    starts: dict[str, tuple[int, str]] = reader.chain_starts() if hasattr(reader, "chain_starts") else {}
    for chain in sorted(report.chains):
        start = starts.get(chain, (0, GENESIS))
        count, problem = verify_chain(chain, _walk(reader, chain, page, start[0]), report.chains[chain], start)
        report.entries += count
        if problem is not None:
            report.problem = problem
            return report
    for chain, (seq, digest) in sorted((anchors or {}).items()):
        checkpoint = starts.get(chain)
        if checkpoint is not None and seq <= checkpoint[0]:
            report.pruned_anchors.append(f"{chain}:{seq}")  # removed by retention: nothing left to compare
            continue
        found = reader.chain_entries(chain, seq - 1, 1) if chain in report.chains else []
        if not found or found[0].seq != seq:
            report.problem = Problem("removed", chain, seq, "an anchored entry is no longer in the log")
            return report
        if found[0].hash != digest:
            report.problem = Problem("edited", chain, seq, "the log was rewritten up to an anchored entry (its hash changed)")
            return report
    return report


def anchors_from(document: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Anchors from an earlier ``verify --json`` document (its ``chains``)."""
    chains = document.get("chains", {})
    return {name: (int(head["seq"]), str(head["hash"])) for name, head in chains.items()}


# ---------------------------------------------------------------------------------------------- group commit
FLUSH_INTERVAL = 0.1  # the contract's bound: records of reads reach durable storage within 100 ms
# A flush running longer than this is stuck (a hung disk; a normal one, fsync and copy into the table, takes a few
# ms to a few tens): reads' records stop being appended inline, so no more reads are served on records that
# cannot be made durable (append_now).
STALLED_FLUSH_SECONDS = 1.0
RETRY_INTERVAL = 0.5  # how often an unhealthy log tries to flush again
PRUNE_INTERVAL = 600.0  # how often a log with a retention period removes expired records


class AuditSink(Protocol):
    """Where entries go. ``append`` links and writes them (to the file or table: before a response may go out);
    ``flush`` makes everything appended so far durable. A sink whose appends are durable already (DynamoDB)
    says so with ``durable_appends = True`` and its ``flush`` does nothing."""

    def append(self, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]: ...

    def flush(self) -> None: ...


class PendingEntries(list[AuditEntry]):
    """Entries handed to :meth:`AuditLog.submit_batch` that may still be amended (:meth:`AuditLog.amend`) until
    the writer takes them: a request whose record was too slow is answered ``503``, and its record must say so."""

    __slots__ = ("taken",)

    def __init__(self, entries: list[AuditEntry]) -> None:
        super().__init__(entries)
        self.taken = False


class AuditLog:
    """Group-committing audit writer: ``submit`` returns a future resolved once the entry is appended
    (``durable=False``: a read's record) or durable (``durable=True``: a refused or uncommitted mutation's record).

    One writer thread takes everything queued, appends it in one transaction, and flushes (one fsync) when a
    waiter needs durability or the oldest record appended since the last flush is ``flush_interval`` old.
    A record that changes something is written by the store inside the commit itself (``VersionStore.commit``'s
    ``audit``), so it is durable with the change; this writer carries everything else.

    Fail-closed: the waiters of a batch that cannot be appended get ``Unavailable`` (the HTTP layer answers
    ``503``). When a flush fails — or an append, on a sink that flushes — the log turns unhealthy (``ready`` is
    False, ``failure`` says why) and every later ``submit`` is refused at once, until the writer, trying every
    ``RETRY_INTERVAL`` seconds, appends and flushes a probe record (``audit.resumed``). A crash can lose only
    records appended since the last flush: reads' records, at most ``flush_interval`` of them.

    ``emit`` receives each entry after it is appended (the structured log line); it never sees a value or a
    token string because entries hold neither.
    """

    enabled = True

    def __init__(
        self,
        sink: AuditSink,
        chain: str = "main",
        emit: Callable[[AuditEntry], None] | None = None,
        max_batch: int = MAX_BATCH,
        flush_interval: float = FLUSH_INTERVAL,
        retention_seconds: float | None = None,
    ) -> None:
        self.sink = sink
        # Records older than this are removed (sinks with ``prune``, leaving a checkpoint ``verify`` starts from).
        self.retention_seconds = retention_seconds if retention_seconds and hasattr(sink, "prune") else None
        self._next_prune = time.monotonic() + 5.0
        self.chain = chain
        self.emit = emit
        self.max_batch = max_batch
        self.flush_interval = flush_interval
        # A sink without ``flush`` (DynamoDB: every append is a durable write) needs no flushing.
        self._sink_flush: Callable[[], None] | None = getattr(sink, "flush", None)
        self.durable_appends = bool(getattr(sink, "durable_appends", self._sink_flush is None))
        # A sink whose appends are writes to a local file may be appended to on the caller's thread (the HTTP
        # event loop: see append_now); others (DynamoDB: a network call) only from the writer thread.
        self.inline = callable(getattr(sink, "try_append", None))
        self._append_lock = threading.Lock()  # the writer thread's appends vs append_now's
        self._queue: queue.SimpleQueue[tuple[list[AuditEntry], Future[list[AuditEntry]], bool] | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # submit vs close: nothing is queued behind the stop marker
        self.failure: str | None = None  # why the log cannot take records, while it cannot
        self._unflushed_since: float | None = None  # monotonic time of the oldest append not yet flushed
        self._flush_started: float | None = None  # monotonic time the sink flush under way began
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        self.batches = 0  # counters for the benchmark and tests
        self.written = 0
        self.flushes = 0

    @property
    def ready(self) -> bool:
        return self.failure is None and not self._closed

    def submit(self, entry: AuditEntry, durable: bool = False) -> Future[AuditEntry]:
        """One entry; the future holds it linked (chain, seq, hash set)."""
        single: Future[AuditEntry] = Future()
        batch = self.submit_batch([entry], durable)

        def unwrap(done: Future[list[AuditEntry]]) -> None:
            if done.cancelled():
                single.cancel()
            elif done.exception() is not None:
                single.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                single.set_result(done.result()[0])

        batch.add_done_callback(unwrap)
        return single

    def submit_batch(self, entries: list[AuditEntry], durable: bool = False) -> Future[list[AuditEntry]]:
        """Several entries with one future (what the HTTP layer hands over per event-loop turn)."""
        future: Future[list[AuditEntry]] = Future()
        with self._lock:
            if not self._closed and self.failure is None:
                self._queue.put((entries, future, durable))
                return future
            reason = "the audit log is closed" if self._closed else "the audit log cannot be written"
        future.set_exception(Unavailable(reason))
        return future

    def append_now(self, entries: list[AuditEntry]) -> list[AuditEntry] | None:
        """Append ``entries`` on the calling thread, not yet durable (reads' records), and return them linked;
        None, appending nothing, when the sink is busy (another append, a request log's segment swap) or a flush
        has run for longer than ``STALLED_FLUSH_SECONDS``: the caller then hands them to the writer thread
        (``submit_batch``). ``Unavailable`` if they cannot be appended (the log turns unhealthy,
        as when the writer's append fails). The writer thread flushes them within ``flush_interval``.

        For sinks with ``try_append`` (the embedded backend's request log: a local file only this process
        appends to). What it saves a read, against ``submit``: the hand-over to the writer thread and back (a
        queue, two wake-ups, the GIL changing hands twice). It never waits: a disk that stalls a flush does not
        stall the event loop."""
        if self._closed or self.failure is not None:
            raise Unavailable("the audit log is closed" if self._closed else "the audit log cannot be written")
        started = self._flush_started
        if started is not None and time.monotonic() - started > STALLED_FLUSH_SECONDS:
            # A flush stuck in its fsync (a hung disk): records appended now could not be made durable in time.
            # They go to the writer thread, stuck behind it, whose wait is bounded (the request gets 503).
            return None
        if not self._append_lock.acquire(blocking=False):
            return None
        try:
            try:
                stored = self.sink.try_append(entries)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - every failure means "not recorded": fail closed
                self._mark_failed(exc)
                raise Unavailable("the audit log cannot be written") from exc
            if stored is None:
                return None
            first = self._unflushed_since is None
            if first:
                self._unflushed_since = time.monotonic()
        finally:
            self._append_lock.release()
        if first:
            self._queue.put(([], Future(), False))  # wakes the writer, which now waits at most flush_interval
        self._appended(stored)
        return stored

    def record(self, entry: AuditEntry, timeout: float = 30.0, durable: bool = True) -> AuditEntry:
        """Submit and wait (for callers that are not on an event loop)."""
        return self.submit(entry, durable).result(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far is durable (``Unavailable`` if it cannot be)."""
        self.submit_batch([], durable=True).result(timeout)

    def amend(self, group: list[AuditEntry], index: int, entry: AuditEntry) -> bool:
        """Replace ``group[index]`` if the writer has not taken its group yet (a :class:`PendingEntries`)."""
        with self._lock:
            if not isinstance(group, PendingEntries) or group.taken:
                return False
            group[index] = entry
            return True

    # ------------------------------------------------------------------ the writer thread
    def _next_wait(self) -> float | None:
        if self.failure is not None:
            return RETRY_INTERVAL
        now = time.monotonic()
        waits = [self._next_prune - now] if self.retention_seconds is not None else []
        if self._unflushed_since is not None:
            waits.append(self._unflushed_since + self.flush_interval - now)
        return max(0.0, min(waits)) if waits else None

    def _prune(self) -> None:
        if self.retention_seconds is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_INTERVAL
        try:
            removed = self.sink.prune(datetime.now(UTC) - timedelta(seconds=self.retention_seconds))  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - retention is housekeeping: records stay, nothing is refused
            logger.error("audit log: removing expired records failed (%s); trying again later", type(exc).__name__)
            return
        if removed:
            logger.info("audit log: removed %d records older than the retention period (checkpoint kept)", removed)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[tuple[list[AuditEntry], Future[list[AuditEntry]], bool]] = []
            try:
                try:
                    item = self._queue.get(timeout=self._next_wait())
                except queue.Empty:
                    self._flush()  # the oldest unflushed record is due, or an unhealthy log retries
                    self._prune()
                    continue
                if item is None:
                    stop = True
                else:
                    batch.append(item)
                    size = len(item[0])
                    while size < self.max_batch:
                        try:
                            more = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            stop = True
                            break
                        batch.append(more)
                        size += len(more[0])
                    self._write(batch)
                if stop:
                    self._flush()
            except BaseException as exc:  # noqa: BLE001 - the writer must outlive any batch; no entry content is logged
                logger.error("audit writer: a batch failed with %s; continuing", type(exc).__name__)
                for _, future, _ in batch:
                    _fail(future)

    def _write(self, batch: list[tuple[list[AuditEntry], Future[list[AuditEntry]], bool]]) -> None:
        # A waiter may have gone (its asyncio task was cancelled, which cancels a pending future). Its entries are
        # still written — the request happened — only the result is not delivered. Marking the others running
        # makes a later cancel() a no-op, so set_result below cannot meet a cancelled future.
        waiting = [_claim(future) for _, future, _ in batch]
        with self._lock:  # from here on, what is written is what the groups hold (amend gives up)
            for group, _, _ in batch:
                if isinstance(group, PendingEntries):
                    group.taken = True
            entries = [entry for group, _, _ in batch for entry in group]
        if self.failure is not None:
            self._flush()  # try to recover first: nothing is appended while the log is unhealthy
        stored: list[AuditEntry] = []
        try:
            if self.failure is not None:
                raise Unavailable(self.failure)
            if entries:
                with self._append_lock:
                    stored = self.sink.append(self.chain, entries)
                    if self._unflushed_since is None and not self.durable_appends:
                        self._unflushed_since = time.monotonic()
            if any(durable for _, _, durable in batch) or self._next_wait() == 0.0:
                self._flush(raise_errors=True)
        except Exception as exc:  # noqa: BLE001 - every failure means "not recorded": fail closed
            if not self.durable_appends:
                # Records already served (appended, not yet durable) may be at risk: stop everything until a
                # probe record can be appended and flushed. Where every append is its own durable write
                # (DynamoDB), a failed append fails only its own requests.
                self._mark_failed(exc)
            for (_, future, _), wants in zip(batch, waiting, strict=True):
                if wants:
                    _fail(future)
            return
        offset = 0
        for (group, future, _), wants in zip(batch, waiting, strict=True):
            if wants:
                _deliver(future, stored[offset : offset + len(group)])
            offset += len(group)
        self._appended(stored)

    def _appended(self, stored: list[AuditEntry]) -> None:
        """Counters, and each appended entry to ``emit`` (the structured log line)."""
        self.batches += 1
        self.written += len(stored)
        if self.emit is not None:
            for entry in stored:
                try:
                    self.emit(entry)
                except Exception:  # noqa: BLE001 - the record exists; a log hiccup must not fail it
                    pass

    def _flush(self, raise_errors: bool = False) -> None:
        # The window is taken before the sink flushes: a record appended on the event loop meanwhile (append_now)
        # opens a new one (and wakes this thread for it) instead of being counted as flushed by a flush that may
        # have started before it was written.
        with self._append_lock:
            pending, self._unflushed_since = self._unflushed_since, None
        if pending is None and self.failure is None:
            return
        try:
            if self.failure is not None:
                # Recovering: the probe is a real record, appended and flushed like any other. It marks in the
                # chain itself that records were refused before it (their requests got 503 and were not served).
                with self._append_lock:
                    self.sink.append(self.chain, [_resumed_entry(self.failure)])
            if self._sink_flush is not None:
                self._flush_started = time.monotonic()
                try:
                    self._sink_flush()
                finally:
                    self._flush_started = None
        except Exception as exc:  # noqa: BLE001
            with self._append_lock:  # still not durable: the oldest of them is due as before
                if pending is not None and (self._unflushed_since is None or pending < self._unflushed_since):
                    self._unflushed_since = pending
            self._mark_failed(exc)
            if raise_errors:
                raise
            return
        self.flushes += 1
        if self.failure is not None:
            logger.warning("audit log: records can be written again; accepting requests")
            self.failure = None

    def _mark_failed(self, exc: BaseException) -> None:
        if self.failure is None:
            logger.error("audit log: cannot write records (%s); refusing every request until it can", type(exc).__name__)
        self.failure = f"the audit log cannot be written ({type(exc).__name__})"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=10)


def _resumed_entry(failure: str) -> AuditEntry:
    return AuditEntry(ts=datetime.now(UTC), request_id="", action="audit.resumed", outcome="error", status=503, target=failure[:256])


def _claim(future: Future[Any]) -> bool:
    """Mark a future running; False when nobody waits for its result (cancelled, or already resolved)."""
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # already running or finished: not ours to resolve any more
        return False


def _deliver(future: Future[Any], entry: Any) -> None:
    try:
        future.set_result(entry)
    except InvalidStateError:  # already resolved or cancelled: nobody is waiting for it
        pass


def _fail(future: Future[Any]) -> None:
    try:
        if not future.done():
            future.set_exception(Unavailable("the audit log cannot be written"))
    except InvalidStateError:
        pass


class DisabledAuditLog:
    """Audit off: only for the benchmark baseline (``TESSERA_AUDIT=off``); never in production."""

    enabled = False
    ready = True
    failure = None
    durable_appends = True
    inline = True

    def append_now(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        return entries

    def submit(self, entry: AuditEntry, durable: bool = False) -> Future[AuditEntry]:
        future: Future[AuditEntry] = Future()
        future.set_result(entry)
        return future

    def submit_batch(self, entries: list[AuditEntry], durable: bool = False) -> Future[list[AuditEntry]]:
        future: Future[list[AuditEntry]] = Future()
        future.set_result(entries)
        return future

    def record(self, entry: AuditEntry, timeout: float = 30.0, durable: bool = True) -> AuditEntry:
        return entry

    def amend(self, group: list[AuditEntry], index: int, entry: AuditEntry) -> bool:
        return True

    def flush(self, timeout: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass
