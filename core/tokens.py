"""Token strings: generated with 256 bits of randomness, recognisable by their ``tsr_`` prefix,
stored only as a SHA-256 digest and compared in constant time.

A fast hash is right here (unlike passwords): a 256-bit random token cannot be guessed from its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "tsr_"


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def matches(token: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), expected_hash)
