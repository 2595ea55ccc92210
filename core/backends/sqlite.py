"""The embedded backend: SQLite on disk, WAL with ``synchronous=FULL``, so an acknowledged commit
survives ``kill -9`` and power loss.

One transaction per commit (head check, key-conflict check, version row, head update, revision, change-log
row); ``commit_many`` puts several such steps in one transaction (promote's all-or-nothing). Writes go through
one connection under a lock (SQLite has one writer anyway); reads use a connection per thread, reused across
requests, and each read is one indexed lookup whatever the history length.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from tessera.core.access_model import AuditEntry
from tessera.core.errors import KeyConflict, Unavailable, VersionConflict
from tessera.core.idempotency import RETENTION, IdempotencyGuard, change_of
from tessera.core.model import Action, Change, Environment, Scope, Version, ancestors

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    namespace TEXT NOT NULL, env TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
    action TEXT NOT NULL, secret INTEGER NOT NULL, updated_at TEXT NOT NULL, updated_by TEXT NOT NULL,
    revision INTEGER NOT NULL, rolled_back_from INTEGER, envelope BLOB, key_id TEXT,
    PRIMARY KEY (namespace, env, key, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_key_id ON versions (key_id);
CREATE TABLE IF NOT EXISTS heads (
    namespace TEXT NOT NULL, env TEXT NOT NULL, key TEXT NOT NULL,
    version INTEGER NOT NULL, live INTEGER NOT NULL,
    PRIMARY KEY (namespace, env, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY, namespace TEXT NOT NULL, env TEXT NOT NULL, key TEXT NOT NULL,
    version INTEGER NOT NULL, action TEXT NOT NULL, secret INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS envs (name TEXT PRIMARY KEY, parent TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

VERSION_COLUMNS = (
    "v.namespace, v.env, v.key, v.version, v.action, v.secret, v.updated_at, v.updated_by, "
    "v.revision, v.rolled_back_from, v.envelope, v.key_id"
)
# The same columns without the sealed value: the hot path reads metadata only, and the value cache (or
# ``load_envelope`` on a miss) supplies the value.
META_COLUMNS = VERSION_COLUMNS.replace("v.envelope", "NULL")
# ``.`` is followed by ``/`` in ASCII, so [prefix + ".", prefix + "/") is exactly the keys below ``prefix``.
BELOW_UPPER_BOUND = "/"
# /ready: a store is not ready for writes with less free space than this (a value is up to 64 KiB, and its WAL
# frames, index pages and audit record come with it), nor when its write lock cannot be had within PROBE_WAIT.
MIN_FREE_BYTES = 1024 * 1024
PROBE_WAIT = 2.0
MAX_IDLE_READERS = 16  # more concurrent readers than this open extra connections, closed when they finish
CHECKPOINT_SECONDS = 1.0  # how often the checkpointer moves the WAL's committed pages into the database file
WAL_RESTART_BYTES = 256 * 1024 * 1024  # a WAL past this is restarted (waiting for readers) rather than left to grow
WAL_FRAME_BYTES = 4096 + 24  # a page and its frame header
CATCH_UP_ROUNDS = 8  # checkpoint repeats per round while commits keep arriving (see _checkpoints)
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # a WAL file grown past this by a burst is cut back to it once it restarts


def _row_to_version(row: tuple) -> Version:
    return Version(
        scope=Scope(row[0], row[1]),
        key=row[2],
        version=row[3],
        action=Action(row[4]),
        secret=bool(row[5]),
        updated_at=datetime.fromisoformat(row[6]),
        updated_by=row[7],
        revision=row[8],
        rolled_back_from=row[9],
        envelope=row[10],
        key_id=row[11],
    )


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


WAL_INDEX_VERSION = 3007000  # the WAL-index format every SQLite since 3.7.0 writes (https://www.sqlite.org/walformat.html)
WAL_INDEX_HEADER_BYTES = 48


class WalIndexHeader:
    """The first copy of the WAL-index header at the start of the ``-shm`` file, mapped read-only.

    Its 48 bytes change with every transaction any connection of any process commits: ``iChange`` counts them,
    ``mxFrame`` and the frame checksums move, and a restarted WAL gets new salts (walformat.html, 2.1). So "are they
    the bytes I saw last time?" answers "has anything been committed since?" with one memory read, where
    ``PRAGMA data_version`` is a statement and a read transaction (shm locks taken, both header copies read and
    checked): 9 µs of a 80 µs read under load. A torn read (a commit writing the header meanwhile) only ever
    differs from what was seen, which sends the caller to the full check.

    Valid while this process keeps a connection to the file open: SQLite unlinks ``-shm`` only when the last
    connection of every process closes (it needs the exclusive lock that every open WAL connection's shared lock
    holds off), and a store keeps its writer connection open until :meth:`SQLiteStore.close`."""

    def __init__(self, view: mmap.mmap) -> None:
        self._view = view

    @classmethod
    def open(cls, database: Path) -> WalIndexHeader | None:
        """None when the file cannot be read this way (no ``-shm``: another VFS or locking mode; another format)."""
        try:
            fd = os.open(f"{database}-shm", os.O_RDONLY)
        except OSError:
            return None
        try:
            view = mmap.mmap(fd, WAL_INDEX_HEADER_BYTES, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)  # the mapping keeps the file
        if struct.unpack_from("=I", view)[0] != WAL_INDEX_VERSION:
            view.close()
            return None
        return cls(view)

    def read(self) -> bytes | None:
        try:
            return self._view[:WAL_INDEX_HEADER_BYTES]
        except ValueError:  # closed with its store
            return None

    def close(self) -> None:
        self._view.close()


def create_private(path: Path) -> None:
    """Create the database file 0600 whatever the umask, before SQLite opens it: SQLite creates the file 0644 and
    gives ``-wal`` and ``-shm`` the database file's mode, so this one mode covers all three."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


@contextmanager
def translated_errors() -> Iterator[None]:
    """No sqlite3 exception leaves the adapter: the store being unusable is ``503 unavailable``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise Unavailable("the embedded store is unavailable") from exc


class SQLiteStore:
    backend_name = "local"

    def __init__(
        self, path: Path | str, change_log_retention: int = 100_000, schema: str = SCHEMA, durable_by_default: bool = True
    ) -> None:
        """``schema``: the tables of this file (the audit request log's file has only the audit tables).
        ``durable_by_default=False``: transactions commit without an fsync unless asked (``transaction(durable=True)``),
        for a file most of whose commits are appends made durable later by one flush (the audit request log)."""
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.change_log_retention = change_log_retention
        # Trim the change log in steps of a tenth of its retention (at most every 1000 commits).
        self._compaction_every = max(1, min(1000, change_log_retention // 10))
        create_private(self.path)
        self._writer = connect(self.path)
        self._durable_by_default = durable_by_default
        if not durable_by_default:
            self._writer.execute("PRAGMA synchronous=NORMAL")
        self._write_lock = threading.Lock()
        # read_stamp's connection per thread, with the file's data_version and the stamp read at it
        self._stamp_local = threading.local()
        self._stamp_connections: list[sqlite3.Connection] = []
        self._probe: sqlite3.Connection | None = None  # write_probe's own connection
        self._probe_lock = threading.Lock()
        # Idle reader connections, reused across requests and threads. Checked out per query rather than held
        # per thread: worker threads come and go (anyio retires idle ones), connections must not go with them.
        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.readers_opened = 0
        # Set by the access store sharing this file: appends audit records inside a commit's transaction.
        self.audit_appender: Callable[[sqlite3.Connection, list[AuditEntry]], list[AuditEntry]] | None = None
        self.audit_in_commit = False
        # Set by the Idempotency-Key store sharing this file: marks a claim committed inside a commit.
        self.idempotency_marker: Callable[..., None] | None = None
        with self._write_lock, translated_errors():
            self._writer.executescript(schema)
        # No checkpoint inside a commit: SQLite's automatic one runs in the committing connection, copying the WAL
        # into the database file and fsyncing it, so every thousandth audit append (and every read waiting on it)
        # took ~10 ms. A thread of this store's own does it instead, beside the writers (WAL checkpoints do not
        # block them).
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._wal_header = WalIndexHeader.open(self.path)  # read_stamp's lock-free first check (None: not available)
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="tessera-checkpoint", daemon=True)
        self._checkpointer.start()

    # ------------------------------------------------------------------ connections
    def _checkout_reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            if self._idle_readers:
                return self._idle_readers.pop()
            self.readers_opened += 1
        return connect(self.path)

    def _checkin_reader(self, connection: sqlite3.Connection) -> None:
        with self._readers_lock:
            if len(self._idle_readers) < MAX_IDLE_READERS:
                self._idle_readers.append(connection)
                return
        connection.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with translated_errors():
            connection = self._checkout_reader()
            try:
                rows = connection.execute(sql, params).fetchall()
            except BaseException:
                connection.close()  # never hand a connection in an unknown state to the next reader
                raise
            self._checkin_reader(connection)
            return rows

    @contextmanager
    def transaction(self, durable: bool | None = None) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` on the writer connection; commits on success, rolls back on any error.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL`` for this one transaction), ``True``
        with one, ``None`` as the store does by default. The WAL is a sequence, so the next durable commit makes
        the frames of earlier non-durable ones durable too (the audit log's flush relies on it).
        """
        toggled = durable is not None and durable != self._durable_by_default
        with self._write_lock, translated_errors():
            if toggled:
                self._writer.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                    self._writer.execute("COMMIT")
                except BaseException:
                    # Also after a failed COMMIT (SQLITE_BUSY, I/O error): a connection left inside its transaction
                    # would refuse every later BEGIN, i.e. every write until a restart.
                    if self._writer.in_transaction:
                        self._writer.execute("ROLLBACK")
                    raise
            finally:
                if toggled:
                    self._writer.execute(f"PRAGMA synchronous={'FULL' if self._durable_by_default else 'NORMAL'}")

    def write_probe(self) -> str | None:
        """Why this store cannot take a write now, or None (``/ready``): the data directory's file system is full,
        or the write lock cannot be had within ``PROBE_WAIT`` (another process holds it: a backup tool, a stuck
        ``sqlite3`` shell). Takes the lock on a connection of its own and releases it at once; writes nothing."""
        try:
            stats = os.statvfs(self.path.parent)
        except OSError as exc:
            return f"the data directory cannot be examined ({type(exc).__name__})"
        free = stats.f_bavail * stats.f_frsize
        if free < MIN_FREE_BYTES:
            return f"the store cannot take writes: its file system is full ({free} bytes free)"
        with self._probe_lock:
            try:
                if self._probe is None:
                    self._probe = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=PROBE_WAIT)
                self._probe.execute("BEGIN IMMEDIATE")
                self._probe.execute("ROLLBACK")
            except sqlite3.Error as exc:
                if self._probe is not None:
                    self._probe.close()  # a connection in an unknown state is not reused
                    self._probe = None
                reason = "its write lock is held elsewhere" if "locked" in str(exc) or "busy" in str(exc) else type(exc).__name__
                return f"the store cannot take writes ({reason})"
        return None

    def _checkpoints(self) -> None:
        """Every ``CHECKPOINT_SECONDS``, move the WAL's committed pages into the database file (PASSIVE: writers
        and readers go on). Frames committed while it copies are left for the next round, and as long as any are
        left the WAL cannot start again from its beginning: under steady appends (the audit request log takes
        hundreds of commits a second) it only grew, and every commit got slower. So each round repeats while it
        leaves frames behind (each repeat copies only what arrived meanwhile), up to ``CATCH_UP_ROUNDS``. A WAL
        still past ``WAL_RESTART_BYTES`` of frames gets a RESTART, which waits for readers and holds writers off:
        not on a store whose writes are appends made durable by a timed flush (``durable_by_default=False``: the
        request log's table, whose copy from the segments is part of the audit flush)."""
        connection: sqlite3.Connection | None = None
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_SECONDS):
                try:
                    connection = connection or connect(self.path)
                    for _ in range(CATCH_UP_ROUNDS):
                        _, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if frames <= copied:
                            break
                    if self._durable_by_default and frames * WAL_FRAME_BYTES > WAL_RESTART_BYTES:
                        connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                except (sqlite3.Error, OSError):
                    continue  # busy (another process checkpoints) or the disk is full: the next round tries again
        finally:
            if connection is not None:
                connection.close()

    def close(self) -> None:
        self._stop_checkpoints.set()
        if self._checkpointer is not threading.current_thread():
            self._checkpointer.join(5)
        with self._probe_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        with self._readers_lock:
            for connection in self._idle_readers + self._stamp_connections:
                connection.close()
            self._idle_readers.clear()
            self._stamp_connections.clear()
        with self._write_lock:
            if self._wal_header is not None:
                self._wal_header.close()
            self._writer.close()

    # ------------------------------------------------------------------ reads
    def latest(self, scope: Scope, key: str) -> Version | None:
        rows = self._query(
            f"SELECT {META_COLUMNS} FROM heads h JOIN versions v ON v.namespace = h.namespace "
            "AND v.env = h.env AND v.key = h.key AND v.version = h.version "
            "WHERE h.namespace = ? AND h.env = ? AND h.key = ?",
            (scope.namespace, scope.env, key),
        )
        return _row_to_version(rows[0]) if rows else None

    def get_version(self, scope: Scope, key: str, version: int) -> Version | None:
        rows = self._query(
            f"SELECT {VERSION_COLUMNS} FROM versions v WHERE namespace = ? AND env = ? AND key = ? AND version = ?",
            (scope.namespace, scope.env, key, version),
        )
        return _row_to_version(rows[0]) if rows else None

    def load_envelope(self, version: Version) -> bytes:
        rows = self._query(
            "SELECT envelope FROM versions WHERE namespace = ? AND env = ? AND key = ? AND version = ?",
            (version.scope.namespace, version.scope.env, version.key, version.version),
        )
        if not rows or rows[0][0] is None:
            raise Unavailable("the stored value is missing")
        return rows[0][0]

    def history(self, scope: Scope, key: str, limit: int, before: int | None) -> list[Version]:
        rows = self._query(
            f"SELECT {VERSION_COLUMNS} FROM versions v WHERE namespace = ? AND env = ? AND key = ? AND version < ? "
            "ORDER BY version DESC LIMIT ?",
            (scope.namespace, scope.env, key, before if before is not None else 2**62, limit),
        )
        return [_row_to_version(row) for row in rows]

    def list_latest(self, scope: Scope, prefix: str) -> list[Version]:
        where = "h.namespace = ? AND h.env = ? AND h.live = 1"
        params: tuple = (scope.namespace, scope.env)
        if prefix:
            # One range of the primary key, [prefix, prefix + "/"), walked in key order (no sort for ORDER BY):
            # it holds the prefix itself, the keys below it, and siblings such as "prefix-x", filtered out here.
            where += " AND h.key >= ? AND h.key < ? AND (h.key = ? OR h.key > ?)"
            params += (prefix, prefix + BELOW_UPPER_BOUND, prefix, prefix + ".")
        rows = self._query(
            f"SELECT {META_COLUMNS} FROM heads h JOIN versions v ON v.namespace = h.namespace "
            "AND v.env = h.env AND v.key = h.key AND v.version = h.version "
            f"WHERE {where} ORDER BY h.key",
            params,
        )
        return [_row_to_version(row) for row in rows]

    def current_revision(self) -> int:
        rows = self._query("SELECT value FROM counters WHERE name = 'revision'")
        return rows[0][0] if rows else 0

    def list_namespaces(self, limit: int = 1000) -> list[str]:
        """The namespaces holding a key (in any env, deleted or not), in order: a skip-scan of the heads' primary
        key, one seek per namespace whatever the number of keys (the console's namespace picker)."""
        rows = self._query(
            "WITH RECURSIVE ns(name) AS (SELECT MIN(namespace) FROM heads UNION ALL "
            "SELECT (SELECT MIN(namespace) FROM heads WHERE namespace > ns.name) FROM ns WHERE ns.name IS NOT NULL) "
            "SELECT name FROM ns WHERE name IS NOT NULL LIMIT ?",
            (limit,),
        )
        return [row[0] for row in rows]

    def read_stamp(self) -> tuple[int, int]:
        """(revision, environments version): changes whenever anything a read resolves could have changed,
        whichever process committed it. Checked before every cached answer, so it is made cheap: first the WAL-index
        header (:class:`WalIndexHeader`, a memory read), then, only when that moved, the file's ``data_version`` on
        a connection of this thread's own (which changes when any other connection, in any process, commits), and
        only when that moved too, the counters themselves."""
        local = self._stamp_local
        header = self._wal_header.read() if self._wal_header is not None else None
        if header is not None and header == getattr(local, "header", None):
            return local.stamp  # type: ignore[no-any-return]
        connection = getattr(local, "connection", None)
        with translated_errors():
            if connection is None:
                connection = local.connection = connect(self.path)
                local.version = None
                with self._readers_lock:
                    self._stamp_connections.append(connection)
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            if version != local.version:
                revision = envs = 0
                for name, value in connection.execute("SELECT name, value FROM counters WHERE name IN ('envs', 'revision')"):
                    if name == "revision":
                        revision = value
                    else:
                        envs = value
                local.version, local.stamp = version, (revision, envs)
            # Both marks read before the counters: a commit landing in between moves them again, and the next call
            # reads anew.
            local.header = header
            return local.stamp  # type: ignore[no-any-return]

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        rows = self._query(
            "SELECT revision, namespace, env, key, version, action, secret FROM changes "
            "WHERE revision > ? ORDER BY revision LIMIT ?",
            (revision, limit),
        )
        return [Change(r[0], Scope(r[1], r[2]), r[3], r[4], Action(r[5]), bool(r[6])) for r in rows]

    def oldest_retained_revision(self) -> int:
        rows = self._query("SELECT MIN(revision) FROM changes")
        if rows and rows[0][0] is not None:
            return rows[0][0]
        return self.current_revision() + 1

    # ------------------------------------------------------------------ the commit
    def commit(self, version: Version, audit: AuditEntry | None = None, guard: IdempotencyGuard | None = None) -> Version:
        """One atomic, durable step: the version, the head, the revision, the change-log row and (when given)
        the change's audit record, linked into the audit chain by the appender the access store attached."""
        (committed,) = self._commit_all([version], [audit], guard)
        return committed

    def commit_many(self, versions: list[Version], audits: list[AuditEntry | None] | None = None) -> list[Version]:
        """Several versions (of different keys) in ONE atomic, durable transaction: each is checked as
        :meth:`commit` checks it (its head, key conflicts, the versions before it in the list included) and takes
        its own revision, in list order; the first check that fails raises and nothing at all is stored.
        ``audits[i]`` (when given) is ``versions[i]``'s record, appended in the same transaction.

        What ``POST /config/promote`` uses to be all-or-nothing.
        """
        return self._commit_all(versions, audits if audits is not None else [None] * len(versions), None)

    def _commit_all(self, versions: list[Version], audits: list[AuditEntry | None], guard: IdempotencyGuard | None) -> list[Version]:
        if len(audits) != len(versions):
            raise ValueError("one audit entry (or None) per version")
        if any(entry is not None for entry in audits) and self.audit_appender is None:
            raise Unavailable("this store has no audit log to record the change in")
        if guard is not None and self.idempotency_marker is None:
            raise Unavailable("this store keeps no Idempotency-Key claims")
        committed: list[Version] = []
        with self.transaction() as db:
            for version in versions:
                committed.append(self._apply(db, version))
            records = [entry for entry in audits if entry is not None]
            if records and self.audit_appender is not None:
                self.audit_appender(db, records)
            if guard is not None and self.idempotency_marker is not None:
                (done,) = committed  # commit() alone passes a guard: its change names the one version
                self.idempotency_marker(db, guard, change_of(done), done.updated_at + RETENTION)
        return committed

    def _apply(self, db: sqlite3.Connection, version: Version) -> Version:
        """Inside a transaction: check and store one version (head, key conflicts, revision, change log)."""
        scope = version.scope
        head = db.execute(
            "SELECT version FROM heads WHERE namespace = ? AND env = ? AND key = ?",
            (scope.namespace, scope.env, version.key),
        ).fetchone()
        current = head[0] if head else 0
        if current != version.version - 1:
            raise VersionConflict("the key changed since it was read", current)
        if not version.deleted:
            self._check_key_conflict(db, scope, version.key)
        revision = self._next_revision(db)
        db.execute(
            "INSERT INTO versions (namespace, env, key, version, action, secret, updated_at, updated_by, "
            "revision, rolled_back_from, envelope, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                scope.namespace, scope.env, version.key, version.version, version.action.value,
                int(version.secret), version.updated_at.isoformat(), version.updated_by, revision,
                version.rolled_back_from, version.envelope, version.key_id,
            ),
        )
        db.execute(
            "INSERT INTO heads (namespace, env, key, version, live) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, env, key) DO UPDATE SET version = excluded.version, live = excluded.live",
            (scope.namespace, scope.env, version.key, version.version, int(not version.deleted)),
        )
        db.execute(
            "INSERT INTO changes (revision, namespace, env, key, version, action, secret) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (revision, scope.namespace, scope.env, version.key, version.version, version.action.value, int(version.secret)),
        )
        if revision % self._compaction_every == 0 and revision > self.change_log_retention:
            db.execute("DELETE FROM changes WHERE revision <= ?", (revision - self.change_log_retention,))
        return replace(version, revision=revision)

    @staticmethod
    def _check_key_conflict(db: sqlite3.Connection, scope: Scope, key: str) -> None:
        above = ancestors(key)
        if above:
            placeholders = ",".join("?" * len(above))
            row = db.execute(
                f"SELECT key FROM heads WHERE namespace = ? AND env = ? AND live = 1 AND key IN ({placeholders}) LIMIT 1",
                (scope.namespace, scope.env, *above),
            ).fetchone()
            if row:
                raise KeyConflict(f"'{row[0]}' holds a value, so no key can be below it")
        row = db.execute(
            "SELECT key FROM heads WHERE namespace = ? AND env = ? AND live = 1 AND key > ? AND key < ? LIMIT 1",
            (scope.namespace, scope.env, key + ".", key + BELOW_UPPER_BOUND),
        ).fetchone()
        if row:
            raise KeyConflict("keys exist below this key, so it cannot hold a value")

    @staticmethod
    def _next_revision(db: sqlite3.Connection) -> int:
        row = db.execute(
            "INSERT INTO counters (name, value) VALUES ('revision', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
        ).fetchone()
        return row[0]

    # ------------------------------------------------------------------ environments and meta
    def list_envs(self) -> list[Environment]:
        return [Environment(name, parent) for name, parent in self._query("SELECT name, parent FROM envs ORDER BY name")]

    def put_env(self, env: Environment) -> bool:
        with self.transaction() as db:
            existed = db.execute("SELECT 1 FROM envs WHERE name = ?", (env.name,)).fetchone() is not None
            db.execute(
                "INSERT INTO envs (name, parent) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET parent = excluded.parent",
                (env.name, env.parent),
            )
            # Part of the read stamp: every process's read cache sees the new inheritance at once.
            db.execute("INSERT INTO counters (name, value) VALUES ('envs', 1) ON CONFLICT (name) DO UPDATE SET value = value + 1")
        return not existed

    def get_meta(self, name: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def put_meta(self, name: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # ------------------------------------------------------------------ key rotation support
    def versions_by_key_id(self) -> dict[str, int]:
        return {k or "": n for k, n in self._query("SELECT key_id, COUNT(*) FROM versions WHERE envelope IS NOT NULL GROUP BY key_id")}

    def iter_sealed_versions(self, after: tuple[str, str, str, int] | None, limit: int) -> list[Version]:
        # Row-value comparison walks the primary key in order: each page is one index range scan.
        where = "envelope IS NOT NULL"
        params: tuple[object, ...] = ()
        if after is not None:
            where += " AND (namespace, env, key, version) > (?, ?, ?, ?)"
            params = tuple(after)
        rows = self._query(
            f"SELECT {VERSION_COLUMNS} FROM versions v WHERE {where} ORDER BY namespace, env, key, version LIMIT ?",
            (*params, limit),
        )
        return [_row_to_version(row) for row in rows]

    def replace_envelope(self, version: Version, old: bytes, new: bytes, new_key_id: str) -> bool:
        # Conditional on the old envelope: a concurrent rewrap (or anything else) that got there first wins.
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE versions SET envelope = ?, key_id = ? "
                "WHERE namespace = ? AND env = ? AND key = ? AND version = ? AND envelope = ?",
                (new, new_key_id, version.scope.namespace, version.scope.env, version.key, version.version, old),
            )
            return cursor.rowcount == 1
