"""Item encoding of the aws backend: the table's key layout, DynamoDB attribute values, version items.

Table items (``PK``/``SK`` are strings; ``<v>`` and ``<r>`` are zero-padded to 20 digits so they sort)::

    H#<ns>#<env>      <key>          head: latest version's metadata (+ ``below``: live keys under this path)
    V#<ns>#<env>#<key> <v>           version: immutable metadata, ``obj`` names its S3 object
    COUNTER           revision       the store-wide revision (``#v``)
    CHANGES           <r>            change-log entry, expires by TTL (``expires_at``)
    ENVS              <name>         environment and its parent
    META              <name>         small settings (the root token's digest)

Tokens, policies and the audit log have their own partitions (``aws_access.py``, ``aws/audit.py``), and so do
``Idempotency-Key`` claims (``IDEM#<token id>``, ``aws/idempotency.py``).

>>> head_pk(Scope("billing", "prod")), version_pk(Scope(), "db.host"), pad(42)
('H#billing#prod', 'V#default#default#db.host', '00000000000000000042')
>>> parse_object_key("v/default/prod/db.host/00000000000000000003-0123456789abcdef")
(Scope(namespace='default', env='prod'), 'db.host', 3)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tessera.core.model import Action, Change, Scope, Version

PAD = 20
COUNTER_PK, COUNTER_SK = "COUNTER", "revision"
CHANGES_PK = "CHANGES"
ENVS_PK = "ENVS"
META_PK = "META"
OBJECT_PREFIX = "v/"
TTL_ATTRIBUTE = "expires_at"  # the table's TTL attribute (epoch seconds): change log and audit records


def pad(number: int) -> str:
    return f"{number:0{PAD}d}"


def head_pk(scope: Scope) -> str:
    return f"H#{scope.namespace}#{scope.env}"


def version_pk(scope: Scope, key: str) -> str:
    return f"V#{scope.namespace}#{scope.env}#{key}"


def object_key(scope: Scope, key: str, version: int) -> str:
    """Unique per write attempt: an object is never overwritten, and a retried write never collides."""
    return f"{OBJECT_PREFIX}{scope.namespace}/{scope.env}/{key}/{pad(version)}-{secrets.token_hex(8)}"


def parse_object_key(name: str) -> tuple[Scope, str, int] | None:
    """``v/<ns>/<env>/<key>/<v>-<random>`` → (scope, key, version); None for anything else."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] + "/" != OBJECT_PREFIX:
        return None
    number = parts[4].split("-", 1)[0]
    if not number.isdigit():
        return None
    return Scope(parts[1], parts[2]), parts[3], int(number)


# ---------------------------------------------------------------------- attribute values
def s(value: str) -> dict[str, str]:
    """A string attribute value."""
    return {"S": value}


def n(value: int) -> dict[str, str]:
    """A number attribute value."""
    return {"N": str(value)}


def b(value: bool) -> dict[str, bool]:
    """A boolean attribute value."""
    return {"BOOL": value}


def get_s(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value["S"] if value is not None else None


def get_n(item: Mapping[str, Any], name: str) -> int | None:
    value = item.get(name)
    return int(value["N"]) if value is not None else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- versions and changes
def version_attributes(version: Version, revision: int, obj: str | None, sha: str | None) -> dict[str, Any]:
    """The metadata a head and a version item share."""
    attributes: dict[str, Any] = {
        "ns": s(version.scope.namespace),
        "env": s(version.scope.env),
        "key": s(version.key),
        "ver": n(version.version),
        "act": s(version.action.value),
        "sec": b(version.secret),
        "at": s(version.updated_at.isoformat()),
        "by": s(version.updated_by),
        "rev": n(revision),
    }
    if version.rolled_back_from is not None:
        attributes["rb"] = n(version.rolled_back_from)
    if version.key_id is not None:
        attributes["kid"] = s(version.key_id)
    if obj is not None:
        attributes["obj"] = s(obj)
        attributes["sha"] = s(sha or "")
    return attributes


def item_to_version(item: Mapping[str, Any]) -> Version:
    return Version(
        scope=Scope(item["ns"]["S"], item["env"]["S"]),
        key=item["key"]["S"],
        version=int(item["ver"]["N"]),
        action=Action(item["act"]["S"]),
        secret=bool(item["sec"]["BOOL"]),
        updated_at=datetime.fromisoformat(item["at"]["S"]),
        updated_by=item["by"]["S"],
        revision=int(item["rev"]["N"]),
        rolled_back_from=get_n(item, "rb"),
        envelope=None,
        envelope_ref=get_s(item, "obj"),
        key_id=get_s(item, "kid"),
    )


def change_item(version: Version, revision: int, expires_at: int) -> dict[str, Any]:
    """The change-log entry of a commit: what a watcher needs, never a value."""
    return {
        "PK": s(CHANGES_PK),
        "SK": s(pad(revision)),
        "rev": n(revision),
        "ns": s(version.scope.namespace),
        "env": s(version.scope.env),
        "key": s(version.key),
        "ver": n(version.version),
        "act": s(version.action.value),
        "sec": b(version.secret),
        TTL_ATTRIBUTE: n(expires_at),
    }


def item_to_change(item: Mapping[str, Any]) -> Change:
    return Change(
        revision=int(item["rev"]["N"]),
        scope=Scope(item["ns"]["S"], item["env"]["S"]),
        key=item["key"]["S"],
        version=int(item["ver"]["N"]),
        action=Action(item["act"]["S"]),
        secret=bool(item["sec"]["BOOL"]),
    )


def is_this_commit(item: Mapping[str, Any], version: Version, obj: str | None) -> bool:
    """Whether a head or version item was written by this very commit: a live write by its unique object
    key, a deletion (no object) by its version, author and timestamp."""
    if get_n(item, "ver") != version.version:
        return False
    if obj is not None:
        return get_s(item, "obj") == obj
    return get_s(item, "obj") is None and get_s(item, "by") == version.updated_by \
        and get_s(item, "at") == version.updated_at.isoformat()
