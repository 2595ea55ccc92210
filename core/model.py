"""Value objects of the domain: scopes, keys, versions, changes, principals.

>>> parse_key("database.host")
'database.host'
>>> Scope("payments", "prod").env
'prod'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from tessera.core.errors import InvalidKey, InvalidRequest

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_KEY_LENGTH = 256
MAX_SEGMENTS = 32
# First segments that are routes under /config, so a key cannot shadow them.
RESERVED_FIRST_SEGMENTS = frozenset({"export", "import", "history", "rollback", "promote"})
DEFAULT = "default"


@dataclass(frozen=True, order=True)
class Scope:
    namespace: str = DEFAULT
    env: str = DEFAULT

    def with_env(self, env: str) -> Scope:
        return Scope(self.namespace, env)


def parse_name(raw: str | None, what: str) -> str:
    """Validate a namespace or environment name (``[a-z0-9][a-z0-9-]{0,62}``)."""
    if raw is None or raw == "":
        return DEFAULT
    if not isinstance(raw, str) or not NAME_PATTERN.match(raw):
        raise InvalidRequest(f"invalid {what} name: must match [a-z0-9][a-z0-9-]{{0,62}}")
    return raw


def parse_scope(namespace: str | None = None, env: str | None = None) -> Scope:
    return Scope(parse_name(namespace, "namespace"), parse_name(env, "env"))


def _check_segments(raw: object, what: str) -> list[str]:
    if not isinstance(raw, str) or raw == "":
        raise InvalidKey(f"{what} must be a non-empty string")
    if len(raw) > MAX_KEY_LENGTH:
        raise InvalidKey(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    segments = raw.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidKey(f"{what} has more than {MAX_SEGMENTS} segments")
    for segment in segments:
        if not SEGMENT_PATTERN.match(segment):
            raise InvalidKey(f"{what} segments must match [A-Za-z0-9_-]{{1,64}} (dot-separated, no empty segment)")
    return segments


def parse_key(raw: object) -> str:
    """Validate a dot-path key; raise :class:`InvalidKey` with a clear message otherwise."""
    segments = _check_segments(raw, "key")
    if segments[0] in RESERVED_FIRST_SEGMENTS:
        raise InvalidKey(f"key may not start with the reserved segment '{segments[0]}'")
    return raw  # type: ignore[return-value]


def parse_prefix(raw: str | None) -> str:
    """A ``prefix`` query parameter: empty means everything; otherwise whole segments."""
    if raw is None or raw == "":
        return ""
    _check_segments(raw, "prefix")
    return raw


def is_under(key: str, prefix: str) -> bool:
    """Whole-segment prefix match: ``database`` covers ``database.host`` and ``database``, not ``databases.x``."""
    return prefix == "" or key == prefix or key.startswith(prefix + ".")


def ancestors(key: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b"]``: the keys that may not hold a value while ``key`` does."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ROLLBACK = "rollback"


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the microsecond when there is one."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Version:
    """One immutable version of a key. ``envelope`` holds the sealed value (never plaintext);
    it is ``None`` for a deletion, and may be ``None`` when a store loads it lazily (see ``envelope_ref``)."""

    scope: Scope
    key: str
    version: int
    action: Action
    secret: bool
    updated_at: datetime
    updated_by: str
    revision: int = 0
    rolled_back_from: int | None = None
    envelope: bytes | None = None
    envelope_ref: str | None = None
    key_id: str | None = None

    @property
    def deleted(self) -> bool:
        return self.action is Action.DELETE


@dataclass(frozen=True)
class Change:
    """A change-log entry: what the revision ``revision`` did. Watchers read these in order."""

    revision: int
    scope: Scope
    key: str
    version: int
    action: Action
    secret: bool


@dataclass(frozen=True)
class Environment:
    name: str
    parent: str | None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the root token or a service token."""

    id: str
    service: str
    policies: tuple[str, ...] = ()
    expires_at: datetime | None = None
    is_root: bool = False


ROOT = Principal(id="root", service="root", is_root=True)
CONFIG_FILE = Principal(id="config-file", service="config-file", is_root=True)
