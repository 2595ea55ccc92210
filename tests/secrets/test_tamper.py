"""Tampering with stored envelopes: a flipped byte, or an envelope swapped between keys or versions, is
refused with ``500 integrity_error`` in the contract's error shape — no partial plaintext, a log line that
names the failure but not the value, and an audit entry once the audit log is wired to HTTP."""

from __future__ import annotations

import logging
import secrets
import sqlite3

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.secrets.helpers import find_leaks

ROOT_TOKEN = "tsr_tamper-root-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ROOT_TOKEN}"}


@pytest.fixture
def seeded(tmp_path):
    """A data dir with db.password v1 and v2 (secret), db.user v1 and app.name v1 (plain); returns the canaries."""
    data = tmp_path / "data"
    canaries = {name: f"canary-{name}-{secrets.token_hex(8)}" for name in ("pw1", "pw2", "user", "app")}
    container = build(Settings(data_dir=data, root_token=ROOT_TOKEN))
    with TestClient(create_app(container), headers=AUTH) as client:
        assert client.put("/config/db.password", json={"value": canaries["pw1"], "secret": True}).status_code == 201
        assert client.put("/config/db.password", json={"value": canaries["pw2"]}).status_code == 200
        assert client.put("/config/db.user", json={"value": canaries["user"], "secret": True}).status_code == 201
        assert client.put("/config/app.name", json={"value": canaries["app"]}).status_code == 201
    container.close()
    return data, canaries


def edit_rows(data, sql: str, params: tuple = ()) -> None:
    with sqlite3.connect(data / "tessera.db") as db:
        assert db.execute(sql, params).rowcount == 1


def envelope_of(data, key: str, version: int) -> tuple[bytes, str]:
    with sqlite3.connect(data / "tessera.db") as db:
        return db.execute("SELECT envelope, key_id FROM versions WHERE key = ? AND version = ?", (key, version)).fetchone()


def set_envelope(data, key: str, version: int, envelope: bytes, key_id: str) -> None:
    edit_rows(data, "UPDATE versions SET envelope = ?, key_id = ? WHERE key = ? AND version = ?", (envelope, key_id, key, version))


def flip(data, key: str, version: int, offset: int) -> None:
    envelope, key_id = envelope_of(data, key, version)
    tampered = bytearray(envelope)
    tampered[offset] ^= 0x01
    set_envelope(data, key, version, bytes(tampered), key_id)


def fresh_client(data) -> tuple[TestClient, object]:
    container = build(Settings(data_dir=data, root_token=ROOT_TOKEN))  # a new process: nothing cached
    return TestClient(create_app(container), headers=AUTH), container


def assert_integrity_error(response, canaries) -> None:
    assert response.status_code == 500, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "integrity_error"
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert isinstance(body["error"]["message"], str)
    for canary in canaries.values():
        assert not find_leaks(response.content, canary)


def assert_logged_without_values(caplog, canaries) -> None:
    assert any("integrity_error" in record.getMessage() for record in caplog.records)
    for canary in canaries.values():
        assert canary not in caplog.text


def assert_audited(client, key: str) -> None:
    probe = client.get("/audit", params={"key": key})
    assert probe.status_code == 200, probe.text
    entries = [e for e in probe.json()["entries"] if e.get("key") == key]
    assert any(e["outcome"] == "error" and e["status"] == 500 for e in entries), entries


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag", "wrapped key", "key id"])
def test_a_flipped_byte_is_refused(seeded, caplog, where):
    data, canaries = seeded
    envelope, _ = envelope_of(data, "db.password", 2)
    key_id_len = envelope[4]
    offsets = {
        "key id": 5,
        "wrapped key": 5 + key_id_len + 2 + 3,
        "nonce": len(envelope) - 16 - len(f'"{canaries["pw2"]}"') - 5,
        "ciphertext": len(envelope) - 20,
        "tag": len(envelope) - 1,
    }
    flip(data, "db.password", 2, offsets[where])
    client, container = fresh_client(data)
    with caplog.at_level(logging.INFO), client:
        assert_integrity_error(client.get("/config/db.password"), canaries)
        assert_integrity_error(client.get("/config/db.password", params={"version": 2}), canaries)
        # No partial plaintext: the subtree and the export fail whole rather than leave a leaf out silently.
        assert_integrity_error(client.get("/config/db"), canaries)
        assert_integrity_error(client.get("/config/export"), canaries)
        # Untouched versions and keys still read.
        assert client.get("/config/db.password", params={"version": 1}).json()["value"] == canaries["pw1"]
        assert client.get("/config/db.user").json()["value"] == canaries["user"]
        assert_logged_without_values(caplog, canaries)
        assert_audited(client, "db.password")
    container.close()


def test_an_envelope_swapped_between_two_keys_is_refused(seeded, caplog):
    data, canaries = seeded
    set_envelope(data, "db.password", 2, *envelope_of(data, "db.user", 1))
    client, container = fresh_client(data)
    with caplog.at_level(logging.INFO), client:
        assert_integrity_error(client.get("/config/db.password"), canaries)
        assert client.get("/config/db.user").json()["value"] == canaries["user"]
        assert_logged_without_values(caplog, canaries)
        assert_audited(client, "db.password")
    container.close()


def test_an_envelope_swapped_between_two_versions_is_refused(seeded, caplog):
    data, canaries = seeded
    set_envelope(data, "db.password", 2, *envelope_of(data, "db.password", 1))
    client, container = fresh_client(data)
    with caplog.at_level(logging.INFO), client:
        assert_integrity_error(client.get("/config/db.password"), canaries)
        assert_integrity_error(client.get("/config/db.password", params={"version": 2}), canaries)
        assert client.get("/config/db.password", params={"version": 1}).json()["value"] == canaries["pw1"]
        assert_logged_without_values(caplog, canaries)
    container.close()


def test_an_envelope_swapped_between_namespaces_is_refused(seeded, caplog):
    data, canaries = seeded
    client, container = fresh_client(data)
    with client:
        assert client.put("/config/db.password", params={"namespace": "other"}, json={"value": "x"}).status_code == 201
    container.close()
    envelope, key_id = envelope_of(data, "app.name", 1)
    edit_rows(
        data,
        "UPDATE versions SET envelope = ?, key_id = ? WHERE namespace = 'other' AND key = 'db.password'",
        (envelope_of(data, "db.password", 2)[0], key_id),
    )
    client, container = fresh_client(data)
    with caplog.at_level(logging.INFO), client:
        assert_integrity_error(client.get("/config/db.password", params={"namespace": "other"}), canaries)
    container.close()


def test_history_of_a_tampered_plain_key_fails_whole(seeded, caplog):
    data, canaries = seeded
    flip(data, "app.name", 1, -1)
    client, container = fresh_client(data)
    with caplog.at_level(logging.INFO), client:
        assert_integrity_error(client.get("/config/history/app.name"), canaries)
        # A secret key's history never decrypts anything, so tampering does not even come up.
        flip_target = client.get("/config/history/db.user")
        assert flip_target.status_code == 200 and "value" not in flip_target.json()["versions"][0]
        assert_logged_without_values(caplog, canaries)
    container.close()


# ------------------------------------------------------------------------------ every backend, at the service
@pytest.mark.parametrize("where", ["key id", "wrapped key", "nonce", "ciphertext", "tag"])
def test_service_refuses_a_flipped_byte_on_every_backend(backend, where):
    from tessera.core import crypto
    from tessera.core.errors import IntegrityError
    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    store, keys = backend
    ConfigService(store, keys).put(ROOT, Scope(), "db.password", "canary-value", secret=True)
    version = store.get_version(Scope(), "db.password", 1)
    envelope = store.load_envelope(version)
    parts = crypto.parse_envelope(envelope)
    start_of_wrapped = 5 + len(parts.key_id) + 2
    offset = {
        "key id": 5 + len(parts.key_id) // 2,
        "wrapped key": start_of_wrapped + len(parts.wrapped) // 2,
        "nonce": start_of_wrapped + len(parts.wrapped) + 6,
        "ciphertext": len(envelope) - 20,
        "tag": len(envelope) - 1,
    }[where]
    tampered = bytearray(envelope)
    tampered[offset] ^= 0x01
    assert store.replace_envelope(version, envelope, bytes(tampered), version.key_id)
    fresh = ConfigService(store, crypto.CachingKeyService(getattr(keys, "inner", keys)))
    with pytest.raises(IntegrityError):
        fresh.get(ROOT, Scope(), "db.password")


def test_service_refuses_envelopes_swapped_between_keys_and_versions_on_every_backend(backend):
    from tessera.core import crypto
    from tessera.core.errors import IntegrityError
    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    store, keys = backend
    service = ConfigService(store, keys)
    service.put(ROOT, Scope(), "a", "value-a1", secret=True)
    service.put(ROOT, Scope(), "a", "value-a2")
    service.put(ROOT, Scope(), "b", "value-b1", secret=True)
    a1, a2, b1 = (store.get_version(Scope(), k, v) for k, v in (("a", 1), ("a", 2), ("b", 1)))
    env_a1, env_a2, env_b1 = (store.load_envelope(v) for v in (a1, a2, b1))
    assert store.replace_envelope(a2, env_a2, env_a1, a1.key_id)  # a v1's envelope as a v2
    assert store.replace_envelope(b1, env_b1, env_a1, a1.key_id)  # a's envelope as b's
    fresh = ConfigService(store, crypto.CachingKeyService(getattr(keys, "inner", keys)))
    for key, number in (("a", 2), ("b", 1)):
        with pytest.raises(IntegrityError):
            fresh.get(ROOT, Scope(), key, number)
    assert fresh.get(ROOT, Scope(), "a", 1).value == "value-a1"
