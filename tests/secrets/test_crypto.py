"""The encryption seam and the local keyring, in isolation: format, AAD binding, cache bounds, keyring rules."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading

import pytest

from tessera.core import crypto
from tessera.core.backends import keyring as keyring_module
from tessera.core.backends.keyring import KeyringError, LocalKeyring
from tessera.core.errors import IntegrityError
from tessera.core.model import Scope

SCOPE = Scope("payments", "prod")


@pytest.fixture
def ring(tmp_path):
    return LocalKeyring.load_or_create(tmp_path / "keyring.json")


class CountingKeys:
    """A key service that counts unwraps, to prove what the cache saves and refuses."""

    def __init__(self, inner):
        self.inner = inner
        self.decrypts = 0

    def generate_data_key(self, context):
        return self.inner.generate_data_key(context)

    def decrypt_data_key(self, key_id, wrapped, context):
        self.decrypts += 1
        return self.inner.decrypt_data_key(key_id, wrapped, context)

    def wrap_data_key(self, plaintext_key, context):
        return self.inner.wrap_data_key(plaintext_key, context)


def test_round_trip_and_envelope_format(ring):
    envelope = crypto.seal(ring, SCOPE, "db.password", 3, b'"hunter2-canary"')
    assert envelope.startswith(b"TSE1")
    assert b"hunter2-canary" not in envelope
    parts = crypto.parse_envelope(envelope)
    assert parts.key_id == "local:k1" and len(parts.nonce) == 12 and len(parts.wrapped) == 12 + 32 + 16
    assert crypto.open_envelope(ring, SCOPE, "db.password", 3, envelope) == b'"hunter2-canary"'
    # Fresh data key and nonce per write: the same value never seals to the same bytes.
    assert crypto.seal(ring, SCOPE, "db.password", 3, b'"hunter2-canary"') != envelope


@pytest.mark.parametrize(
    "scope, key, version",
    [
        (Scope("payments", "staging"), "db.password", 3),
        (Scope("other", "prod"), "db.password", 3),
        (SCOPE, "db.user", 3),
        (SCOPE, "db.password", 4),
    ],
)
def test_an_envelope_opens_only_where_it_was_sealed(ring, scope, key, version):
    envelope = crypto.seal(ring, SCOPE, "db.password", 3, b"secret")
    with pytest.raises(IntegrityError):
        crypto.open_envelope(ring, scope, key, version, envelope)
    # A warm cache must not change the answer.
    cached = crypto.CachingKeyService(ring)
    crypto.open_envelope(cached, SCOPE, "db.password", 3, envelope)
    with pytest.raises(IntegrityError):
        crypto.open_envelope(cached, scope, key, version, envelope)


def test_every_flipped_byte_is_refused(ring):
    envelope = crypto.seal(ring, SCOPE, "k", 1, b"some value")
    for index in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[index] ^= 0x01
        with pytest.raises(IntegrityError):
            crypto.open_envelope(ring, SCOPE, "k", 1, bytes(tampered))
    for cut in (0, 3, 10, len(envelope) - 1):
        with pytest.raises(IntegrityError):
            crypto.open_envelope(ring, SCOPE, "k", 1, envelope[:cut])


def test_relabelling_the_key_id_is_refused(tmp_path, ring):
    ring.rotate()  # now k1 and k2 both exist
    envelope = crypto.seal(ring, SCOPE, "k", 1, b"v")  # under k2
    parts = crypto.parse_envelope(envelope)
    relabelled = crypto.build_envelope("local:k1", parts.wrapped, parts.nonce, parts.ciphertext)
    with pytest.raises(IntegrityError):
        crypto.open_envelope(ring, SCOPE, "k", 1, relabelled)


def test_cache_makes_warm_reads_free_and_is_bounded_in_size_and_time(ring, monkeypatch):
    counting = CountingKeys(ring)
    cached = crypto.CachingKeyService(counting, max_entries=3, ttl_seconds=60)
    envelopes = [crypto.seal(ring, SCOPE, f"k{i}", 1, b"v") for i in range(5)]
    crypto.open_envelope(cached, SCOPE, "k0", 1, envelopes[0])
    crypto.open_envelope(cached, SCOPE, "k0", 1, envelopes[0])
    assert counting.decrypts == 1
    for i in range(1, 5):
        crypto.open_envelope(cached, SCOPE, f"k{i}", 1, envelopes[i])
    assert cached.cached_entries == 3  # least recently used went first
    # Lifetime: once the TTL passes the entry is neither used nor kept.
    now = [1000.0]
    monkeypatch.setattr(crypto.time, "monotonic", lambda: now[0])
    short = crypto.CachingKeyService(counting, max_entries=100, ttl_seconds=5)
    counting.decrypts = 0
    crypto.open_envelope(short, SCOPE, "k0", 1, envelopes[0])
    now[0] += 6
    crypto.open_envelope(short, SCOPE, "k1", 1, envelopes[1])  # triggers the sweep
    assert short.cached_entries == 1
    crypto.open_envelope(short, SCOPE, "k0", 1, envelopes[0])
    assert counting.decrypts == 3


def test_cache_entry_is_bound_to_its_context(ring):
    """A cached data key is not handed out for another encryption context (KMS would refuse that Decrypt)."""
    counting = CountingKeys(ring)
    cached = crypto.CachingKeyService(counting)
    data_key = cached.generate_data_key(crypto.encryption_context(SCOPE, "a", 1))
    with pytest.raises(IntegrityError):
        cached.decrypt_data_key(data_key.key_id, data_key.wrapped, crypto.encryption_context(SCOPE, "b", 1))
    assert cached.decrypt_data_key(data_key.key_id, data_key.wrapped, crypto.encryption_context(SCOPE, "a", 1)) == data_key.plaintext


def test_rewrap_keeps_the_data_key_and_value_and_changes_the_key_id(ring):
    envelope = crypto.seal(ring, SCOPE, "k", 7, b"value")
    before = crypto.parse_envelope(envelope)
    ring.rotate()
    rewrapped = crypto.rewrap_envelope(ring, ring, SCOPE, "k", 7, envelope)
    after = crypto.parse_envelope(rewrapped)
    assert after.key_id == "local:k2" != before.key_id
    context = crypto.encryption_context(SCOPE, "k", 7)
    assert ring.decrypt_data_key(after.key_id, after.wrapped, context) == ring.decrypt_data_key(
        before.key_id, before.wrapped, context
    )
    assert crypto.open_envelope(ring, SCOPE, "k", 7, rewrapped) == b"value"
    tampered = bytearray(envelope)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):  # never re-bless a tampered envelope
        crypto.rewrap_envelope(ring, ring, SCOPE, "k", 7, bytes(tampered))


def test_data_key_repr_hides_material(ring):
    data_key = ring.generate_data_key({})
    assert base64.b64encode(data_key.plaintext).decode() not in repr(data_key)
    assert data_key.plaintext.hex() not in repr(data_key)


# ------------------------------------------------------------------------------------------ keyring
def test_keyring_file_is_private_and_refused_when_readable_by_others(tmp_path):
    path = tmp_path / "keyring.json"
    LocalKeyring.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for mode in (0o640, 0o604, 0o660, 0o644):
        os.chmod(path, mode)
        with pytest.raises(KeyringError, match="chmod 600"):
            LocalKeyring.load_or_create(path)
    os.chmod(path, 0o600)
    LocalKeyring.load_or_create(path)


def test_keyring_rewrite_keeps_mode_0600_even_with_a_loose_umask(tmp_path):
    old = os.umask(0o000)
    try:
        ring = LocalKeyring.load_or_create(tmp_path / "keyring.json")
        ring.rotate()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keyring.json").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_malformed_keyring_file_is_a_clear_error(tmp_path):
    path = tmp_path / "keyring.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"active": "k1", "keys": {"k1": "not base64!"}}')
    os.close(fd)
    with pytest.raises(KeyringError, match="base64"):
        LocalKeyring.load_or_create(path)


def test_master_key_from_environment():
    k1, k2 = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    ring = LocalKeyring.from_env_value(f"old:{k1},new:{k2}")
    assert ring.active_key_id == "local:new" and set(ring.key_ids) == {"local:old", "local:new"}
    assert LocalKeyring.from_env_value(k1).active_key_id == "local:env0"
    for bad in ("", "abc", base64.b64encode(b"short").decode(), "x:" + k1[:-4] + "@@@@"):
        with pytest.raises(KeyringError):
            LocalKeyring.from_env_value(bad)
    with pytest.raises(KeyringError, match="cannot be changed"):
        ring.rotate()


def test_rotate_never_reuses_an_id_and_retire_rules(ring):
    assert ring.rotate() == "local:k2"
    ring.retire("local:k1")
    ring.retire("local:k1")  # idempotent
    with pytest.raises(KeyringError, match="active"):
        ring.retire("local:k2")
    with pytest.raises(KeyringError, match="no master key"):
        ring.retire("local:k9")
    assert ring.rotate() == "local:k3"
    data = json.loads(ring.path.read_text())
    assert set(data["keys"]) == {"k2", "k3"} and data["retired"] == ["k1"]
    with pytest.raises(IntegrityError, match="retired"):
        ring.decrypt_data_key("local:k1", b"\0" * 60, {})


def test_a_running_process_sees_a_rotation_made_by_another(tmp_path, monkeypatch):
    """The CLI rotates in its own process; the server's keyring must follow, or it could not read rewrapped values."""
    path = tmp_path / "keyring.json"
    server = LocalKeyring.load_or_create(path)
    cli = LocalKeyring.load_or_create(path)
    cli.rotate()
    envelope = crypto.seal(cli, SCOPE, "k", 1, b"v")  # under k2, which the server has not loaded yet
    assert crypto.open_envelope(server, SCOPE, "k", 1, envelope) == b"v"  # reload on an unknown key id
    monkeypatch.setattr(keyring_module, "REFRESH_SECONDS", 0.0)
    cli.rotate()
    server.refresh(force=True)
    assert server.active_key_id == "local:k3"
    assert crypto.parse_envelope(crypto.seal(server, SCOPE, "k", 2, b"v")).key_id == "local:k3"


def test_concurrent_first_starts_agree_on_one_keyring(tmp_path):
    path = tmp_path / "keyring.json"
    rings: list[LocalKeyring] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        rings.append(LocalKeyring.load_or_create(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    envelope = crypto.seal(rings[0], SCOPE, "k", 1, b"v")
    assert all(crypto.open_envelope(r, SCOPE, "k", 1, envelope) == b"v" for r in rings)


def test_concurrent_rotations_lose_no_key(tmp_path):
    path = tmp_path / "keyring.json"
    LocalKeyring.load_or_create(path)
    rings = [LocalKeyring.load_or_create(path) for _ in range(4)]
    threads = [threading.Thread(target=r.rotate) for r in rings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(json.loads(path.read_text())["keys"]) == {"k1", "k2", "k3", "k4", "k5"}
