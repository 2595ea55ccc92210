"""Rotation, rewrap (interrupted and resumed) and retirement, on every registered backend."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from tessera.core import crypto, rotation
from tessera.core.backends.keyring import LocalKeyring
from tessera.core.errors import TesseraError
from tessera.core.model import ROOT, Scope
from tessera.core.service import ConfigService

SCOPES = [Scope(), Scope("payments", "default"), Scope("payments", "prod")]


def fill(service: ConfigService, keys_per_scope: int = 12) -> dict[tuple, object]:
    """Several keys, scopes, secrets, multi-version histories and a deletion; returns every sealed version's value."""
    service.put_env(ROOT, "prod", "default")
    expected: dict[tuple, object] = {}
    for scope in SCOPES:
        for i in range(keys_per_scope):
            key = f"app.k{i}"
            for round_ in range(3 if i % 3 == 0 else 1):
                value = f"{scope.namespace}-{scope.env}-{i}-{round_}"
                result = service.put(ROOT, scope, key, value, secret=(i % 2 == 0) if round_ == 0 else None)
                expected[(scope, key, result.version.version)] = value
        service.delete(ROOT, scope, "app.k1")
    return expected


def assert_all_readable(store, keys, expected):
    fresh = ConfigService(store, crypto.CachingKeyService(getattr(keys, "inner", keys)))  # nothing cached
    for (scope, key, version), value in expected.items():
        assert fresh.get(ROOT, scope, key, version).value == value


def snapshot(store):
    """Everything but the envelopes: rewrap must not change versions, heads, revisions or metadata."""
    rows = []
    after = None
    while True:
        page = store.iter_sealed_versions(after, 50)
        if not page:
            break
        for v in page:
            rows.append((v.scope, v.key, v.version, v.action, v.secret, v.updated_at, v.updated_by, v.revision))
        last = page[-1]
        after = (last.scope.namespace, last.scope.env, last.key, last.version)
    return rows, store.current_revision()


class FailingAfter:
    """Wraps a store so the N+1-th envelope replacement blows up: a crash in the middle of a rewrap."""

    def __init__(self, store, replacements: int):
        self._store = store
        self._left = replacements

    def replace_envelope(self, *args):
        if self._left == 0:
            raise RuntimeError("injected crash")
        self._left -= 1
        return self._store.replace_envelope(*args)

    def __getattr__(self, name):
        return getattr(self._store, name)


@dataclass
class Kit:
    """A backend's store, a key service that follows rotations, its key directory, and how to rotate."""

    store: Any
    keys: Any
    directory: Any
    rotate: Callable[[], str]


@pytest.fixture
def kit(backend) -> Kit:
    store, keys = backend
    inner = getattr(keys, "inner", keys)
    if isinstance(inner, LocalKeyring):
        return Kit(store, keys, inner, inner.rotate)
    from tessera.core.backends.aws import KmsKeyService

    # As the composition root wires it: the active KMS key is whatever the store's meta names.
    kms = KmsKeyService(inner.kms, inner.key_id, inner.calls, functools.partial(store.get_meta, rotation.ACTIVE_KMS_KEY_META), 0.0)
    directory = rotation.MetaKeyDirectory(store, inner.key_id, resolve=kms.resolve_key_arn)

    def rotate() -> str:
        return directory.rotate(inner.kms.create_key(Description="tessera rotation test")["KeyMetadata"]["Arn"])

    return Kit(store, crypto.CachingKeyService(kms), directory, rotate)


def test_rotate_rewrap_interrupted_twice_resume_then_retire(kit):
    store, keys, directory = kit.store, kit.keys, kit.directory
    service = ConfigService(store, keys)
    local = isinstance(directory, LocalKeyring)
    expected = fill(service, 12 if local else 5)  # moto is ~100x slower per call: fewer, same shapes
    sealed = len(expected)
    old = directory.active_key_id
    assert rotation.status(store, directory)[0].versions == sealed

    new = kit.rotate()
    assert crypto.active_key_id(keys) == new
    # New writes use the new key at once.
    written = service.put(ROOT, Scope(), "after.rotation", "x")
    expected[(Scope(), "after.rotation", 1)] = "x"
    assert store.get_version(Scope(), "after.rotation", 1).key_id == new
    with pytest.raises(rotation.KeyInUse):
        rotation.retire(store, directory, old)
    before = snapshot(store)

    # 1. stopped by --limit
    first = rotation.rewrap(store, keys, limit=10, batch_size=7)
    assert (first.rewrapped, first.finished) == (10, False)
    counts = store.versions_by_key_id()
    assert counts[old] == sealed - 10 and counts[new] == 11
    assert rotation.pending_cursor(store)["target"] == new
    if local:
        assert_all_readable(store, keys, expected)

    # 2. a crash in the middle of a page
    with pytest.raises(RuntimeError, match="injected"):
        rotation.rewrap(FailingAfter(store, 12), keys, batch_size=5)
    assert store.versions_by_key_id()[old] == sealed - 22
    if local:
        assert_all_readable(store, keys, expected)

    # 3. resumed to the end
    last = rotation.rewrap(store, keys, batch_size=5)
    assert last.resumed and last.finished and not last.failed
    assert last.rewrapped == sealed - 22
    assert store.versions_by_key_id().get(old, 0) == 0
    assert rotation.pending_cursor(store) is None
    if not local:  # KMS re-wraps inside KMS: the plaintext data key is never sent back (no Encrypt)
        calls = keys.inner.calls
        assert calls["kms:ReEncrypt"] >= sealed and calls["kms:Encrypt"] == 0
    assert snapshot(store) == before  # no version, head, revision or metadata changed
    assert_all_readable(store, keys, expected)
    status = {s.key_id: s for s in rotation.status(store, directory)}
    assert status[old].versions == 0 and status[new].versions == sealed + 1 and status[new].active

    # 4. idempotent: a second full pass changes nothing
    again = rotation.rewrap(store, keys)
    assert again.rewrapped == 0 and again.already == sealed + 1
    assert snapshot(store) == before

    # 5. retire
    with pytest.raises(rotation.KeyInUse):
        rotation.retire(store, directory, new)
    rotation.retire(store, directory, old)
    status = {s.key_id: s for s in rotation.status(store, directory)}
    assert status[old].retired and status[old].versions == 0
    assert_all_readable(store, keys, expected)
    assert written.version.version == 1


def test_a_tampered_version_is_reported_and_keeps_its_key_from_retirement(kit):
    store, keys, directory = kit.store, kit.keys, kit.directory
    service = ConfigService(store, keys)
    service.put(ROOT, Scope(), "a", "1")
    service.put(ROOT, Scope(), "b", "2")
    version = store.get_version(Scope(), "b", 1)
    envelope = store.load_envelope(version)
    tampered = bytearray(envelope)
    tampered[-3] ^= 0x40
    assert store.replace_envelope(version, envelope, bytes(tampered), version.key_id)
    old = directory.active_key_id
    kit.rotate()
    report = rotation.rewrap(store, keys)
    assert report.rewrapped == 1 and len(report.failed) == 1
    failure = report.failed[0]
    assert (failure["key"], failure["version"], failure["code"]) == ("b", 1, "integrity_error")
    with pytest.raises(rotation.KeyInUse):
        rotation.retire(store, directory, old)


def test_replace_envelope_is_conditional(kit):
    store, keys = kit.store, kit.keys
    ConfigService(store, keys).put(ROOT, Scope(), "a", "1")
    version = store.get_version(Scope(), "a", 1)
    envelope = store.load_envelope(version)
    assert not store.replace_envelope(version, b"not the stored one", b"new", "local:k9")
    assert store.load_envelope(store.get_version(Scope(), "a", 1)) == envelope


def test_cursor_for_an_older_target_is_ignored(kit):
    store, keys = kit.store, kit.keys
    service = ConfigService(store, keys)
    for i in range(6):
        service.put(ROOT, Scope(), f"k{i}", i)
    kit.rotate()
    rotation.rewrap(store, keys, limit=2, batch_size=2)
    third = kit.rotate()  # the operator rotated again before finishing
    report = rotation.rewrap(store, keys)
    assert not report.resumed and report.finished and report.rewrapped == 6
    assert store.versions_by_key_id() == {third: 6}


# ------------------------------------------------------------------------------------------ the CLI
def test_keys_cli_end_to_end(tmp_path):
    from tessera.client.cli import app
    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings

    data = tmp_path / "data"
    container = build(Settings(data_dir=data))
    service = container.service
    expected = {}
    for i in range(30):
        result = service.put(ROOT, Scope(), f"svc.k{i % 10}", f"v{i}", secret=True if i < 10 else None)
        expected[(Scope(), f"svc.k{i % 10}", result.version.version)] = f"v{i}"

    runner = CliRunner()

    def keys(*args):
        result = runner.invoke(app, ["keys", *args, "--data-dir", str(data), "--json"])
        return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None

    code, status = keys("status")
    assert code == 0 and status["keys"] == [{"key_id": "local:k1", "versions": 30, "active": True, "retired": False}]
    code, rotated = keys("rotate")
    assert code == 0 and rotated == {"previous_key_id": "local:k1", "active_key_id": "local:k2"}
    code, report = keys("rewrap", "--limit", "12", "--batch-size", "5")
    assert code == 0 and report["rewrapped"] == 12 and not report["finished"]
    code, status = keys("status")
    assert {k["key_id"]: k["versions"] for k in status["keys"]} == {"local:k1": 18, "local:k2": 12}
    assert status["rewrap_in_progress"]["target"] == "local:k2"
    code, error = keys("retire", "local:k1")
    assert code == 1 and error["error"]["code"] == "key_in_use"
    # The long-running server process (this container) keeps reading throughout: its keyring reloads itself.
    assert_all_readable(container.store, container.keys, expected)
    code, report = keys("rewrap")
    assert code == 0 and report["finished"] and report["resumed"] and report["remaining_on_other_keys"] == {}
    code, retired = keys("retire", "local:k1")
    assert code == 0 and retired == {"retired": "local:k1"}
    code, status = keys("status")
    assert {k["key_id"]: (k["versions"], k["retired"]) for k in status["keys"]} == {
        "local:k2": (30, False),
        "local:k1": (0, True),
    }
    # The running server writes under the new key and still reads everything (k1 is gone from its keyring).
    container.keys.clear()
    container.service.values = type(container.service.values)()
    assert_all_readable(container.store, container.keys, expected)
    written = container.service.put(ROOT, Scope(), "new.key", "n")
    assert container.store.get_version(Scope(), "new.key", written.version.version).key_id == "local:k2"
    container.close()

    # Human output: a table, and a progress bar for rewrap.
    plain = runner.invoke(app, ["keys", "status", "--data-dir", str(data)])
    assert plain.exit_code == 0 and "local:k2" in plain.output
    plain = runner.invoke(app, ["keys", "rewrap", "--data-dir", str(data)])
    assert plain.exit_code == 0 and "rewrap" in plain.output and "Finished" in plain.output


def test_cli_refuses_rotating_an_environment_keyring(tmp_path, monkeypatch):
    import base64
    import os

    from tessera.client.cli import app
    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings

    monkeypatch.setenv("TESSERA_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    build(Settings.from_env(data_dir=tmp_path / "d")).close()  # a store to tend (keys never creates one)
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 1 and "TESSERA_MASTER_KEY" in json.loads(result.stdout)["error"]["message"]


def test_errors_are_tessera_errors():
    assert issubclass(rotation.KeyInUse, TesseraError) and rotation.KeyInUse.status == 409


@pytest.mark.aws
def test_keys_cli_on_the_aws_backend_against_moto_server(tmp_path, monkeypatch):
    """`tessera keys rotate --kms-key-id` records the new key in the store's meta; a running node follows it."""
    from tessera.client.cli import app
    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings
    from tests.aws.support import shared_server

    target = shared_server().target()
    for name, value in target.env().items():
        monkeypatch.setenv(name, value)
    container = build(Settings.from_env(data_dir=tmp_path / "data"))
    container.keys.inner.refresh_seconds = 0.0  # the node re-reads the active key id on every write
    expected = {}
    for i in range(6):
        result = container.service.put(ROOT, Scope(), f"svc.k{i % 3}", f"v{i}", secret=True if i < 3 else None)
        expected[(Scope(), f"svc.k{i % 3}", result.version.version)] = f"v{i}"
    runner = CliRunner()

    def keys(*args):
        result = runner.invoke(app, ["keys", *args, "--json"])
        return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None

    code, status = keys("status")
    assert code == 0 and status["keys"] == [{"key_id": target.key_arn, "versions": 6, "active": True, "retired": False}]
    code, error = keys("rotate")
    assert code == 1 and "--kms-key-id" in error["error"]["message"]
    new_arn = target.clients.kms.create_key(Description="rotation target")["KeyMetadata"]["Arn"]
    target.clients.kms.create_alias(AliasName="alias/tessera-next-" + new_arn[-8:], TargetKeyId=new_arn)
    code, rotated = keys("rotate", "--kms-key-id", "alias/tessera-next-" + new_arn[-8:])
    assert code == 0 and rotated == {"previous_key_id": target.key_arn, "active_key_id": new_arn}  # kept as the ARN
    # The running node learns of the rotation through the auth stamp, which it reads at most once a second.
    time.sleep(container.store.auth_stamp.max_age + 0.1)
    written = container.service.put(ROOT, Scope(), "after.rotation", "x")
    assert container.store.get_version(Scope(), "after.rotation", written.version.version).key_id == new_arn
    code, report = keys("rewrap", "--limit", "2", "--batch-size", "2")
    assert code == 0 and report["rewrapped"] == 2 and not report["finished"]
    code, error = keys("retire", target.key_arn)
    assert code == 1 and error["error"]["code"] == "key_in_use"
    code, report = keys("rewrap")
    assert code == 0 and report["finished"] and report["rewrapped"] == 4 and report["remaining_on_other_keys"] == {}
    code, status = keys("status")
    assert {k["key_id"]: k["versions"] for k in status["keys"]} == {target.key_arn: 0, new_arn: 7}
    code, _ = keys("retire", target.key_arn)
    assert code == 0
    code, status = keys("status")
    assert [k for k in status["keys"] if k["key_id"] == target.key_arn][0]["retired"]
    assert_all_readable(container.store, container.keys, expected)
    container.close()
