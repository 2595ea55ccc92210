"""The one encryption seam: every value is sealed here before any store sees it.

Envelope format, version 1 (all integers big-endian)::

    b"TSE1" | u8 len(key_id) | key_id (ascii) | u16 len(wrapped) | wrapped data key | 12-byte nonce | AES-256-GCM ciphertext+tag

The associated data binds the ciphertext to where it belongs, so an envelope copied onto another key,
version, scope or key id fails to open (Vault's barrier binds the path the same way)::

    b"tessera/v1\\0" + json([namespace, env, key, version, key_id])

The data key is fresh per write and wrapped by the key service under an encryption context naming the
same (namespace, env, key, version). ``docs/security.md`` documents the format, the key hierarchy and rotation.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cachetools import TTLCache
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.core.errors import IntegrityError
from tessera.core.model import Scope
from tessera.core.ports import DataKey, KeyService

MAGIC = b"TSE1"
NONCE_BYTES = 12
TAG_BYTES = 16
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
        if not key_id or len(wrapped) != wrapped_len or len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
            raise ValueError("truncated")
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise IntegrityError("stored value envelope is malformed") from exc
    return ParsedEnvelope(key_id, wrapped, nonce, ciphertext)


def build_envelope(key_id: str, wrapped: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    key_id_bytes = key_id.encode("ascii")
    # The length prefixes are one and two bytes: refuse rather than write an envelope that parses differently.
    if not 0 < len(key_id_bytes) <= 255 or len(wrapped) > 0xFFFF or len(nonce) != NONCE_BYTES:
        raise ValueError("key id, wrapped key or nonce does not fit envelope format v1")
    return b"".join(
        [MAGIC, bytes([len(key_id_bytes)]), key_id_bytes, struct.pack(">H", len(wrapped)), wrapped, nonce, ciphertext]
    )


def envelope_key_id(envelope: bytes) -> str:
    return parse_envelope(envelope).key_id


def seal(keys: KeyService, scope: Scope, key: str, version: int, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` under a fresh data key bound to (scope, key, version)."""
    data_key = keys.generate_data_key(encryption_context(scope, key, version))
    if len(data_key.plaintext) != DATA_KEY_BYTES:
        raise ValueError("the key service returned a data key that is not 256 bits")
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
    """Re-wrap an envelope's data key under the target's active master key; same data key, same value.

    Because the AAD names the master key id (so an envelope cannot be relabelled with another key id), the
    ciphertext is re-sealed too: under the *same* data key, a fresh nonce and the new AAD. The value is
    authenticated on the way (a tampered envelope is refused, never re-blessed) and exists only in this
    process's memory for the moment it takes. The data key is re-wrapped by the key service itself where it
    can (KMS ``ReEncrypt``), so its plaintext is not sent out again. Version numbers and the value's bytes
    stay the same.
    """
    parts = parse_envelope(envelope)
    context = encryption_context(scope, key, version)
    plaintext_key = source.decrypt_data_key(parts.key_id, parts.wrapped, context)
    try:
        aesgcm = AESGCM(plaintext_key)
        value = aesgcm.decrypt(parts.nonce, parts.ciphertext, associated_data(scope, key, version, parts.key_id))
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError("stored value failed its integrity check") from exc
    new_key_id, new_wrapped = _rewrap_data_key(target, parts.key_id, parts.wrapped, plaintext_key, context)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aesgcm.encrypt(nonce, value, associated_data(scope, key, version, new_key_id))
    return build_envelope(new_key_id, new_wrapped, nonce, ciphertext)


def _rewrap_data_key(
    target: KeyService, key_id: str, wrapped: bytes, plaintext_key: bytes, context: Mapping[str, str]
) -> tuple[str, bytes]:
    """Prefer a key service's own re-wrap (KMS ``ReEncrypt``: the plaintext key is not sent to KMS again);
    otherwise wrap the plaintext key here (the local keyring, which never leaves this process anyway)."""
    inner = getattr(target, "inner", target)  # past a CachingKeyService
    rewrap = getattr(inner, "rewrap_data_key", None)
    if rewrap is not None:
        result: tuple[str, bytes] = rewrap(key_id, wrapped, context)
        return result
    return target_wrap(target, plaintext_key, context)


def target_wrap(target: KeyService, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
    wrap = getattr(target, "wrap_data_key", None)
    if wrap is None:
        raise NotImplementedError("this key service cannot wrap an existing data key")
    wrapped: tuple[str, bytes] = wrap(plaintext_key, context)
    return wrapped


def active_key_id(keys: KeyService) -> str | None:
    """The master key id new writes are wrapped under, when the key service can say (both real ones can)."""
    value = getattr(keys, "active_key_id", None)
    return value if isinstance(value, str) else None


CacheKey = tuple[str, bytes, tuple[tuple[str, str], ...]]  # (key id, wrapped key, sorted encryption context)


def _monotonic() -> float:
    return time.monotonic()  # looked up at each call, so a test's clock replaces it


class CachingKeyService:
    """Bounded, time-limited cache of unwrapped data keys so warm reads make no KMS call.

    Plaintext data keys stay in this process's memory only, at most ``max_entries`` of them (least recently
    used go first), and an entry is dropped once ``ttl_seconds`` have passed since it was unwrapped.

    An entry is keyed by (key id, wrapped key, encryption context), not by the wrapped key alone: a hit
    must mean "the key service would have unwrapped this under this context", so a warm cache never lets
    an envelope open in a place the key service itself would refuse (KMS checks the context on Decrypt).
    """

    def __init__(self, inner: KeyService, max_entries: int = 4096, ttl_seconds: float = 300.0) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        # LRU within a lifetime counted from the unwrap (a hit does not extend it); every insert drops what expired
        # first, so expired plaintext keys do not linger. cachetools is not thread-safe: every use holds the lock.
        self._entries: TTLCache[CacheKey, bytes] = TTLCache(max_entries, ttl_seconds, timer=_monotonic)
        self._lock = threading.Lock()

    @staticmethod
    def _cache_key(key_id: str, wrapped: bytes, context: Mapping[str, str]) -> CacheKey:
        return key_id, wrapped, tuple(sorted(context.items()))

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        data_key = self.inner.generate_data_key(context)
        # A version just written is usually read soon (and the write path reads its own value to detect no-ops).
        self._remember(self._cache_key(data_key.key_id, data_key.wrapped, context), data_key.plaintext)
        return data_key

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        cache_key = self._cache_key(key_id, wrapped, context)
        with self._lock:
            hit = self._entries.get(cache_key)
        if hit is not None:
            return hit
        plaintext = self.inner.decrypt_data_key(key_id, wrapped, context)
        self._remember(cache_key, plaintext)
        return plaintext

    def wrap_data_key(self, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        return target_wrap(self.inner, plaintext_key, context)

    @property
    def active_key_id(self) -> str | None:
        return active_key_id(self.inner)

    @property
    def cached_entries(self) -> int:
        with self._lock:
            return len(self._entries)  # live entries only: len() drops the expired ones first

    def _remember(self, cache_key: CacheKey, plaintext: bytes) -> None:
        with self._lock:
            self._entries[cache_key] = plaintext

    def forget_key_id(self, key_id: str) -> None:
        """Drop every cached data key wrapped under ``key_id`` (a retired master key must stop working here too)."""
        with self._lock:
            for cache_key in [k for k in self._entries if k[0] == key_id]:
                self._entries.pop(cache_key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
