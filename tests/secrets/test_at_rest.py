"""A secret written and read back by the root token is found nowhere in plaintext in the raw storage."""

from __future__ import annotations

import secrets

from tessera.core.model import ROOT, Scope
from tessera.core.service import ConfigService
from tests.secrets.helpers import find_leaks, leak_forms, raw_storage, sqlite_files


def test_round_trip_on_every_backend(backend):
    store, keys = backend
    service = ConfigService(store, keys)
    scope = Scope("payments", "default")
    values = ["text", 42, 3.5, True, None, ["a", 1, {"x": None}], "ünïcødé ✓", "x" * 60_000]
    for i, value in enumerate(values):
        service.put(ROOT, scope, f"v.k{i}", value, secret=bool(i % 2))
    fresh = ConfigService(store, keys)  # no value cache
    for i, value in enumerate(values):
        assert fresh.get(ROOT, scope, f"v.k{i}").value == value


def test_leak_forms_catch_what_they_should():
    canary = "canary-" + secrets.token_hex(8)
    assert find_leaks(b"..." + canary.encode() + b"...", canary)
    import base64

    assert find_leaks(base64.b64encode(b"xx" + canary.encode() + b"yy"), canary)
    assert not find_leaks(b"nothing here", canary)
    assert len(leak_forms(canary)) >= 6


def test_no_plaintext_in_the_sqlite_files_incl_wal(tmp_path):
    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings

    data = tmp_path / "data"
    container = build(Settings(data_dir=data))
    canaries = ["canary-" + secrets.token_hex(12) for _ in range(3)]
    service = container.service
    service.put(ROOT, Scope(), "db.password", canaries[0], secret=True)
    service.put(ROOT, Scope(), "db.password", canaries[1])  # a second version
    service.import_values(ROOT, Scope(), {"api": {"token": canaries[2]}}, secrets=["api.token"])
    service.rollback(ROOT, Scope(), "db.password", 1)
    service.delete(ROOT, Scope(), "db.password")
    assert service.get(ROOT, Scope(), "db.password", version=1).value == canaries[0]
    assert service.get(ROOT, Scope(), "api.token").value == canaries[2]

    files = sqlite_files(data)
    assert "tessera.db-wal" in files  # the WAL is where fresh writes live: it must be checked too
    for name, blob in files.items():
        for canary in canaries:
            assert not find_leaks(blob, canary), (name, canary)
    container.close()
    for name, blob in {**sqlite_files(data), "keyring.json": (data / "keyring.json").read_bytes()}.items():
        for canary in canaries:
            assert not find_leaks(blob, canary), (name, canary)


def test_secret_round_trip_and_no_plaintext_in_raw_storage_on_every_backend(backend):
    """Written and read back by the root token; then every stored byte (SQLite file + WAL, or every S3
    object version and DynamoDB item) is searched for the value in any form."""
    store, keys = backend
    service = ConfigService(store, keys)
    canary = "canary-" + secrets.token_hex(12)
    plain_marker = "plain-" + secrets.token_hex(12)
    scope = Scope("payments", "default")
    service.put(ROOT, scope, "db.password", canary, secret=True)
    service.put(ROOT, scope, "db.password", canary + "-v2")
    service.put(ROOT, scope, "db.host", plain_marker)  # plain config is sealed too
    service.rollback(ROOT, scope, "db.password", 1)
    fresh = ConfigService(store, keys)
    assert fresh.get(ROOT, scope, "db.password").value == canary
    assert fresh.get(ROOT, scope, "db.password", version=2).value == canary + "-v2"
    blobs = raw_storage(store)
    assert blobs and any(b"db.password" in blob for blob in blobs.values())  # the scan does see our rows/items
    for where, blob in blobs.items():
        assert not find_leaks(blob, canary), where
        assert not find_leaks(blob, plain_marker), where
