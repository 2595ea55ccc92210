"""Value objects of access control and audit: policy rules, token records, audit entries, console sessions.

Kept apart from ``core/model.py`` so the config domain and the access domain can evolve separately;
``core/ports.py`` names these in the storage Protocols.

>>> Rule.from_dict({"path": "auth.*", "capabilities": ["read"]}).effect
'allow'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tessera.core.access import CAPABILITIES
from tessera.core.errors import InvalidRequest
from tessera.core.model import MAX_KEY_LENGTH, MAX_SEGMENTS, NAME_PATTERN, SEGMENT_PATTERN

WILDCARD = "*"
EFFECTS = ("allow", "deny")
RULE_FIELDS = frozenset({"path", "capabilities", "effect", "namespaces", "envs"})


def check_path(path: str) -> None:
    """Validate a policy (or watch) path pattern; ``400 invalid_request`` otherwise.

    The grammar lives here with the rule it validates; ``core/policy.py`` compiles it into matchers.
    """
    if path == WILDCARD:
        return
    if not path or len(path) > MAX_KEY_LENGTH:
        raise InvalidRequest("a rule path must be a key, 'prefix.*', '*' or use '*' as whole segments")
    segments = path.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidRequest(f"a rule path has at most {MAX_SEGMENTS} segments")
    for segment in segments:
        if segment != WILDCARD and not SEGMENT_PATTERN.match(segment):
            raise InvalidRequest(
                f"invalid rule path '{path}': segments are [A-Za-z0-9_-]{{1,64}} or a whole-segment '*'"
            )


def _names(raw: object, what: str) -> tuple[str, ...]:
    if raw is None:
        return (WILDCARD,)
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) for item in raw):
        raise InvalidRequest(f"'{what}' must be a non-empty list of names or [\"*\"]")
    for item in raw:
        if item != WILDCARD and not NAME_PATTERN.match(item):
            raise InvalidRequest(f"'{what}' entries must be '*' or match [a-z0-9][a-z0-9-]{{0,62}}")
    return tuple(raw)


@dataclass(frozen=True)
class Rule:
    """One rule of a policy. ``path`` uses the policy path syntax (see ``core/policy.py``)."""

    path: str
    capabilities: tuple[str, ...]
    effect: str = "allow"
    namespaces: tuple[str, ...] = (WILDCARD,)
    envs: tuple[str, ...] = (WILDCARD,)

    @classmethod
    def from_dict(cls, raw: object) -> Rule:
        """Validate one rule of a request body; any problem is ``400 invalid_request``."""
        if not isinstance(raw, dict):
            raise InvalidRequest("each rule must be an object")
        unknown = set(raw) - RULE_FIELDS
        if unknown:
            raise InvalidRequest(f"unknown rule field(s): {', '.join(sorted(unknown))}")
        path = raw.get("path")
        if not isinstance(path, str):
            raise InvalidRequest("'path' must be a string")
        check_path(path)
        capabilities = raw.get("capabilities")
        if not isinstance(capabilities, list) or not capabilities or not all(isinstance(c, str) for c in capabilities):
            raise InvalidRequest("'capabilities' must be a non-empty list of strings")
        bad = [c for c in capabilities if c not in CAPABILITIES]
        if bad:
            raise InvalidRequest(f"unknown capability '{bad[0]}': use {', '.join(CAPABILITIES)}")
        effect = raw.get("effect", "allow")
        if effect not in EFFECTS:
            raise InvalidRequest("'effect' must be 'allow' or 'deny'")
        return cls(
            path=path,
            capabilities=tuple(dict.fromkeys(capabilities)),
            effect=effect,
            namespaces=_names(raw.get("namespaces"), "namespaces"),
            envs=_names(raw.get("envs"), "envs"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "capabilities": list(self.capabilities),
            "effect": self.effect,
            "namespaces": list(self.namespaces),
            "envs": list(self.envs),
        }


@dataclass(frozen=True)
class PolicyDoc:
    """A named policy as stored. ``version`` goes up on every replace, so compiled forms can be cached by it."""

    name: str
    rules: tuple[Rule, ...]
    version: int = 1
    updated_at: datetime | None = None


@dataclass(frozen=True)
class TokenRecord:
    """A service token as stored: only the SHA-256 of the token string, never the string."""

    id: str
    service: str
    policies: tuple[str, ...]
    token_hash: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = None

    def __repr__(self) -> str:  # the digest is not secret, but keep it out of logs anyway
        return f"TokenRecord(id={self.id!r}, service={self.service!r}, policies={self.policies!r})"

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


OUTCOMES = ("allowed", "denied", "not_found", "error", "unauthenticated")


@dataclass(frozen=True)
class AuditEntry:
    """One request, as the audit log records it. Never a value, never a token string.

    ``chain``/``seq``/``prev_hash``/``hash`` are set by the store when the entry is appended (see
    ``core/audit.py`` for the chaining scheme); before that they are empty.
    """

    ts: datetime
    request_id: str
    action: str
    outcome: str
    status: int
    service: str | None = None
    token_id: str | None = None
    namespace: str | None = None
    env: str | None = None
    key: str | None = None
    version: int | None = None
    target: str | None = None  # a policy, token id or env name an admin request acted on
    client: str | None = None  # the client address (brute-force damping works on it too)
    method: str | None = None
    path: str | None = None
    # "request": recorded before a mutating request runs (outcome "attempt", status 0), so a committed change
    # is never without a record even if its outcome entry cannot be written; "response": what happened.
    phase: str = "response"
    chain: str = ""
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    @property
    def id(self) -> str:
        """Stable, unique id: the chain and the position in it."""
        return f"{self.chain}:{self.seq}"

    @classmethod
    def response(
        cls, ts: datetime, request_id: str, action: str, outcome: str, status: int, service: str | None,
        token_id: str | None, namespace: str | None, env: str | None, key: str | None, version: int | None,
        target: str | None, client: str | None, method: str | None, path: str | None,
    ) -> AuditEntry:  # fmt: skip
        """``AuditEntry(...)`` of a response record (not yet appended), without the frozen dataclass's setattr per
        field: every request makes one, and that was a third of a read's record on the event loop."""
        entry = object.__new__(cls)
        object.__setattr__(entry, "__dict__", {
            "ts": ts, "request_id": request_id, "action": action, "outcome": outcome, "status": status,
            "service": service, "token_id": token_id, "namespace": namespace, "env": env, "key": key,
            "version": version, "target": target, "client": client, "method": method, "path": path,
            "phase": "response", "chain": "", "seq": 0, "prev_hash": "", "hash": "",
        })  # fmt: skip
        return entry


@dataclass(frozen=True)
class SessionRecord:
    """A console session as stored: the digest of its cookie and of its token, never either string."""

    id_hash: str
    token_id: str
    token_hash: str
    service: str
    created_at: datetime
    expires_at: datetime

    def __repr__(self) -> str:
        return f"SessionRecord(token_id={self.token_id!r}, service={self.service!r}, expires_at={self.expires_at!r})"
