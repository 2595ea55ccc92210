"""Master key rotation: which key protects what, re-wrapping every stored data key, and retiring old keys.

The procedure (``docs/security.md``)::

    tessera keys rotate            # a new master key (local) or a new KMS key (aws) becomes active for new writes
    tessera keys rewrap            # every stored data key is re-wrapped under the active key; resumable
    tessera keys status            # the old key now protects 0 versions
    tessera keys retire OLD_ID     # refused while any stored version still references OLD_ID

Rewrap changes no value and no version: each envelope is swapped for one holding the *same* data key wrapped
by the active master key (see :func:`core.crypto.rewrap_envelope`), conditionally on the stored envelope
being unchanged. Progress is a cursor in the store's meta (``rewrap_cursor``), saved after every page, so an
interrupted run resumes where it stopped, and a repeated run skips what is already done.

>>> # report = rewrap(store, keys, limit=100)   # stop after 100 re-wraps; run again to continue
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tessera.core import crypto
from tessera.core.errors import IntegrityError, TesseraError
from tessera.core.model import Version
from tessera.core.ports import KeyService, RewrapStore

REWRAP_CURSOR_META = "rewrap_cursor"
ACTIVE_KMS_KEY_META = "active_kms_key_id"
KNOWN_KMS_KEYS_META = "kms_key_ids"
RETIRED_KMS_KEYS_META = "retired_kms_key_ids"
DEFAULT_BATCH = 200
MAX_REPORTED_FAILURES = 100
REPLACE_ATTEMPTS = 3


class KeyInUse(TesseraError):
    """Retiring a master key that a stored version (or new writes) still need."""

    code, status = "key_in_use", 409


class RotationError(TesseraError):
    code, status = "rotation_error", 400


class KeyDirectory(Protocol):
    """Which master keys exist, which one is active, and the acts of rotating and retiring.

    :class:`core.backends.keyring.LocalKeyring` is one; :class:`MetaKeyDirectory` (KMS key ids kept in the
    store's meta) is the other.
    """

    @property
    def active_key_id(self) -> str: ...

    @property
    def key_ids(self) -> list[str]: ...

    @property
    def retired_key_ids(self) -> list[str]: ...

    def retire(self, key_id: str) -> None: ...


class MetaStore(Protocol):
    def get_meta(self, name: str) -> str | None: ...

    def put_meta(self, name: str, value: str) -> None: ...


class MetaKeyDirectory:
    """KMS master keys of the aws backend, named in the store's meta so every node (and Lambda) agrees.

    ``active_kms_key_id`` is what the KMS key service wraps new data keys under; until the first rotation it
    is the configured ``TESSERA_KMS_KEY_ID``. KMS keys are not deleted here: retiring only records that no
    stored version needs the key any more, so an operator may schedule its deletion in KMS.
    """

    def __init__(self, store: MetaStore, default_key_id: str, resolve: Callable[[str], str] | None = None) -> None:
        self.store = store
        self.default_key_id = default_key_id
        # KMS names the key by ARN on every data key; ``resolve`` maps an alias or id to that ARN so the
        # active key compares equal to the key ids stored envelopes carry.
        self.resolve = resolve or (lambda key_id: key_id)

    @property
    def active_key_id(self) -> str:
        return self.resolve(self.store.get_meta(ACTIVE_KMS_KEY_META) or self.default_key_id)

    @property
    def key_ids(self) -> list[str]:
        known = _json_list(self.store.get_meta(KNOWN_KMS_KEYS_META))
        active = self.active_key_id
        return [k for k in known if k not in self.retired_key_ids] + ([active] if active not in known else [])

    @property
    def retired_key_ids(self) -> list[str]:
        return _json_list(self.store.get_meta(RETIRED_KMS_KEYS_META))

    def rotate(self, new_key_id: str) -> str:
        if not new_key_id:
            raise RotationError("name the new KMS key (its ARN, id or alias)")
        if new_key_id in self.retired_key_ids:
            raise RotationError("that KMS key was retired; use a new one")
        known = _json_list(self.store.get_meta(KNOWN_KMS_KEYS_META))
        for key_id in (self.active_key_id, new_key_id):
            if key_id not in known:
                known.append(key_id)
        self.store.put_meta(KNOWN_KMS_KEYS_META, json.dumps(known))
        self.store.put_meta(ACTIVE_KMS_KEY_META, new_key_id)
        return new_key_id

    def retire(self, key_id: str) -> None:
        if key_id == self.active_key_id:
            raise KeyInUse("the active KMS key cannot be retired; rotate first")
        retired = self.retired_key_ids
        if key_id not in retired:
            self.store.put_meta(RETIRED_KMS_KEYS_META, json.dumps([*retired, key_id]))


def _json_list(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


# ---------------------------------------------------------------------------------------------- status
@dataclass(frozen=True)
class KeyStatus:
    key_id: str
    versions: int
    active: bool
    retired: bool

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "versions": self.versions, "active": self.active, "retired": self.retired}


def status(store: RewrapStore, directory: KeyDirectory) -> list[KeyStatus]:
    """How many stored versions each master key protects: every key the directory knows, and any key a
    stored version names (even one the directory no longer has — that is a problem the operator must see)."""
    counts = store.versions_by_key_id()
    active = directory.active_key_id
    retired = set(directory.retired_key_ids)
    names = list(dict.fromkeys([*directory.key_ids, *sorted(counts), *sorted(retired)]))
    return [KeyStatus(k, counts.get(k, 0), k == active, k in retired) for k in names]


def pending_cursor(store: MetaStore) -> dict[str, Any] | None:
    """The saved position of an unfinished rewrap, or None."""
    raw = store.get_meta(REWRAP_CURSOR_META)
    if not raw:
        return None
    try:
        cursor = json.loads(raw)
    except ValueError:
        return None
    return cursor if isinstance(cursor, dict) else None


# ---------------------------------------------------------------------------------------------- rewrap
@dataclass
class RewrapReport:
    target_key_id: str
    total: int  # sealed versions in the store when the run started
    scanned: int = 0  # versions looked at, this run and the runs it resumed
    rewrapped: int = 0  # versions re-wrapped by this run
    already: int = 0  # versions this run found under the target key already
    failed: list[dict[str, Any]] = field(default_factory=list)  # (scope, key, version, code): never values
    resumed: bool = False
    finished: bool = False  # reached the end of the store (False when stopped by ``limit``)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_key_id": self.target_key_id,
            "total": self.total,
            "scanned": self.scanned,
            "rewrapped": self.rewrapped,
            "already_on_target": self.already,
            "failed": self.failed,
            "resumed": self.resumed,
            "finished": self.finished,
        }


class RewrapSource(RewrapStore, MetaStore, Protocol):
    def get_version(self, scope: Any, key: str, version: int) -> Version | None: ...

    def load_envelope(self, version: Version) -> bytes: ...


def rewrap(
    store: RewrapSource,
    keys: KeyService,
    *,
    target: KeyService | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[RewrapReport], None] | None = None,
) -> RewrapReport:
    """Re-wrap every stored data key not yet under ``target``'s active master key.

    ``keys`` unwraps (it must still hold the old keys); ``target`` (default: ``keys``) wraps. ``limit`` stops
    after that many re-wraps, leaving the cursor for the next run. A version that fails its integrity check
    is reported and left as it is: its old key stays referenced, so that key cannot be retired by mistake.
    """
    target = target or keys
    target_key_id = crypto.active_key_id(target)
    if not target_key_id:
        raise RotationError("the key service cannot say which master key is active")
    if batch_size < 1:
        raise RotationError("batch size must be positive")
    counts = store.versions_by_key_id()
    report = RewrapReport(target_key_id, total=sum(counts.values()))

    after: tuple[str, str, str, int] | None = None
    cursor = pending_cursor(store)
    # A cursor left for another target is useless: everything before it was wrapped for a key no longer active.
    if cursor is not None and cursor.get("target") == target_key_id and isinstance(cursor.get("after"), list):
        namespace, env, key, version = cursor["after"]
        after = (str(namespace), str(env), str(key), int(version))
        report.scanned = int(cursor.get("scanned", 0))
        report.resumed = True

    def save_cursor() -> None:
        if after is not None:
            store.put_meta(
                REWRAP_CURSOR_META, json.dumps({"target": target_key_id, "after": list(after), "scanned": report.scanned})
            )

    while True:
        page = store.iter_sealed_versions(after, batch_size)
        if not page:
            break
        for version in page:
            if limit is not None and report.rewrapped >= limit:
                save_cursor()
                if on_progress is not None:
                    on_progress(report)
                return report
            _rewrap_one(store, keys, target, target_key_id, version, report)
            report.scanned += 1
            after = (version.scope.namespace, version.scope.env, version.key, version.version)
        save_cursor()
        if on_progress is not None:
            on_progress(report)
        if len(page) < batch_size:
            break
    store.put_meta(REWRAP_CURSOR_META, "")  # finished: the next run starts a fresh pass
    report.finished = True
    if on_progress is not None:
        on_progress(report)
    return report


def _rewrap_one(
    store: RewrapSource, keys: KeyService, target: KeyService, target_key_id: str, version: Version, report: RewrapReport
) -> None:
    current: Version | None = version
    for _ in range(REPLACE_ATTEMPTS):
        if current is None or current.deleted:
            return  # gone or not sealed: nothing to protect
        try:
            # A store may return versions without their envelope (loaded lazily): fetch it then.
            envelope = current.envelope if current.envelope is not None else store.load_envelope(current)
            if crypto.envelope_key_id(envelope) == target_key_id:
                report.already += 1
                return
            new = crypto.rewrap_envelope(keys, target, current.scope, current.key, current.version, envelope)
        except IntegrityError as exc:
            _record_failure(report, current, exc)
            return
        if store.replace_envelope(current, envelope, new, crypto.envelope_key_id(new)):
            report.rewrapped += 1
            return
        # Someone changed this envelope since we read it (another rewrap, most likely): look again.
        current = store.get_version(current.scope, current.key, current.version)
    _record_failure(report, version, TesseraError("the stored envelope kept changing; run rewrap again"))


def _record_failure(report: RewrapReport, version: Version, exc: TesseraError) -> None:
    if len(report.failed) < MAX_REPORTED_FAILURES:
        report.failed.append(
            {
                "namespace": version.scope.namespace,
                "env": version.scope.env,
                "key": version.key,
                "version": version.version,
                "code": exc.code,
                "message": exc.message,  # ours, never a value
            }
        )


# ---------------------------------------------------------------------------------------------- retire
def retire(store: RewrapStore, directory: KeyDirectory, key_id: str) -> None:
    """Retire ``key_id`` only if it is not active and no stored version references it."""
    if key_id == directory.active_key_id:
        raise KeyInUse("the active master key cannot be retired; rotate and rewrap first")
    referenced = store.versions_by_key_id().get(key_id, 0)
    if referenced:
        raise KeyInUse(
            f"{referenced} stored version(s) still reference {key_id}; run 'tessera keys rewrap' first",
            versions=referenced,
        )
    if key_id not in directory.key_ids and key_id not in directory.retired_key_ids:
        raise RotationError(f"no master key {key_id!r} is known")
    directory.retire(key_id)
