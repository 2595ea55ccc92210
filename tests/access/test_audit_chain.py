"""The audit hash chain on the SQLite backend: verify catches an edited, a removed and an inserted entry
(renumbered or not, in the middle or at the tail), several writers keep one unforked chain, and the CLI."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tessera.client.cli import app as cli
from tessera.core.access_model import AuditEntry
from tessera.core.audit import AuditLog, entry_hash, verify
from tessera.core.backends.memory_access import MemoryAccessStore
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.backends.sqlite_access import SQLiteAccessStore


def entry(i: int, **fields) -> AuditEntry:
    base = dict(ts=datetime(2026, 11, 29, 10, 0, i % 60, i, tzinfo=UTC), request_id=f"r{i}", action="config.read",
                outcome="allowed", status=200, service="auth-svc", token_id="tok_1", namespace="default", env="default",
                key=f"auth.k{i}", version=1)  # fmt: skip
    base.update(fields)
    return AuditEntry(**base)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "tessera.db"
    store = SQLiteStore(path)
    access = SQLiteAccessStore(store)
    access.append("main", [entry(i) for i in range(1, 11)])
    yield path, access
    store.close()


def tamper(path, *statements):
    connection = sqlite3.connect(path)
    with connection:
        for statement, params in statements:
            connection.execute(statement, params)
    connection.close()


def row(path, seq):
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    found = dict(connection.execute("SELECT * FROM audit WHERE chain = 'main' AND seq = ?", (seq,)).fetchone())
    connection.close()
    return found


def insert_row(path, values):
    columns = ", ".join(values)
    tamper(path, (f"INSERT INTO audit ({columns}) VALUES ({', '.join('?' * len(values))})", tuple(values.values())))


def test_intact_log_verifies(db):
    _, access = db
    report = verify(access)
    assert report.ok and report.entries == 10 and report.chains["main"][0] == 10


def test_edited_entry(db):
    path, access = db
    tamper(path, ("UPDATE audit SET outcome = 'allowed', status = 200, service = 'other' WHERE seq = 4", ()))
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("edited", 4)


def test_edited_and_rehashed_entry_is_caught_at_the_next_link(db):
    path, access = db
    edited = row(path, 4)
    fields = {k: edited[k] for k in ("chain", "seq", "prev_hash", "request_id", "service", "token_id", "action", "namespace",
                                      "env", "key", "version", "outcome", "status", "target", "client", "method", "path")}  # fmt: skip
    forged = AuditEntry(ts=datetime.fromisoformat(edited["ts"]), **{**fields, "service": "someone-else"})
    tamper(path, ("UPDATE audit SET service = ?, hash = ? WHERE seq = 4", ("someone-else", entry_hash(forged))))
    problem = verify(access).problem
    assert problem is not None and problem.seq == 5


def test_removed_entry(db):
    path, access = db
    tamper(path, ("DELETE FROM audit WHERE seq = 6", ()))
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("removed", 6)


def test_removed_entry_with_renumbering(db):
    path, access = db
    tamper(path, ("DELETE FROM audit WHERE seq = 6", ()), ("UPDATE audit SET seq = seq - 1 WHERE seq > 6", ()),
           ("UPDATE audit_heads SET seq = seq - 1", ()))  # fmt: skip
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("removed", 6)


def test_removed_tail(db):
    path, access = db
    tamper(path, ("DELETE FROM audit WHERE seq >= 9", ()))
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("removed", 9)


def test_inserted_entry_with_renumbering(db):
    path, access = db
    before = row(path, 3)
    tamper(path, ("UPDATE audit SET seq = seq + 1000 WHERE seq > 3", ()), ("UPDATE audit SET seq = seq - 999 WHERE seq > 1000", ()))
    forged = AuditEntry(ts=datetime.fromisoformat(before["ts"]), request_id="forged", action="config.read", outcome="allowed",
                        status=200, service="auth-svc", key="billing.stripe_key", chain="main", seq=4, prev_hash=before["hash"])  # fmt: skip
    forged = AuditEntry(**{**forged.__dict__, "hash": entry_hash(forged)})
    insert_row(path, {"chain": "main", "seq": 4, "ts": before["ts"], "request_id": "forged", "service": "auth-svc",
                      "action": "config.read", "key": "billing.stripe_key", "outcome": "allowed", "status": 200,
                      "prev_hash": forged.prev_hash, "hash": forged.hash})  # fmt: skip
    tamper(path, ("UPDATE audit_heads SET seq = seq + 1", ()))
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("inserted", 4)


def test_inserted_at_the_tail(db):
    path, access = db
    last = row(path, 10)
    forged = AuditEntry(ts=datetime.fromisoformat(last["ts"]), request_id="forged", action="config.read", outcome="allowed",
                        status=200, chain="main", seq=11, prev_hash=last["hash"])  # fmt: skip
    insert_row(path, {"chain": "main", "seq": 11, "ts": last["ts"], "request_id": "forged", "action": "config.read",
                      "outcome": "allowed", "status": 200, "prev_hash": last["hash"], "hash": entry_hash(forged)})  # fmt: skip
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("inserted", 11)


def test_several_writers_on_one_file_keep_one_chain(tmp_path):
    """Two stores on the same file (as two server processes would be) and several threads each."""
    path = tmp_path / "tessera.db"
    stores = [SQLiteStore(path), SQLiteStore(path)]
    logs = [AuditLog(SQLiteAccessStore(store)) for store in stores]

    def write(log, offset):
        futures = [log.submit(entry(offset + i)) for i in range(100)]
        for future in futures:
            future.result(10)

    threads = [threading.Thread(target=write, args=(logs[i % 2], i * 1000)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = verify(SQLiteAccessStore(stores[0]))
    assert report.ok and report.entries == 600
    assert sum(log.batches for log in logs) < 600  # grouped: fewer transactions than entries
    for log in logs:
        log.close()
    for store in stores:
        store.close()


def test_memory_store_verifies_too():
    access = MemoryAccessStore()
    access.append("main", [entry(i) for i in range(1, 6)])
    assert verify(access).ok
    access.entries["main"].pop(2)
    assert verify(access).problem.seq == 3


def test_cli_verify(db):
    path, _ = db
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", "--data-dir", str(path.parent), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    tamper(path, ("DELETE FROM audit WHERE seq = 2", ()))
    bad = runner.invoke(cli, ["audit", "verify", "--data-dir", str(path.parent)])
    assert bad.exit_code == 7  # integrity
    assert "main:2" in bad.output and "removed" in bad.output
    as_json = json.loads(runner.invoke(cli, ["audit", "verify", "--data-dir", str(path.parent), "--json"]).output)
    assert as_json["problem"]["id"] == "main:2" and as_json["problem"]["kind"] == "removed"


def test_anchor_catches_a_consistent_rewrite(db, tmp_path):
    """Someone rewrites entry 4 and re-hashes it, every entry after it and the head: the chain alone is
    consistent again, but an anchor kept from an earlier ``verify --json`` is not in the log any more."""
    path, access = db
    runner = CliRunner()
    anchor = tmp_path / "anchor.json"
    anchor.write_text(runner.invoke(cli, ["audit", "verify", "--data-dir", str(path.parent), "--json"]).output)
    entries = access.chain_entries("main", 0, 100)
    prev = entries[2].hash
    connection = sqlite3.connect(path)
    with connection:
        for stored in entries[3:]:
            changed = {"service": "someone-else"} if stored.seq == 4 else {}
            forged = AuditEntry(**{**stored.__dict__, **changed, "prev_hash": prev, "hash": ""})
            digest = entry_hash(forged)
            connection.execute("UPDATE audit SET service = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                               (forged.service, prev, digest, stored.seq))  # fmt: skip
            prev = digest
        connection.execute("UPDATE audit_heads SET hash = ?", (prev,))
    connection.close()
    assert verify(access).ok  # consistent on its own: the limit documented in docs/audit.md
    result = runner.invoke(cli, ["audit", "verify", "--data-dir", str(path.parent), "--json", "--anchor", str(anchor)])
    assert result.exit_code == 7
    problem = json.loads(result.output)["problem"]
    assert (problem["kind"], problem["id"]) == ("edited", "main:10")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40))
def test_the_canonical_hash_is_the_standard_librarys_json_whatever_the_text(any_text, ascii_text):
    """The hash is computed through orjson when it writes the same bytes; every record must hash as the
    standard library's compact ASCII JSON always did (chains written before keep verifying)."""
    import hashlib
    import json as stdlib_json
    from dataclasses import replace

    from tessera.core.audit import _ENTRY_FIELDS, GENESIS, entry_hash, link
    from tessera.core.model import format_time

    for text in (any_text, ascii_text):
        linked = link("main", [replace(entry(1), key=text, path=text, target=text)], 0, GENESIS)[0]
        fields = [linked.chain, linked.seq, linked.prev_hash, format_time(linked.ts), *(getattr(linked, n) for n in _ENTRY_FIELDS)]
        expected = hashlib.sha256(stdlib_json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()
        assert linked.hash == entry_hash(linked) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=30),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.sampled_from([UTC, None])),
    st.booleans(),
    st.sampled_from(["response", "request"]),
)
def test_the_request_logs_one_pass_append_hashes_and_writes_what_link_and_the_table_row_would(text, moment, whole_second, phase):
    """``_linked_lines`` (the event loop's append) formats each time once and reads each entry's fields once: its
    records must be those of ``link``, and its lines the table's rows, for any text, any year, a whole second
    (where the hash's time text has no fraction) and a time in another zone."""
    from datetime import timedelta, timezone

    from tessera.core.audit import GENESIS, link
    from tessera.core.backends.sqlite_access import _linked_lines, _stamp

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone(timedelta(hours=-5)))
    if whole_second:
        moment = moment.replace(microsecond=0)
    made = [AuditEntry.response(moment, "r1", "config.read", "allowed", 200, text, "tok_1", "default", "default", text, 3, None, "127.0.0.1", "GET", text)]
    made.append(AuditEntry(ts=moment, request_id="r2", action="config.write", outcome="attempt", status=0, key=text, phase=phase))
    assert made[0] == AuditEntry(ts=moment, request_id="r1", action="config.read", outcome="allowed", status=200, service=text, token_id="tok_1",
                                 namespace="default", env="default", key=text, version=3, client="127.0.0.1", method="GET", path=text)  # fmt: skip
    linked, data = _linked_lines("requests-0", made, 7, GENESIS)
    assert linked == link("requests-0", made, 7, GENESIS)
    rows = [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert data.endswith(b"\n") and len(rows) == 2
    for e, line in zip(linked, rows, strict=True):
        assert line == [e.chain, e.seq, _stamp(e.ts), e.request_id, e.service, e.token_id, e.action, e.namespace, e.env, e.key,
                        e.version, e.outcome, e.status, e.target, e.client, e.method, e.path, e.prev_hash, e.hash,
                        None if e.phase == "response" else e.phase]  # fmt: skip
