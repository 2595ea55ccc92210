"""The one encryption seam: every value is sealed here before any store sees it.

Envelope format, version 1 (all integers big-endian)::

    b"TSE1" | u8 len(key_id) | key_id (ascii) | u16 len(wrapped) | wrapped data key | 12-byte nonce | AES-256-GCM ciphertext+tag

The associated data binds the ciphertext to where it belongs, so an envelope copied onto another key,
version, scope or key id fails to open (Vault's barrier binds the path the same way)::

    b"tessera/v1\\0" + json([namespace, env, key, version, key_id])

The data key is fresh per write and wrapped by the key service under an encryption context naming the
same (namespace, env, key, version).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import IntegrityError
from core.model import Scope
from core.ports import DataKey, KeyService

MAGIC = b"TSE1"
NONCE_BYTES = 12
DATA_KEY_BYTES = 32


def encryption_context(scope: Scope, key: str, version: int) -> dict[str, str]:
    return {
        "tessera:namespace": scope.namespace,
        "tessera:env": scope.env,
        "tessera:key": key,
        "tessera:version": str(version),
    }


def associated_data(scope: Scope, key: str, version: int, key_id: str) -> bytes:
    binding = json.dumps([scope.namespace, scope.env, key, version, key_id], separators=(",", ":"))
    return b"tessera/v1\0" + binding.encode()


@dataclass(frozen=True)
class ParsedEnvelope:
    key_id: str
    wrapped: bytes
    nonce: bytes
    ciphertext: bytes


def parse_envelope(envelope: bytes) -> ParsedEnvelope:
    """Split an envelope into its parts; anything malformed is an integrity error."""
    try:
        if envelope[:4] != MAGIC:
            raise ValueError("bad magic")
        offset = 4
        key_id_len = envelope[offset]
        offset += 1
        key_id = envelope[offset : offset + key_id_len].decode("ascii")
        offset += key_id_len
        (wrapped_len,) = struct.unpack_from(">H", envelope, offset)
        offset += 2
        wrapped = envelope[offset : offset + wrapped_len]
        offset += wrapped_len
        nonce = envelope[offset : offset + NONCE_BYTES]
        offset += NONCE_BYTES
        ciphertext = envelope[offset:]
        if len(wrapped) != wrapped_len or len(nonce) != NONCE_BYTES or len(ciphertext) < 16:
            raise ValueError("truncated")
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise IntegrityError("stored value envelope is malformed") from exc
    return ParsedEnvelope(key_id, wrapped, nonce, ciphertext)


def build_envelope(key_id: str, wrapped: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    key_id_bytes = key_id.encode("ascii")
    return b"".join(
        [MAGIC, bytes([len(key_id_bytes)]), key_id_bytes, struct.pack(">H", len(wrapped)), wrapped, nonce, ciphertext]
    )


def envelope_key_id(envelope: bytes) -> str:
    return parse_envelope(envelope).key_id


def seal(keys: KeyService, scope: Scope, key: str, version: int, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` under a fresh data key bound to (scope, key, version)."""
    data_key = keys.generate_data_key(encryption_context(scope, key, version))
    nonce = os.urandom(NONCE_BYTES)
    aad = associated_data(scope, key, version, data_key.key_id)
    ciphertext = AESGCM(data_key.plaintext).encrypt(nonce, plaintext, aad)
    return build_envelope(data_key.key_id, data_key.wrapped, nonce, ciphertext)


def open_envelope(keys: KeyService, scope: Scope, key: str, version: int, envelope: bytes) -> bytes:
    """Decrypt an envelope written by :func:`seal` for exactly this (scope, key, version)."""
    parts = parse_envelope(envelope)
    plaintext_key = keys.decrypt_data_key(parts.key_id, parts.wrapped, encryption_context(scope, key, version))
    try:
        return AESGCM(plaintext_key).decrypt(parts.nonce, parts.ciphertext, associated_data(scope, key, version, parts.key_id))
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError("stored value failed its integrity check") from exc


def rewrap_envelope(source: KeyService, target: KeyService, scope: Scope, key: str, version: int, envelope: bytes) -> bytes:
    """Re-wrap the data key under the target's active master key without touching the ciphertext's key.

    The AAD names the key id, so the value is re-sealed under the same data key with the new id: the data key
    itself never leaves this process and the plaintext value is never produced.
    """
    parts = parse_envelope(envelope)
    context = encryption_context(scope, key, version)
    plaintext_key = source.decrypt_data_key(parts.key_id, parts.wrapped, context)
    aesgcm = AESGCM(plaintext_key)
    try:
        value = aesgcm.decrypt(parts.nonce, parts.ciphertext, associated_data(scope, key, version, parts.key_id))
    except InvalidTag as exc:
        raise IntegrityError("stored value failed its integrity check") from exc
    new_key_id, new_wrapped = target_wrap(target, plaintext_key, context)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aesgcm.encrypt(nonce, value, associated_data(scope, key, version, new_key_id))
    return build_envelope(new_key_id, new_wrapped, nonce, ciphertext)


def target_wrap(target: KeyService, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
    wrap = getattr(target, "wrap_data_key", None)
    if wrap is None:
        raise NotImplementedError("this key service cannot wrap an existing data key")
    return wrap(plaintext_key, context)


class CachingKeyService:
    """Bounded, time-limited cache of unwrapped data keys so warm reads make no KMS call.

    Plaintext data keys stay in this process's memory only, and expire after ``ttl_seconds``.
    """

    def __init__(self, inner: KeyService, max_entries: int = 4096, ttl_seconds: float = 300.0) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        data_key = self.inner.generate_data_key(context)
        self._remember((data_key.key_id, data_key.wrapped), data_key.plaintext)
        return data_key

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        cache_key = (key_id, wrapped)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(cache_key)
            if hit is not None and hit[0] > now:
                self._entries.move_to_end(cache_key)
                return hit[1]
        plaintext = self.inner.decrypt_data_key(key_id, wrapped, context)
        self._remember(cache_key, plaintext)
        return plaintext

    def wrap_data_key(self, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        return target_wrap(self.inner, plaintext_key, context)

    def _remember(self, cache_key: tuple[str, bytes], plaintext: bytes) -> None:
        with self._lock:
            self._entries[cache_key] = (time.monotonic() + self.ttl_seconds, plaintext)
            self._entries.move_to_end(cache_key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
