"""Typed results: what each call returns, built from the contract's JSON shapes.

Values of secrets and of subtrees (which may hold secret leaves) are left out of ``repr``, so logging a result
never prints a secret.

>>> entry = Entry(key="db.password", value="s3cret", version=2, secret=True)
>>> entry
Entry(key='db.password', value=<secret>, version=2, secret=True, stale=False, namespace='default', env='default')
>>> entry.value
's3cret'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time from the server (``...Z``) as an aware ``datetime``; ``None`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _format_time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True, repr=False)
class Entry:
    """A key's value as read: ``GET /config/{key}``.

    ``version`` is ``None`` for a subtree (a key with descendants but no value of its own; ``value`` is then the
    nested object and ``redacted`` names leaves you may list but not read). ``stale`` is true only when the value
    was served from the last-known-good store because no node answered.

    >>> Entry(key="app.name", value="demo", version=1).value
    'demo'
    """

    key: str
    value: Any
    version: int | None
    secret: bool = False
    stale: bool = False
    namespace: str = "default"
    env: str = "default"
    resolved_env: str | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None
    revision: int | None = None
    redacted: tuple[str, ...] = ()

    @property
    def is_subtree(self) -> bool:
        """True for a subtree read (no value of its own; ``value`` is the nested object).

        >>> Entry(key="database", value={"host": "h"}, version=None).is_subtree
        True
        """
        return self.version is None

    def __repr__(self) -> str:
        shown = "<secret>" if self.secret else "<subtree>" if self.is_subtree else repr(self.value)
        return (f"Entry(key={self.key!r}, value={shown}, version={self.version!r}, secret={self.secret!r}, "
                f"stale={self.stale!r}, namespace={self.namespace!r}, env={self.env!r})")

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Entry:
        return cls(
            key=str(body["key"]),
            value=body["value"],
            version=body.get("version"),
            secret=bool(body.get("secret", False)),
            namespace=str(body.get("namespace", "default")),
            env=str(body.get("env", "default")),
            resolved_env=body.get("resolved_env"),
            updated_at=parse_time(body.get("updated_at")),
            updated_by=body.get("updated_by"),
            revision=body.get("revision"),
            redacted=tuple(body.get("redacted") or ()),
        )

    def as_stale(self) -> Entry:
        """The same entry marked as served from the last-known-good store.

        >>> Entry(key="a", value=1, version=1).as_stale().stale
        True
        """
        return replace(self, stale=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON form kept by the last-known-good file (and printed by ``tessera get --json``).

        >>> Entry(key="a", value=1, version=1).to_json()["value"]
        1
        """
        return {
            "key": self.key, "value": self.value, "version": self.version, "secret": self.secret,
            "namespace": self.namespace, "env": self.env, "resolved_env": self.resolved_env,
            "updated_at": _format_time(self.updated_at), "updated_by": self.updated_by, "revision": self.revision,
            **({"redacted": list(self.redacted)} if self.is_subtree else {}),
            **({"stale": True} if self.stale else {}),
        }


@dataclass(frozen=True)
class WriteResult:
    """What a ``put`` committed (no value). ``created``: the key had no live value; ``replayed``: the server
    answered a retry of this call from its idempotency record instead of writing again.

    >>> WriteResult(key="a", version=2, revision=9, secret=False, action="update").version
    2
    """

    key: str
    version: int
    revision: int | None
    secret: bool
    action: str | None = None
    namespace: str = "default"
    env: str = "default"
    updated_at: datetime | None = None
    updated_by: str | None = None
    created: bool = False
    replayed: bool = False

    @classmethod
    def _from_body(cls, body: dict[str, Any], *, status: int, replayed: bool) -> WriteResult:
        return cls(
            key=str(body["key"]), version=int(body["version"]), revision=body.get("revision"),
            secret=bool(body.get("secret", False)), action=body.get("action"),
            namespace=str(body.get("namespace", "default")), env=str(body.get("env", "default")),
            updated_at=parse_time(body.get("updated_at")), updated_by=body.get("updated_by"),
            created=status == 201, replayed=replayed,
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON shape of a write's answer (``tessera put --json`` prints it).

        >>> WriteResult(key="a", version=2, revision=9, secret=False, action="update").to_json()["version"]
        2
        """
        return {"key": self.key, "version": self.version, "revision": self.revision, "secret": self.secret,
                "action": self.action, "namespace": self.namespace, "env": self.env,
                "updated_at": _format_time(self.updated_at), "updated_by": self.updated_by}


@dataclass(frozen=True)
class DeleteResult:
    """A deletion: the tombstone's ``version`` (a deletion is a version too)."""

    key: str
    version: int
    revision: int | None = None
    replayed: bool = False


@dataclass(frozen=True)
class RollbackResult:
    """A rollback: the new ``version`` whose value is ``rolled_back_from``'s."""

    key: str
    version: int
    rolled_back_from: int
    revision: int | None = None
    replayed: bool = False


@dataclass(frozen=True, repr=False)
class Version:
    """One version in a key's history (newest first). ``value`` only for non-secret versions that carry one
    (``has_value``); a deletion has none.
    """

    version: int
    action: str
    secret: bool
    updated_at: datetime | None = None
    updated_by: str | None = None
    revision: int | None = None
    rolled_back_from: int | None = None
    value: Any = None
    has_value: bool = False

    def __repr__(self) -> str:
        shown = f", value={self.value!r}" if self.has_value else ""
        return f"Version(version={self.version}, action={self.action!r}, secret={self.secret}{shown})"

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Version:
        return cls(
            version=int(body["version"]), action=str(body.get("action", "")), secret=bool(body.get("secret", False)),
            updated_at=parse_time(body.get("updated_at")), updated_by=body.get("updated_by"),
            revision=body.get("revision"), rolled_back_from=body.get("rolled_back_from"),
            value=body.get("value"), has_value="value" in body,
        )


HistoryEntry = Version


@dataclass(frozen=True)
class KeyInfo:
    """One key of a listing: metadata only, never a value."""

    key: str
    version: int
    secret: bool
    resolved_env: str | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> KeyInfo:
        return cls(key=str(body["key"]), version=int(body["version"]), secret=bool(body.get("secret", False)),
                   resolved_env=body.get("resolved_env"), updated_at=parse_time(body.get("updated_at")),
                   updated_by=body.get("updated_by"))


@dataclass(frozen=True)
class ImportResult:
    """What an import did, key by key counted; ``errors`` are ``{"key", "code", "message"}`` items."""

    created: int
    updated: int
    unchanged: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    replayed: bool = False


@dataclass(frozen=True)
class PromoteResult:
    """Keys copied by ``promote`` with their new versions in the target env, and how many were already equal."""

    promoted: list[tuple[str, int]]
    unchanged: int
    replayed: bool = False


@dataclass(frozen=True, repr=False)
class Event:
    """One committed change seen by a watch, in revision order. ``value`` is absent (``None``, ``has_value``
    false) for deletions and for secrets.
    """

    revision: int
    key: str
    version: int | None
    action: str
    namespace: str = "default"
    env: str = "default"
    secret: bool = False
    value: Any = None
    has_value: bool = False

    @property
    def deleted(self) -> bool:
        """True for a deletion (which carries no value).

        >>> Event(revision=5, key="a", version=3, action="delete").deleted
        True
        """
        return self.action == "delete"

    def __repr__(self) -> str:
        shown = f", value={self.value!r}" if self.has_value else ""
        return f"Event(revision={self.revision}, key={self.key!r}, version={self.version}, action={self.action!r}{shown})"

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Event:
        return cls(
            revision=int(body["revision"]), key=str(body["key"]), version=body.get("version"),
            action=str(body.get("action", "")), namespace=str(body.get("namespace", "default")),
            env=str(body.get("env", "default")), secret=bool(body.get("secret", False)),
            value=body.get("value"), has_value="value" in body,
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON shape of an event (``tessera watch`` prints one per line).

        >>> Event(revision=5, key="a", version=1, action="create", value=1, has_value=True).to_json()["value"]
        1
        """
        body: dict[str, Any] = {"revision": self.revision, "key": self.key, "version": self.version, "action": self.action,
                                "namespace": self.namespace, "env": self.env, "secret": self.secret}
        if self.has_value:
            body["value"] = self.value
        return body


@dataclass(frozen=True)
class Health:
    """``GET /health``: the node is alive; ``revision`` is the store's latest."""

    status: str
    backend: str
    revision: int
    version: str | None = None  # the server's release (servers before 0.3 do not say)


@dataclass(frozen=True, repr=False)
class DiffItem:
    """One key of ``GET /diff``. ``value`` (added/removed) or ``from_value``/``to_value`` (changed) are absent for
    secrets (``has_values`` false); ``to_version`` is the key's version in the target env itself (0: none), what
    ``promote`` wants in ``expected``.
    """

    key: str
    secret: bool
    to_version: int = 0
    value: Any = None
    from_value: Any = None
    to_value: Any = None
    has_values: bool = False

    def __repr__(self) -> str:
        return f"DiffItem(key={self.key!r}, secret={self.secret}, to_version={self.to_version})"

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> DiffItem:
        return cls(key=str(body["key"]), secret=bool(body.get("secret", False)), to_version=int(body.get("to_version") or 0),
                   value=body.get("value"), from_value=body.get("from"), to_value=body.get("to"),
                   has_values=any(name in body for name in ("value", "from", "to")))


@dataclass(frozen=True)
class Diff:
    """``GET /diff?from=&to=`` over resolved values: ``added`` is in ``to`` only, ``removed`` in ``from`` only.

    >>> Diff([], [], []).keys
    []
    """

    added: list[DiffItem]
    removed: list[DiffItem]
    changed: list[DiffItem]

    @property
    def keys(self) -> list[str]:
        """Every key that differs, in key order."""
        return sorted(item.key for item in self.added + self.removed + self.changed)

    def expected(self) -> dict[str, int]:
        """``{key: to_version}`` for every key that differs: the ``expected`` of a promote of this diff.

        >>> Diff([DiffItem("a", False, 0)], [], [DiffItem("b", False, 3)]).expected()
        {'a': 0, 'b': 3}
        """
        return {item.key: item.to_version for item in self.added + self.removed + self.changed}


@dataclass(frozen=True)
class Layer:
    """One environment a read walked (nearest first): ``state`` is ``value``, ``absent``, ``deleted`` or ``hidden``."""

    env: str
    state: str
    version: int | None = None

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Layer:
        version = body.get("version")
        return cls(env=str(body["env"]), state=str(body["state"]), version=version if isinstance(version, int) else None)


@dataclass(frozen=True)
class Explanation:
    """``GET /config/{key}?explain=true``: the chain walked, and the entry read (``None`` when nothing resolved)."""

    key: str
    chain: list[Layer]
    entry: Entry | None = None


@dataclass(frozen=True)
class EnvInfo:
    """An environment and its parent (``None`` for ``default``)."""

    name: str
    parent: str | None = None


@dataclass(frozen=True, repr=False)
class TokenInfo:
    """A service token's metadata. ``token`` (the string) is set only in the answer that created it, once."""

    id: str
    service: str
    policies: tuple[str, ...] = ()
    expires_at: datetime | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never the token string
        return f"TokenInfo(id={self.id!r}, service={self.service!r}, policies={list(self.policies)!r})"

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> TokenInfo:
        return cls(id=str(body["id"]), service=str(body.get("service", "")), policies=tuple(body.get("policies") or ()),
                   expires_at=parse_time(body.get("expires_at")), token=body.get("token"))

    def to_json(self) -> dict[str, Any]:
        """The contract's shape (the token string only when this is the creating answer)."""
        body: dict[str, Any] = {"id": self.id, "service": self.service, "policies": list(self.policies),
                                "expires_at": _format_time(self.expires_at)}
        if self.token is not None:
            body["token"] = self.token
        return body


@dataclass(frozen=True)
class Policy:
    """A named list of rules (``{"path", "capabilities", "effect", "namespaces", "envs"}`` each)."""

    name: str
    rules: list[dict[str, Any]]


@dataclass(frozen=True)
class AuditRecord:
    """One audit entry (never a value nor a token string), newest first in ``audit()``."""

    id: Any
    ts: str | None
    service: str | None
    action: str | None
    outcome: str | None
    status: int | None = None
    key: str | None = None
    namespace: str | None = None
    env: str | None = None
    version: int | None = None
    request_id: str | None = None
    token_id: str | None = None

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> AuditRecord:
        return cls(id=body.get("id"), ts=body.get("ts"), service=body.get("service"), action=body.get("action"),
                   outcome=body.get("outcome"), status=body.get("status"), key=body.get("key"),
                   namespace=body.get("namespace"), env=body.get("env"), version=body.get("version"),
                   request_id=body.get("request_id"), token_id=body.get("token_id"))
