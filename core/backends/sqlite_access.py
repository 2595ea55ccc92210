"""Tokens, policies and the audit log in the embedded backend's SQLite file.

Shares the :class:`SQLiteStore`'s writer connection and transaction (one writer lock, one fsync per
commit) and its per-thread reader connections. Implements ``TokenStore``, ``PolicyStore`` and
``AuditStore`` of ``core/ports.py``.

The audit log has one chain per file. ``tessera.db``'s chain ``main`` holds the records written inside commits:
its append reads the chain head, links the batch and moves the head inside the commit's ``BEGIN IMMEDIATE``
transaction, so every process writing to the file extends one unforked chain (``core/audit.py``). Every other
record goes to the writing process's own :class:`RequestLog` file (``audit-requests-<slot>.db``, chain
``requests-<slot>``); queries, verify and retention read every file as one log (docs/audit.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import GENESIS, RESPONSE, chain_digest, entry_fields, link, placed
from tessera.core.backends.keyring import fsync_directory
from tessera.core.backends.sqlite import SQLiteStore, translated_errors
from tessera.core.errors import Unavailable
from tessera.core.idempotency import RETENTION, IdempotencyGuard
from tessera.core.model import format_time

logger = logging.getLogger("tessera.audit")

ACCESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, policies TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY, rules TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL
) WITHOUT ROWID;
-- (name, version) without reading the rules (a big rules column would be read through to reach version)
CREATE INDEX IF NOT EXISTS policies_versions ON policies (name, version);
"""
# The audit tables: in the config store's file (the chain of records written inside commits, and every record
# of a file from before request logs) and in each request log (``RequestLog``), with a ``meta`` row its flush writes.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    chain TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL, request_id TEXT NOT NULL,
    service TEXT, token_id TEXT, action TEXT NOT NULL, namespace TEXT, env TEXT, key TEXT, version INTEGER,
    outcome TEXT NOT NULL, status INTEGER NOT NULL, target TEXT, client TEXT, method TEXT, path TEXT,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, phase TEXT,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_by_key ON audit (key, ts);
CREATE INDEX IF NOT EXISTS audit_by_service ON audit (service, ts);
CREATE TABLE IF NOT EXISTS audit_heads (chain TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL, removed INTEGER NOT NULL, at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
COMMIT_CHAIN = "main"  # the chain of records written inside commits, in the config store's file
PRUNE_BATCH = 5000  # rows deleted per transaction: the writer lock is never held long

AUDIT_COLUMNS = (
    "chain, seq, ts, request_id, service, token_id, action, namespace, env, key, version, outcome, status, "
    "target, client, method, path, prev_hash, hash, phase"
)
TOKEN_COLUMNS = "id, service, policies, token_hash, created_at, expires_at, revoked_at"


def _stamp(moment: datetime | None) -> str | None:
    """Fixed-width UTC text, so that text order is time order in indexes."""
    return None if moment is None else _fixed_width(moment)


def _fixed_width(moment: datetime) -> str:
    if moment.tzinfo is UTC and moment.year >= 1000:  # every record's time: isoformat is 5x faster than strftime
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _token(row: tuple) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        service=row[1],
        policies=tuple(json.loads(row[2])),
        token_hash=row[3],
        created_at=datetime.fromisoformat(row[4]),
        expires_at=_moment(row[5]),
        revoked_at=_moment(row[6]),
    )


def _audit(row: tuple) -> AuditEntry:
    return AuditEntry(
        chain=row[0], seq=row[1], ts=datetime.fromisoformat(row[2]), request_id=row[3], service=row[4],
        token_id=row[5], action=row[6], namespace=row[7], env=row[8], key=row[9], version=row[10],
        outcome=row[11], status=row[12], target=row[13], client=row[14], method=row[15], path=row[16],
        prev_hash=row[17], hash=row[18], phase=row[19] or RESPONSE,
    )  # fmt: skip


def _policy(row: tuple) -> PolicyDoc:
    rules = tuple(Rule.from_dict(raw) for raw in json.loads(row[1]))
    return PolicyDoc(name=row[0], rules=rules, version=row[2], updated_at=datetime.fromisoformat(row[3]))


class SQLiteAccessStore:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        with store.transaction() as db:
            for statement in (ACCESS_SCHEMA + AUDIT_SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
            if "phase" not in columns:  # a file from before request entries: NULL is "response"
                db.execute("ALTER TABLE audit ADD COLUMN phase TEXT")
        # Records of changes are written inside the commit's own transaction (durable with the change).
        store.audit_appender = lambda db, entries: AuditTables.append_in(db, COMMIT_CHAIN, entries)
        store.audit_in_commit = True
        self._main = AuditTables(store)
        self._main_unflushed = False  # records appended to this file's tables since its last flush
        self._own: RequestLog | None = None
        self._own_lock = threading.Lock()
        self._foreign: dict[Path, RequestLogTables] = {}  # other processes' request logs, opened to be read

    # ------------------------------------------------------------------ tokens
    idempotency = True  # create_token marks an Idempotency-Key claim in its own transaction

    def create_token(self, record: TokenRecord, guard: IdempotencyGuard | None = None) -> None:
        with self.store.transaction() as db:
            if guard is not None and self.store.idempotency_marker is not None:
                self.store.idempotency_marker(db, guard, ("token", record.id), record.created_at + RETENTION)
            db.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id, record.service, json.dumps(list(record.policies)), record.token_hash,
                    _stamp(record.created_at), _stamp(record.expires_at), _stamp(record.revoked_at),
                ),
            )  # fmt: skip

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        rows = self.store._query(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    def get_token(self, token_id: str) -> TokenRecord | None:
        rows = self.store._query(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,))
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        rows = self.store._query(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE revoked_at IS NULL ORDER BY created_at, id")
        return [_token(row) for row in rows]

    def revoke_token(self, token_id: str, when: datetime) -> bool:
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_stamp(when), token_id)
            )
            return cursor.rowcount == 1

    # ------------------------------------------------------------------ policies
    def put_policy(self, name: str, rules: tuple[Rule, ...], when: datetime) -> PolicyDoc:
        body = json.dumps([rule.to_dict() for rule in rules])
        with self.store.transaction() as db:
            # Versions come from one counter, so a policy deleted and created again never reuses a
            # version number (nodes cache compiled policies by (name, version)).
            version = db.execute(
                "INSERT INTO counters (name, value) VALUES ('policy_version', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()[0]
            db.execute(
                "INSERT INTO policies (name, rules, version, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET rules = excluded.rules, version = excluded.version, "
                "updated_at = excluded.updated_at",
                (name, body, version, _stamp(when)),
            )
        return PolicyDoc(name, rules, version, when)

    def get_policy(self, name: str) -> PolicyDoc | None:
        rows = self.store._query("SELECT name, rules, version, updated_at FROM policies WHERE name = ?", (name,))
        return _policy(rows[0]) if rows else None

    def list_policies(self) -> list[PolicyDoc]:
        rows = self.store._query("SELECT name, rules, version, updated_at FROM policies ORDER BY name")
        return [_policy(row) for row in rows]

    def policy_versions(self) -> dict[str, int]:
        """Every policy's name and version, without its rules: what a node compares before reloading any."""
        return dict(self.store._query("SELECT name, version FROM policies"))

    def delete_policy(self, name: str) -> bool:
        with self.store.transaction() as db:
            return db.execute("DELETE FROM policies WHERE name = ?", (name,)).rowcount == 1

    # ------------------------------------------------------------------ audit
    # A record written inside a commit (a change's own record) extends the chain "main" in this file. Every other
    # record (reads, refusals, requests that changed nothing) goes to this process's own request log, a file
    # beside this one (:class:`RequestLog`). Appending there neither waits for the config store's write lock
    # nor changes this file, which every reader checks before a cached answer (an append here made each reader
    # connection drop its page cache). ``GET /audit``, verify and retention see the chains of every file as one log.
    chain_name = None  # the store picks the chain: this process's request log (``append(None, …)``)

    def append(self, chain: str | None, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Written without an fsync: :meth:`flush` makes it durable. ``None`` (or the request log's own chain)
        appends to this process's request log, any other chain to this file's tables."""
        if not entries:
            return []
        if chain is None or (self._own is not None and chain == self._own.chain):
            linked = self.request_log().append(entries)
            assert linked is not None  # a waiting append always appends (or raises)
            return linked
        with self.store.transaction(durable=False) as db:
            self._main_unflushed = True
            return AuditTables.append_in(db, chain, entries)

    def try_append(self, entries: list[AuditEntry]) -> list[AuditEntry] | None:
        """Append to this process's request log without waiting: None when it is busy (another append, a segment
        swap). What the event loop calls (``AuditLog.append_now``): it never waits for another thread."""
        return self.request_log().append(entries, wait=False)

    def flush(self) -> None:
        """Make every record appended so far durable: one fsync of each file appended to since the last flush."""
        if self._own is not None:
            self._own.flush()
        if self._main_unflushed:
            AuditTables.flush_store(self.store)
            self._main_unflushed = False

    def request_log(self) -> RequestLog:
        """This process's request log, claimed on first use: a CLI command that only reads or verifies the log
        creates no file."""
        with self._own_lock:
            if self._own is None:
                self._own = RequestLog.claim(self.store.path.parent)
                earlier = self._foreign.pop(self._own.path, None)  # a log left by an earlier run, read before
                if earlier is not None:
                    earlier.store.close()
            return self._own

    def _logs(self) -> list[AuditTables]:
        """The audit tables of every file: this one's, then each request log of the data directory (this
        process's own, other processes', and those left by earlier runs)."""
        tables = [self._main]
        with self._own_lock:
            for path in sorted(self.store.path.parent.glob(REQUEST_LOG_GLOB)):
                if self._own is not None and path == self._own.path:
                    tables.append(self._own.tables)
                    continue
                if path not in self._foreign:
                    self._foreign[path] = RequestLogTables(ReadOnlyFile(path), segment_paths(path))
                tables.append(self._foreign[path])
        return tables

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        """Newest first across every file: each file's newest ``limit`` matches, merged."""
        found = [entry for tables in self._logs() for entry in tables.query(key, service, since, limit, phase)]
        found.sort(key=lambda e: (e.ts, e.chain, e.seq), reverse=True)
        return found[:limit]

    def chains(self) -> dict[str, tuple[int, str]]:
        return {chain: head for tables in self._logs() for chain, head in tables.chains().items()}

    def chain_starts(self) -> dict[str, tuple[int, str]]:
        """Each chain's last removed entry (seq, hash): where ``verify`` starts."""
        return {chain: start for tables in self._logs() for chain, start in tables.chain_starts().items()}

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        if not chain.startswith(REQUEST_CHAIN_PREFIX):
            return self._main.chain_entries(chain, after_seq, limit)
        path = request_log_path(self.store.path.parent, chain)  # the chain names its file
        found = [tables for tables in self._logs()[1:] if tables.store.path == path]
        return found[0].chain_entries(chain, after_seq, limit) if found else []

    def prune(self, older_than: datetime, batch: int = PRUNE_BATCH) -> int:
        """Retention of this file's chains and this process's request log (each process prunes its own; a log
        left by an earlier run is pruned by the process that claims its slot next)."""
        removed = self._main.prune(older_than, batch)
        if self._own is not None:
            removed += self._own.tables.prune(older_than, batch)
        return removed

    def close(self) -> None:
        with self._own_lock:
            if self._own is not None:
                self._own.close()
                self._own = None
            for tables in self._foreign.values():
                tables.store.close()
            self._foreign.clear()


REQUEST_LOG_GLOB = "audit-requests-*.db"
REQUEST_CHAIN_PREFIX = "requests-"
MAX_SLOTS = 1024  # request logs per data directory (one per live process)


def request_log_path(data_dir: Path, chain: str) -> Path:
    """The file of a request log's chain: ``requests-<slot>`` lives in ``audit-requests-<slot>.db``."""
    return data_dir / f"audit-{chain}.db"


SEGMENT_BYTES = 1024 * 1024  # a segment this full is moved into the table and emptied (see RequestLog)
# The table's rows from segment lines (JSON arrays in AUDIT_COLUMNS order), parsed by SQLite itself: an ingest runs
# in C without the GIL, beside the event loop (parsing in Python and binding each row held the GIL for a third of
# the time, and the event loop's reads waited for it: 10-20% fewer reads a second, measured).
INGEST_SQL = (
    f"INSERT OR IGNORE INTO audit ({AUDIT_COLUMNS}) SELECT "
    + ", ".join(f"value ->> {i}" for i in range(20))
    + " FROM json_each(?)"
)


def _linked_lines(chain: str, entries: list[AuditEntry], seq: int, prev_hash: str) -> tuple[list[AuditEntry], bytes]:
    """``link`` and ``_line`` in one pass, for the event loop's appends: each record's time is formatted once and
    its fields read once. The hash's time text is the line's (fixed width) except on a whole second, where
    ``format_time`` leaves the fraction out."""
    linked = []
    lines = []
    for entry in entries:
        seq += 1
        moment, phase = entry.ts, entry.phase
        stamp = _fixed_width(moment)
        fields = entry_fields(entry)
        exact = moment.microsecond and moment.tzinfo is UTC and moment.year >= 1000  # then stamp is format_time's
        digest = chain_digest(chain, seq, prev_hash, stamp if exact else format_time(moment), fields, phase)
        lines.append(orjson.dumps((chain, seq, stamp, *fields, prev_hash, digest, None if phase == RESPONSE else phase)))
        linked.append(placed(entry, chain, seq, prev_hash, digest))
        prev_hash = digest
    lines.append(b"")
    return linked, b"\n".join(lines)


def segment_paths(log_path: Path) -> tuple[Path, Path]:
    """A request log's two segment files, beside its table's file."""
    return log_path.with_name(log_path.name + "-segment-0"), log_path.with_name(log_path.name + "-segment-1")


def read_segments(paths: tuple[Path, Path]) -> list[tuple]:
    """Every whole line of both segments as table rows, in seq order (a torn last line is left out)."""
    rows: dict[int, tuple] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        for line in data.split(b"\n")[:-1]:  # the text after the last newline is a write not yet whole
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line torn by a crash (only the last can be; a reader racing a truncation sees others)
            if isinstance(row, list) and len(row) == 20 and isinstance(row[1], int):  # else not a record: its seq
                rows[row[1]] = tuple(row)  # is missing, which verify reports
    return [rows[seq] for seq in sorted(rows)]


class RequestLog:
    """One process's audit request log, holding one chain, ``requests-<slot>``, appended by this process only:
    two append-only segment files and a SQLite file, ``audit-requests-<slot>.db``, whose tables are indexed for
    ``GET /audit`` and retention.

    A process claims the lowest slot no live process holds (an ``flock`` on ``audit-requests-<slot>.lock``, which
    the kernel releases on any exit, ``kill -9`` included): ``serve --workers N`` uses slots 0..N-1, and a
    restarted process continues a chain left by an earlier one. Holding the slot makes the chain's head this
    process's own, so it is kept in memory between appends instead of read in each.

    **Append** (the event loop, for every read): the records are linked to the head and written to the current
    segment, one ``write`` per event-loop turn, each record one line. No SQLite transaction: its ``BEGIN
    IMMEDIATE``/``COMMIT`` and five B-trees were most of a read's audit cost, and they were paid per turn, so the
    fewer requests a turn held, the more each paid.

    **Flush** (the audit writer thread, at least every 100 ms while records wait): ``fdatasync`` of the segment,
    then the lines flushed are copied into the table (SQLite parses them: no GIL held) without an fsync of their
    own, the segment staying their durable copy. A segment past ``SEGMENT_BYTES`` is swapped for the other (empty)
    one; once the swapped-out one's lines are in the table and the table is fsynced, it is emptied.

    So a record is always in a segment, in the table, or in both (never in neither), and a reader reads the
    segments first, then the table, and takes each seq once (:class:`RequestLogTables`). A process that claims the
    slot after a crash copies every whole line that continues the table's chain into the table and empties both
    segments before it appends (a line torn by a power loss, or any line after a gap, is dropped with a warning:
    only records of the last ``flush_interval`` can be missing, docs/audit.md)."""

    def __init__(self, data_dir: Path, slot: int, lock_fd: int) -> None:
        self.slot = slot
        self.chain = f"{REQUEST_CHAIN_PREFIX}{slot}"
        self.path = request_log_path(data_dir, self.chain)
        self._lock_fd = lock_fd
        self.store = SQLiteStore(self.path, schema=AUDIT_SCHEMA, durable_by_default=False)
        self.segments = segment_paths(self.path)
        self.tables = RequestLogTables(self.store, self.segments)
        self._fds = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600) for path in self.segments]
        fsync_directory(data_dir)  # the segments' names are durable before any record is counted on them
        self._lock = threading.Lock()  # appends in chain order, the head moved with each; a segment swap
        self._flush_lock = threading.Lock()  # one flush (and ingest) at a time
        self._current = 0  # the segment appended to
        self._written = [0, 0]  # bytes in each segment: whole appends only
        self._ingested = [0, 0]  # bytes of each segment already copied into the table
        self._unflushed = False
        self._head = self._recover()  # (seq, hash) of the last record appended

    @classmethod
    def claim(cls, data_dir: Path) -> RequestLog:
        for slot in range(MAX_SLOTS):
            fd = os.open(data_dir / f"audit-requests-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                return cls(data_dir, slot, fd)
            except BaseException:
                os.close(fd)
                raise
        raise Unavailable(f"every audit request log slot of the data directory is held ({MAX_SLOTS})")

    def _recover(self) -> tuple[int, str]:
        """Copy what an earlier process left in the segments into the table (the lines that continue its chain),
        make that durable, and empty both segments; returns the chain's head."""
        row = self.store._query("SELECT seq, hash FROM audit_heads WHERE chain = ?", (self.chain,))
        seq, digest = (row[0][0], row[0][1]) if row else (0, GENESIS)
        following = []
        for line in read_segments(self.segments):
            if line[1] <= seq:
                continue  # in the table already
            if line[0] != self.chain or line[1] != seq + 1 or line[17] != digest:
                logger.warning("audit request log %s: records after seq %d are not whole and were dropped", self.chain, seq)
                break
            following.append(line)
            seq, digest = line[1], line[18]
        if following:
            self._ingest_rows(orjson.dumps(following).decode(), following[-1])
        AuditTables.flush_store(self.store)  # durable before the segments are emptied
        for fd in self._fds:
            os.ftruncate(fd, 0)
        return seq, digest

    def append(self, entries: list[AuditEntry], wait: bool = True) -> list[AuditEntry] | None:
        """Link ``entries`` and write them to the current segment (no fsync: :meth:`flush` makes them durable).
        ``wait=False``: None at once, appending nothing, when another append or a segment swap holds the log."""
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            linked, data = _linked_lines(self.chain, entries, *self._head)
            current = self._current
            fd = self._fds[current]
            written = os.write(fd, data)
            if written != len(data):  # the disk is full: no half record stays behind to be built upon
                os.ftruncate(fd, self._written[current])
                raise OSError(f"short write to the audit request log ({written} of {len(data)} bytes)")
            self._written[current] += written
            self._head = (linked[-1].seq, linked[-1].hash)
            self._unflushed = True
            return linked
        finally:
            self._lock.release()

    def flush(self) -> None:
        """Make every record appended so far durable (``fdatasync`` of the segment), then copy the flushed lines
        into the table; a full segment is swapped for the other and emptied once its lines are durable there."""
        with self._flush_lock:
            # Cleared before the fsync: an append landing meanwhile marks the log again, for the next flush to cover.
            with self._lock:
                if not self._unflushed:
                    return
                self._unflushed = False
                current, end = self._current, self._written[self._current]
            try:
                os.fdatasync(self._fds[current])
            except BaseException:
                self._unflushed = True
                raise
            self._ingest(current, end)
            if end >= SEGMENT_BYTES:
                self._swap()

    def _swap(self) -> None:
        with self._lock:  # the next append goes to the other segment (emptied at the last swap)
            old = self._current
            self._current = 1 - old
            end = self._written[old]
        os.fdatasync(self._fds[old])  # the appends that landed after the flush's fsync
        self._ingest(old, end)
        AuditTables.flush_store(self.store)  # its lines are durable in the table: the segment can go
        os.ftruncate(self._fds[old], 0)
        self._written[old] = self._ingested[old] = 0

    def _ingest(self, index: int, end: int) -> None:
        """Copy the segment's lines up to byte ``end`` (whole appends) into the table."""
        start = self._ingested[index]
        if end <= start:
            return
        data = os.pread(self._fds[index], end - start, start)
        head = orjson.loads(data[data.rfind(b"\n", 0, len(data) - 1) + 1 :])  # the last line
        self._ingest_rows("[" + data[:-1].replace(b"\n", b",").decode() + "]", head)  # whole lines: one JSON array
        self._ingested[index] = end

    def _ingest_rows(self, rows: str, head: list | tuple) -> None:
        with self.store.transaction() as db:
            db.execute(INGEST_SQL, (rows,))
            AuditTables.move_head(db, self.chain, head[1], head[18])

    def close(self) -> None:
        try:
            with self._flush_lock:
                for index in (1 - self._current, self._current):  # the older segment's lines first
                    self._ingest(index, self._written[index])
        except Exception:  # noqa: BLE001 - they stay in the segments: the next process of this slot copies them
            logger.warning("audit request log %s: records left in its segments at close", self.chain)
        for fd in self._fds:
            os.close(fd)
        self.store.close()
        os.close(self._lock_fd)  # frees the slot


class ReadOnlyFile:
    """Another process's request log, read for ``GET /audit`` and verify, never written here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock, translated_errors():
            if self._connection is None:
                self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            return self._connection.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class AuditTables:
    """The audit tables of one SQLite file (``audit``, ``audit_heads``, ``audit_checkpoints``): appends,
    queries, retention and what ``verify`` reads."""

    def __init__(self, store: SQLiteStore | ReadOnlyFile) -> None:
        self.store = store

    @staticmethod
    def flush_store(store: SQLiteStore) -> None:
        """A tiny commit with ``synchronous=FULL`` fsyncs the WAL, which holds the appended records' frames."""
        with store.transaction(durable=True) as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('audit_flushed_at', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (_stamp(datetime.now(UTC)),),
            )

    @staticmethod
    def append_in(db: sqlite3.Connection, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Link ``entries`` to the chain's head and insert them, inside the caller's transaction."""
        row = db.execute("SELECT seq, hash FROM audit_heads WHERE chain = ?", (chain,)).fetchone()
        linked = link(chain, entries, *((row[0], row[1]) if row else (0, GENESIS)))
        db.executemany(
            f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({', '.join('?' * 20)})",
            [
                (
                    e.chain, e.seq, _stamp(e.ts), e.request_id, e.service, e.token_id, e.action, e.namespace,
                    e.env, e.key, e.version, e.outcome, e.status, e.target, e.client, e.method, e.path,
                    e.prev_hash, e.hash, None if e.phase == RESPONSE else e.phase,
                )
                for e in linked
            ],
        )  # fmt: skip
        AuditTables.move_head(db, chain, linked[-1].seq, linked[-1].hash)
        return linked

    @staticmethod
    def move_head(db: sqlite3.Connection, chain: str, seq: int, digest: str) -> None:
        """The chain's head is now (``seq``, ``digest``); never moved back (a request log's copy of lines a
        recovery already took in)."""
        db.execute(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES (?, ?, ?) "
            "ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash WHERE excluded.seq > seq",
            (chain, seq, digest),
        )

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        """Newest first; ``phase`` "response" (the default: one entry per request), "request", or None for both."""
        where: list[str] = []
        params: list[str | None] = []
        if phase == RESPONSE:
            where.append("phase IS NULL")
        elif phase is not None:
            where.append("phase = ?")
            params.append(phase)
        if key is not None:
            where.append("key = ?")
            params.append(key)
        if service is not None:
            where.append("service = ?")
            params.append(service)
        if since is not None:
            where.append("ts >= ?")
            params.append(_stamp(since))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.store._query(
            f"SELECT {AUDIT_COLUMNS} FROM audit {clause} ORDER BY ts DESC, seq DESC LIMIT ?", (*params, limit)
        )
        return [_audit(row) for row in rows]

    def chains(self) -> dict[str, tuple[int, str]]:
        return {chain: (seq, digest) for chain, seq, digest in self.store._query("SELECT chain, seq, hash FROM audit_heads")}

    def chain_starts(self) -> dict[str, tuple[int, str]]:
        """Each chain's last removed entry (seq, hash): where ``verify`` starts."""
        return {chain: (seq, digest) for chain, seq, digest in self.store._query("SELECT chain, seq, hash FROM audit_checkpoints")}

    def prune(self, older_than: datetime, batch: int = PRUNE_BATCH) -> int:
        """Remove each chain's oldest records written before ``older_than``, leaving a checkpoint (the last removed
        record's seq and hash, and how many were removed in all); returns how many were removed. Records go in
        chain order only (a record is kept while one before it must be), in transactions of ``batch``."""
        removed = 0
        cutoff = _stamp(older_than)
        store = self.store
        assert isinstance(store, SQLiteStore)  # another process's request log is never pruned here
        for chain in self.chains():
            while True:
                with store.transaction() as db:
                    low = db.execute("SELECT MIN(seq) FROM audit WHERE chain = ?", (chain,)).fetchone()[0]
                    head = db.execute("SELECT seq FROM audit_heads WHERE chain = ?", (chain,)).fetchone()
                    if low is None or head is None:
                        break
                    high = min(low + batch - 1, head[0] - 1)  # the newest record always stays: the head is checked against it
                    newer = db.execute(
                        "SELECT MIN(seq) FROM audit WHERE chain = ? AND seq BETWEEN ? AND ? AND ts >= ?", (chain, low, high, cutoff)
                    ).fetchone()[0]
                    boundary = high if newer is None else newer - 1
                    if boundary < low:
                        break
                    last_hash = db.execute("SELECT hash FROM audit WHERE chain = ? AND seq = ?", (chain, boundary)).fetchone()[0]
                    deleted = db.execute("DELETE FROM audit WHERE chain = ? AND seq <= ?", (chain, boundary)).rowcount
                    db.execute(
                        "INSERT INTO audit_checkpoints (chain, seq, hash, removed, at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                        "removed = audit_checkpoints.removed + excluded.removed, at = excluded.at",
                        (chain, boundary, last_hash, deleted, _stamp(datetime.now(UTC))),
                    )
                removed += deleted
                if boundary < high or deleted < batch:
                    break
        return removed

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        rows = self.store._query(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?", (chain, after_seq, limit)
        )
        return [_audit(row) for row in rows]


class RequestLogTables(AuditTables):
    """A request log as readers see it: its table and its segments' lines, each seq once. The segments are read
    first: a line that leaves them (its segment emptied) is in the table, durably, before it goes."""

    def __init__(self, store: SQLiteStore | ReadOnlyFile, segments: tuple[Path, Path]) -> None:
        super().__init__(store)
        self.segments = segments

    def _recent(self) -> list[AuditEntry]:
        """The segments' records, less any that retention removed from the table (a quiet process's segment
        can hold records for longer than the retention period: it is emptied only when full)."""
        rows = read_segments(self.segments)
        if not rows:
            return []
        removed = self.chain_starts()
        return [_audit(row) for row in rows if row[1] > removed.get(row[0], (0, ""))[0]]

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        recent = [
            e
            for e in self._recent()
            if (phase is None or e.phase == phase)
            and (key is None or e.key == key)
            and (service is None or e.service == service)
            and (since is None or e.ts >= since)
        ]
        found = {e.seq: e for e in recent}
        found.update((e.seq, e) for e in super().query(key, service, since, limit, phase))  # the table's copy wins
        return sorted(found.values(), key=lambda e: (e.ts, e.seq), reverse=True)[:limit]

    def chains(self) -> dict[str, tuple[int, str]]:
        recent = self._recent()
        heads = super().chains()
        for e in recent:
            if e.seq > heads.get(e.chain, (0, ""))[0]:
                heads[e.chain] = (e.seq, e.hash)
        return heads

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        """A page of the chain from the table; the segments are read only for the last page (a short one), and
        then before the table is asked again (``verify`` pages through millions of records)."""
        page = super().chain_entries(chain, after_seq, limit)
        if len(page) == limit:
            return page
        recent = [e for e in self._recent() if e.chain == chain and e.seq > after_seq]
        found = {e.seq: e for e in recent}
        found.update((e.seq, e) for e in super().chain_entries(chain, after_seq, limit))
        return [found[seq] for seq in sorted(found)][:limit]

__all__ = ["SQLiteAccessStore"]
