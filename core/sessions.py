"""Console sessions: a token signs in once, the browser keeps only a random session id in a cookie.

The session lives in the store (``SessionStore`` in ``core/ports.py``), so every worker and node honours it, and
is keyed by the SHA-256 of the cookie's value (a copy of the table signs nobody in). It names the token it was
opened with by that token's digest — never the token string — and every request re-authenticates through it:
a session ends when its token is revoked or expires, when it is signed out, or after ``SESSION_SECONDS``.

The CSRF token of a session is derived from the cookie's value (HMAC), so it needs no storage and a page of
another site, which cannot read the cookie, cannot compute it.

>>> # sessions = ConsoleSessions(store, authenticator)
>>> # cookie, principal, ends = sessions.sign_in("tsr_…")      # cookie: what the browser keeps
>>> # sessions.resolve(cookie)                           # → the token's Principal, or Unauthenticated
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from tessera.core.access_model import SessionRecord
from tessera.core.errors import Unauthenticated
from tessera.core.model import Principal, utcnow
from tessera.core.tokens import hash_token

if TYPE_CHECKING:
    from tessera.core.auth import Authenticator
    from tessera.core.ports import SessionStore

SESSION_SECONDS = 8 * 3600  # a working day; never past the token's own expiry
MAX_COOKIE_LENGTH = 100


def session_digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_token(cookie: str) -> str:
    """The CSRF token of the session whose cookie holds ``cookie``."""
    return hmac.new(cookie.encode("utf-8", "surrogatepass"), b"tessera-console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(cookie: str | None, offered: str | None) -> bool:
    if not cookie or not offered:
        return False
    return hmac.compare_digest(csrf_token(cookie), offered)


class ConsoleSessions:
    def __init__(
        self,
        store: SessionStore,
        authenticator: Authenticator,
        lifetime_seconds: int = SESSION_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.lifetime = timedelta(seconds=lifetime_seconds)
        self.clock = clock

    def sign_in(self, token: str) -> tuple[str, Principal, datetime]:
        """Authenticate ``token`` and open a session; returns (the cookie's value, the principal, its end)."""
        principal = self.authenticator.authenticate(token)
        now = self.clock()
        expires = now + self.lifetime
        if principal.expires_at is not None:
            expires = min(expires, principal.expires_at)
        cookie = secrets.token_urlsafe(32)
        record = SessionRecord(session_digest(cookie), principal.id, hash_token(token), principal.service, now, expires)
        self.store.create_session(record, now)
        return cookie, principal, expires

    def resolve(self, cookie: str | None) -> Principal:
        """The principal of a live session; ``Unauthenticated`` otherwise (an ended session is removed)."""
        if not cookie or len(cookie) > MAX_COOKIE_LENGTH:
            raise Unauthenticated("not signed in")
        digest = session_digest(cookie)
        record = self.store.get_session(digest)
        if record is None:
            raise Unauthenticated("not signed in (or the session has ended)")
        if self.clock() >= record.expires_at:
            self.store.delete_session(digest)
            raise Unauthenticated("the session has expired; sign in again")
        try:
            return self.authenticator.authenticate_digest(record.token_hash)
        except Unauthenticated:
            self.store.delete_session(digest)
            raise Unauthenticated("the session's token was revoked or has expired; sign in again") from None

    def sign_out(self, cookie: str | None) -> None:
        if cookie and len(cookie) <= MAX_COOKIE_LENGTH:
            self.store.delete_session(session_digest(cookie))
