"""Who is calling: bearer token → :class:`Principal`.

The root token's digest lives in the store's meta table (``root_token_sha256``), so every node of a
cluster accepts the same root token; its string is never stored (outside dev mode's token file).
"""

from __future__ import annotations

import threading

from core.errors import Unauthenticated
from core.model import ROOT, Principal
from core.ports import VersionStore
from core.tokens import generate_token, hash_token, matches

ROOT_HASH_META = "root_token_sha256"


class Authenticator:
    def __init__(self, store: VersionStore) -> None:
        self.store = store
        self._root_hash: str | None = None
        self._lock = threading.Lock()

    def root_hash(self) -> str | None:
        if self._root_hash is None:
            with self._lock:
                if self._root_hash is None:
                    self._root_hash = self.store.get_meta(ROOT_HASH_META)
        return self._root_hash

    def set_root_token(self, token: str) -> None:
        digest = hash_token(token)
        if self.store.get_meta(ROOT_HASH_META) != digest:
            self.store.put_meta(ROOT_HASH_META, digest)
        with self._lock:
            self._root_hash = digest

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
        root = self.root_hash()
        if root is not None and matches(token, root):
            return ROOT
        raise Unauthenticated("unknown, expired or revoked token")
