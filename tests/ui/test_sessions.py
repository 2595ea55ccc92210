"""Console sessions: the store port (SQLite and memory adapters alike) and the rules of ``ConsoleSessions``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tessera.core.access_service import AccessService
from tessera.core.backends.aws.sessions import DynamoSessionStore
from tessera.core.backends.factory import build
from tessera.core.backends.memory_sessions import MemorySessionStore
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.backends.sqlite_sessions import SQLiteSessionStore
from tessera.core.errors import Unauthenticated
from tessera.core.model import ROOT, utcnow
from tessera.core.sessions import ConsoleSessions, SessionRecord, csrf_matches, csrf_token, session_digest
from tessera.core.settings import Settings
from tests.aws.support import moto_target

ROOT_TOKEN = "tsr_sessions-root-token-0123456789abcdef"


@pytest.fixture(params=["sqlite", "memory", "aws"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemorySessionStore()
        return
    if request.param == "aws":
        with moto_target() as target:
            yield DynamoSessionStore(target.store().db)
        return
    sqlite = SQLiteStore(tmp_path / "tessera.db")
    yield SQLiteSessionStore(sqlite)
    sqlite.close()


def record(name: str, expires_in: float) -> SessionRecord:
    now = utcnow()
    return SessionRecord(session_digest(name), "tok_1", "h" * 64, "svc", now, now + timedelta(seconds=expires_in))


def test_store_keeps_gets_and_deletes_sessions(store):
    kept = record("a", 60)
    store.create_session(kept, utcnow())
    assert store.get_session(kept.id_hash) == kept
    store.delete_session(kept.id_hash)
    assert store.get_session(kept.id_hash) is None
    store.delete_session(kept.id_hash)  # twice is harmless


def test_store_drops_expired_sessions_when_one_is_created(store):
    if isinstance(store, DynamoSessionStore):
        pytest.skip("DynamoDB sweeps ended sessions by TTL (ConsoleSessions refuses them when presented)")
    old = record("old", -1)
    store.create_session(old, old.created_at - timedelta(seconds=10))
    store.create_session(record("new", 60), utcnow())
    assert store.get_session(old.id_hash) is None


def test_sqlite_sessions_are_shared_by_every_process_on_the_file(tmp_path):
    first, second = SQLiteStore(tmp_path / "tessera.db"), SQLiteStore(tmp_path / "tessera.db")
    try:
        kept = record("shared", 60)
        SQLiteSessionStore(first).create_session(kept, utcnow())
        assert SQLiteSessionStore(second).get_session(kept.id_hash) == kept
        SQLiteSessionStore(second).delete_session(kept.id_hash)
        assert SQLiteSessionStore(first).get_session(kept.id_hash) is None
    finally:
        first.close()
        second.close()


@pytest.fixture
def container(tmp_path):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    yield container
    container.close()


def test_a_session_stores_no_token_or_cookie_string(container):
    sessions = ConsoleSessions(container.sessions, container.authenticator)
    cookie, principal, _ = sessions.sign_in(ROOT_TOKEN)
    assert principal == ROOT
    dump = "\n".join(str(row) for row in container.store._query("SELECT * FROM ui_sessions"))
    assert cookie not in dump and ROOT_TOKEN not in dump
    assert sessions.resolve(cookie) == ROOT


def test_a_session_ends_with_its_token_and_at_sign_out(container):
    access: AccessService = container.access.access
    token, tok = access.create_token(ROOT, "console-user", [], 3600)
    sessions = ConsoleSessions(container.sessions, container.authenticator)
    cookie, principal, ends = sessions.sign_in(token)
    assert principal.id == tok.id and ends <= tok.expires_at
    access.revoke_token(ROOT, tok.id)
    with pytest.raises(Unauthenticated):
        sessions.resolve(cookie)
    assert container.sessions.get_session(session_digest(cookie)) is None  # removed, not just refused
    cookie, _, _ = sessions.sign_in(ROOT_TOKEN)
    sessions.sign_out(cookie)
    with pytest.raises(Unauthenticated):
        sessions.resolve(cookie)


def test_a_session_never_outlives_its_token(container):
    access: AccessService = container.access.access
    token, tok = access.create_token(ROOT, "short-lived", [], 2)
    sessions = ConsoleSessions(container.sessions, container.authenticator)
    cookie, _, ends = sessions.sign_in(token)
    assert ends == tok.expires_at
    later = ConsoleSessions(container.sessions, container.authenticator, clock=lambda: utcnow() + timedelta(seconds=5))
    with pytest.raises(Unauthenticated):
        later.resolve(cookie)


def test_unknown_or_absurd_cookies_are_refused(container):
    sessions = ConsoleSessions(container.sessions, container.authenticator)
    for cookie in (None, "", "x" * 10_000, "no-such-session"):
        with pytest.raises(Unauthenticated):
            sessions.resolve(cookie)
    with pytest.raises(Unauthenticated):
        sessions.sign_in("tsr_wrong-token-0123456789")


def test_csrf_token_is_bound_to_the_session():
    assert csrf_matches("cookie-a", csrf_token("cookie-a"))
    assert not csrf_matches("cookie-b", csrf_token("cookie-a"))
    assert not csrf_matches("cookie-a", None) and not csrf_matches(None, "x")
