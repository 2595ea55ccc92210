"""The local keyring: master keys kept in the data dir (or ``TESSERA_MASTER_KEY``) that wrap data keys.

File ``keyring.json`` (mode 0600; refused if group or others may read it)::

    {"active": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": "..."}, "retired": ["k0"]}

A data key is wrapped as ``nonce(12) | AES-256-GCM(master, data_key, aad=context)``; the key id written into
envelopes is ``local:<id>``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import IntegrityError, TesseraError
from core.ports import DataKey

KEY_ID_PREFIX = "local:"


class KeyringError(TesseraError):
    code, status = "keyring_error", 500


def _wrap_aad(key_id: str, context: Mapping[str, str]) -> bytes:
    return b"tessera-wrap/v1\0" + json.dumps([key_id, sorted(context.items())], separators=(",", ":")).encode()


class LocalKeyring:
    def __init__(self, keys: dict[str, bytes], active: str, path: Path | None = None, retired: list[str] | None = None):
        if active not in keys:
            raise KeyringError("active master key is not in the keyring")
        self._keys = dict(keys)
        self.active = active
        self.path = path
        self.retired = list(retired or [])
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_env_value(cls, value: str) -> LocalKeyring:
        """``TESSERA_MASTER_KEY``: base64 of 32 bytes, or ``id:base64`` entries separated by commas (last active)."""
        keys: dict[str, bytes] = {}
        active = ""
        for index, part in enumerate(p for p in value.split(",") if p.strip()):
            key_id, _, material = part.strip().rpartition(":")
            key_id = key_id or f"env{index}"
            raw = base64.b64decode(material)
            if len(raw) != 32:
                raise KeyringError("TESSERA_MASTER_KEY must hold 32-byte keys, base64-encoded")
            keys[key_id] = raw
            active = key_id
        if not keys:
            raise KeyringError("TESSERA_MASTER_KEY is empty")
        return cls(keys, active)

    @classmethod
    def load_or_create(cls, path: Path) -> LocalKeyring:
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise KeyringError(
                    f"refusing to use {path}: it is readable by group or others (mode {mode:o}); run chmod 600"
                )
            data = json.loads(path.read_text())
            keys = {k: base64.b64decode(v) for k, v in data["keys"].items()}
            return cls(keys, data["active"], path, data.get("retired", []))
        keyring = cls({"k1": secrets.token_bytes(32)}, "k1", path)
        keyring.save()
        return keyring

    def save(self) -> None:
        if self.path is None:
            raise KeyringError("this keyring came from the environment and cannot be changed; set TESSERA_MASTER_KEY")
        data = {
            "active": self.active,
            "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()},
            "retired": self.retired,
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    # -- rotation -------------------------------------------------------------------------------
    def rotate(self) -> str:
        """Add a new master key and make it active; older keys still unwrap what they wrapped."""
        with self._lock:
            new_id = f"k{max(int(k[1:]) for k in self._keys if k[1:].isdigit()) + 1}" if self._keys else "k1"
            self._keys[new_id] = secrets.token_bytes(32)
            self.active = new_id
            self.save()
            return KEY_ID_PREFIX + new_id

    def retire(self, key_id: str) -> None:
        local_id = key_id.removeprefix(KEY_ID_PREFIX)
        with self._lock:
            if local_id == self.active:
                raise KeyringError("the active master key cannot be retired")
            self._keys.pop(local_id, None)
            self.retired.append(local_id)
            self.save()

    @property
    def active_key_id(self) -> str:
        return KEY_ID_PREFIX + self.active

    @property
    def key_ids(self) -> list[str]:
        return [KEY_ID_PREFIX + k for k in self._keys]

    # -- KeyService -----------------------------------------------------------------------------
    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        plaintext = secrets.token_bytes(32)
        key_id, wrapped = self.wrap_data_key(plaintext, context)
        return DataKey(key_id, plaintext, wrapped)

    def wrap_data_key(self, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        key_id = KEY_ID_PREFIX + self.active
        nonce = os.urandom(12)
        wrapped = nonce + AESGCM(self._keys[self.active]).encrypt(nonce, plaintext_key, _wrap_aad(key_id, context))
        return key_id, wrapped

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        master = self._keys.get(key_id.removeprefix(KEY_ID_PREFIX)) if key_id.startswith(KEY_ID_PREFIX) else None
        if master is None:
            raise IntegrityError("the master key that wrapped this value is not in the keyring")
        try:
            return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _wrap_aad(key_id, context))
        except (InvalidTag, ValueError) as exc:
            raise IntegrityError("stored data key failed its integrity check") from exc
