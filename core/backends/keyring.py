"""The local keyring: master keys kept in the data dir (or ``TESSERA_MASTER_KEY``) that wrap data keys.

File ``keyring.json`` (mode 0600; refused if group or others may read it)::

    {"active": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": "..."}, "retired": ["k0"]}

A data key is wrapped as ``nonce(12) | AES-256-GCM(master, data_key, aad=key id + context)``; the key id
written into envelopes is ``local:<id>``.

``tessera keys rotate``/``retire`` run in their own process while a server may be running on the same data
dir, so the file is the truth: a keyring backed by a file notices when it changed (one ``stat`` per second
on the write path, and at once when an envelope names a key it does not hold) and reloads it. Changes are
read-modify-write under an exclusive ``flock``, and the file is replaced atomically, never rewritten in place.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.core.errors import IntegrityError, TesseraError
from tessera.core.ports import DataKey

KEY_ID_PREFIX = "local:"
MASTER_KEY_BYTES = 32
LOCAL_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# How often the write path checks whether another process (the CLI) changed the keyring file.
REFRESH_SECONDS = 1.0


class KeyringError(TesseraError):
    code, status = "keyring_error", 500


def _wrap_aad(key_id: str, context: Mapping[str, str]) -> bytes:
    return b"tessera-wrap/v1\0" + json.dumps([key_id, sorted(context.items())], separators=(",", ":")).encode()


def check_private(path: Path) -> None:
    """Refuse a keyring file that is not a regular file or that group or others may read or write."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise KeyringError(f"refusing to use {path}: it is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyringError(f"refusing to use {path}: it is readable by group or others (mode {mode:o}); run chmod 600")


def _decode_key(local_id: str, material: str) -> bytes:
    if not LOCAL_ID_PATTERN.match(local_id):
        raise KeyringError("master key ids must match [A-Za-z0-9_-]{1,64}")
    try:
        raw = base64.b64decode(material, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise KeyringError(f"master key {local_id!r} is not valid base64") from exc
    if len(raw) != MASTER_KEY_BYTES:
        raise KeyringError(f"master key {local_id!r} must be 32 bytes, base64-encoded")
    return raw


class LocalKeyring:
    def __init__(self, keys: dict[str, bytes], active: str, path: Path | None = None, retired: list[str] | None = None):
        if active not in keys:
            raise KeyringError("active master key is not in the keyring")
        # (keys, active) is swapped as one tuple so a reader never sees a new active id with the old keys.
        self._state: tuple[dict[str, bytes], str] = (dict(keys), active)
        self.path = path
        self.retired = list(retired or [])
        self._lock = threading.Lock()
        self._signature = self._file_signature()
        self._next_refresh = time.monotonic() + REFRESH_SECONDS

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_env_value(cls, value: str) -> LocalKeyring:
        """``TESSERA_MASTER_KEY``: base64 of 32 bytes, or ``id:base64`` entries separated by commas (last active)."""
        keys: dict[str, bytes] = {}
        active = ""
        for index, part in enumerate(p for p in value.split(",") if p.strip()):
            key_id, _, material = part.strip().rpartition(":")
            key_id = key_id or f"env{index}"
            keys[key_id] = _decode_key(key_id, material)
            active = key_id
        if not keys:
            raise KeyringError("TESSERA_MASTER_KEY is empty")
        return cls(keys, active)

    @classmethod
    def load_or_create(cls, path: Path, *, create: bool = True) -> LocalKeyring:
        """Load ``path``, or make a first keyring there. ``create=False`` (the store already holds sealed
        values) refuses instead: a new keyring could never open them, and writing one would hide the loss."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise KeyringError(
                    f"{path} is missing, but the store holds values sealed by a local master key: restore the "
                    "keyring from backup (or set TESSERA_MASTER_KEY); a new keyring could not open them"
                )
            cls._create(path)
        info = path.stat()
        signature_before = (info.st_ino, info.st_mtime_ns, info.st_size)
        keys, active, retired = cls._read(path)
        keyring = cls(keys, active, path, retired)
        # The signature taken *before* reading: a change racing with the read is seen by the next refresh.
        keyring._signature = signature_before
        return keyring

    @staticmethod
    def _create(path: Path) -> None:
        """Write a first keyring without ever clobbering one another process created at the same moment.

        Two processes starting on an empty data dir (a server and a CLI command) must not each make their own
        ``k1``: values sealed under the loser's key would be unreadable forever. ``link`` refuses an existing
        target, so exactly one file wins and everyone reads it.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_private_tmp(path, {"active": "k1", "keys": {"k1": base64.b64encode(secrets.token_bytes(32)).decode()}, "retired": []})
        try:
            os.link(tmp, path)
            fsync_directory(path.parent)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, bytes], str, list[str]]:
        check_private(path)
        try:
            data = json.loads(path.read_text())
            keys = {str(k): _decode_key(str(k), v) for k, v in data["keys"].items()}
            active = data["active"]
            retired = [str(r) for r in data.get("retired", [])]
        except KeyringError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyringError(f"{path} is not a valid keyring file") from exc
        if active not in keys:
            raise KeyringError(f"{path}: the active master key is not in the keyring")
        return keys, active, retired

    def _file_signature(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def refresh(self, force: bool = False) -> None:
        """Reload the file if another process changed it (rotate/retire from the CLI)."""
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_SECONDS
        signature = self._file_signature()
        if signature is None or signature == self._signature:
            return
        keys, active, retired = self._read(self.path)
        with self._lock:
            self._state = (keys, active)
            self.retired = retired
            self._signature = signature

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise read-modify-write of the file across processes, and reload it first (no lost updates)."""
        if self.path is None:
            raise KeyringError("this keyring came from the environment and cannot be changed; set TESSERA_MASTER_KEY")
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                keys, active, retired = self._read(self.path)
                self._state = (keys, active)
                self.retired = retired
                yield
                self._signature = self._file_signature()
        finally:
            os.close(fd)  # closing releases the flock

    def save(self) -> None:
        if self.path is None:
            raise KeyringError("this keyring came from the environment and cannot be changed; set TESSERA_MASTER_KEY")
        keys, active = self._state
        data = {
            "active": active,
            "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
            "retired": self.retired,
        }
        tmp = _write_private_tmp(self.path, data)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        fsync_directory(self.path.parent)

    # -- rotation -------------------------------------------------------------------------------
    def rotate(self) -> str:
        """Add a new master key and make it active; older keys still unwrap what they wrapped."""
        with self._exclusive():
            keys, _ = self._state
            # Never reuse an id, retired ones included: an old envelope must never meet a different key by that name.
            used = [int(k[1:]) for k in [*keys, *self.retired] if k[:1] == "k" and k[1:].isdigit()]
            new_id = f"k{max(used, default=0) + 1}"
            self._state = ({**keys, new_id: secrets.token_bytes(MASTER_KEY_BYTES)}, new_id)
            self.save()
            return KEY_ID_PREFIX + new_id

    def retire(self, key_id: str) -> None:
        """Delete a master key's material for good. The caller checks first that no stored version needs it."""
        local_id = key_id.removeprefix(KEY_ID_PREFIX)
        with self._exclusive():
            keys, active = self._state
            if local_id == active:
                raise KeyringError("the active master key cannot be retired; rotate first")
            if local_id not in keys:
                if local_id in self.retired:
                    return  # already retired: retiring is idempotent
                raise KeyringError(f"no master key {key_id!r} in the keyring")
            self._state = ({k: v for k, v in keys.items() if k != local_id}, active)
            self.retired = [*self.retired, local_id]
            self.save()

    @property
    def active(self) -> str:
        return self._state[1]

    @property
    def active_key_id(self) -> str:
        self.refresh()
        return KEY_ID_PREFIX + self._state[1]

    @property
    def key_ids(self) -> list[str]:
        return [KEY_ID_PREFIX + k for k in self._state[0]]

    @property
    def retired_key_ids(self) -> list[str]:
        return [KEY_ID_PREFIX + k for k in self.retired]

    # -- KeyService -----------------------------------------------------------------------------
    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        plaintext = secrets.token_bytes(32)
        key_id, wrapped = self.wrap_data_key(plaintext, context)
        return DataKey(key_id, plaintext, wrapped)

    def wrap_data_key(self, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        self.refresh()
        keys, active = self._state
        key_id = KEY_ID_PREFIX + active
        nonce = os.urandom(12)
        wrapped = nonce + AESGCM(keys[active]).encrypt(nonce, plaintext_key, _wrap_aad(key_id, context))
        return key_id, wrapped

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        if not key_id.startswith(KEY_ID_PREFIX):
            raise IntegrityError("this value was not sealed by a local master key")
        local_id = key_id.removeprefix(KEY_ID_PREFIX)
        master = self._state[0].get(local_id)
        if master is None:
            self.refresh(force=True)  # the CLI may have rotated since this process loaded the file
            master = self._state[0].get(local_id)
        if master is None:
            if local_id in self.retired:
                raise IntegrityError("the master key that wrapped this value has been retired")
            raise IntegrityError("the master key that wrapped this value is not in the keyring")
        try:
            return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _wrap_aad(key_id, context))
        except (InvalidTag, ValueError) as exc:
            raise IntegrityError("stored data key failed its integrity check") from exc


def _write_private_tmp(path: Path, data: object) -> str:
    """A new file next to ``path``, created 0600 (``mkstemp`` never reuses a file another mode left behind)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def fsync_directory(directory: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
