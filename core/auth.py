"""Who is calling: bearer token → :class:`Principal`.

The root token's digest lives in the store's meta table (``root_token_sha256``), so every node of a
cluster accepts the same root token; its string is never stored (outside dev mode's token file).

Service tokens are looked up by the SHA-256 of the presented string in the ``TokenStore``. A node keeps a
lookup for at most ``cache_seconds`` (0.5 s), so a revocation on any node is effective everywhere within
one second; expiry is checked against the clock on every request.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from datetime import datetime

from cachetools import TTLCache

from tessera.core.access_model import TokenRecord
from tessera.core.errors import Unauthenticated
from tessera.core.model import ROOT, Principal, utcnow
from tessera.core.ports import TokenStore, VersionStore
from tessera.core.tokens import generate_token, hash_token, matches

ROOT_HASH_META = "root_token_sha256"
TOKEN_CACHE_SECONDS = 0.5
TOKEN_CACHE_ENTRIES = 10_000


class Authenticator:
    def __init__(
        self,
        store: VersionStore,
        tokens: TokenStore | None = None,
        cache_seconds: float = TOKEN_CACHE_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.clock = clock
        self._root_hash: str | None = None
        self._root_read_at = 0.0
        self._lock = threading.Lock()
        self.cache_seconds = cache_seconds  # makes ``_cache``

    @property
    def cache_seconds(self) -> float:
        return self._cache_seconds

    @cache_seconds.setter
    def cache_seconds(self, seconds: float) -> None:
        """How long a token lookup is reused; setting it starts an empty cache."""
        with self._lock:
            self._cache_seconds = seconds
            # token hash → record, or None ("unknown" is cached just as briefly); LRU within the lifetime, which
            # counts from the lookup. cachetools is not thread-safe: every use holds the lock.
            self._cache: TTLCache[str, TokenRecord | None] = TTLCache(TOKEN_CACHE_ENTRIES, seconds, timer=time.monotonic)

    def root_hash(self) -> str | None:
        """The root token's digest, re-read like a token lookup (at most ``cache_seconds`` old): replacing a
        leaked root token on one node takes effect on every node within a second."""
        now = time.monotonic()
        with self._lock:
            if self._root_hash is not None and now - self._root_read_at < self.cache_seconds:
                return self._root_hash
        digest = self.store.get_meta(ROOT_HASH_META)
        with self._lock:
            self._root_hash, self._root_read_at = digest, now
        return digest

    def set_root_token(self, token: str) -> None:
        digest = hash_token(token)
        if self.store.get_meta(ROOT_HASH_META) != digest:
            self.store.put_meta(ROOT_HASH_META, digest)
        with self._lock:
            self._root_hash, self._root_read_at = digest, time.monotonic()

    def ensure_root_token(self) -> str | None:
        """Create a root token on first start; returns the new string (shown once) or None if one exists."""
        if self.root_hash() is not None:
            return None
        token = generate_token()
        self.set_root_token(token)
        return token

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing bearer token")
        # The token's SHA-256 once (it was three times: the root comparison, the lookup, the record comparison),
        # compared in constant time with each stored digest. Every request pays this.
        return self.authenticate_digest(hash_token(token))

    def authenticate_digest(self, token_hash: str) -> Principal:
        """Like :meth:`authenticate`, for a token known only by its SHA-256 (a console session keeps no token
        string): revocation and expiry apply exactly as to the string."""
        root = self.root_hash()
        if root is not None and hmac.compare_digest(token_hash, root):
            return ROOT
        record = self._lookup(token_hash) if self.tokens is not None else None
        if record is None or not hmac.compare_digest(token_hash, record.token_hash) or not record.live(self.clock()):
            raise Unauthenticated("unknown, expired or revoked token")
        return Principal(id=record.id, service=record.service, policies=record.policies, expires_at=record.expires_at)

    def _lookup(self, token_hash: str) -> TokenRecord | None:
        with self._lock:
            try:
                return self._cache[token_hash]  # a miss or an expired entry raises KeyError
            except KeyError:
                pass
        assert self.tokens is not None
        record = self.tokens.token_by_hash(token_hash)
        with self._lock:
            self._cache[token_hash] = record
        return record

    def identify(self, token: str) -> TokenRecord | None:
        """The stored record of a token string whatever its state (expired, revoked): lets the audit log name
        the token behind a refused request. Never used to let anything in."""
        if self.tokens is None or not token:
            return None
        record = self._lookup(hash_token(token))
        return record if record is not None and matches(token, record.token_hash) else None

    def clear(self) -> None:
        """Drop every cached lookup (a SnapStart restore: nothing cached at snapshot time is trusted)."""
        with self._lock:
            self._cache.clear()
            self._root_hash, self._root_read_at = None, 0.0

    def forget(self, token_hash: str) -> None:
        """Drop a cached lookup (this node just revoked the token: effective here at once)."""
        with self._lock:
            self._cache.pop(token_hash, None)
