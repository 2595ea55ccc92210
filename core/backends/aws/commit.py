"""The commit transaction: which items one ``TransactWriteItems`` writes, and what a cancellation means.

A commit writes, all or nothing (``docs/aws.md``, "Commit protocol"): the head (compare-and-set on its
version), the revision counter (compare-and-set on its value), the immutable version item, the change-log
entry, the ancestors' live-descendant counts when the key turns live or goes away, and — when the caller
hands one over — the request's audit record and the mark of its ``Idempotency-Key`` claim. ``TransactionPlan`` keeps, for every item, what it stands
for, so a cancellation's per-item reasons turn into the right domain error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.core.backends.aws.items import (
    COUNTER_PK,
    COUNTER_SK,
    b,
    change_item,
    get_n,
    head_pk,
    n,
    pad,
    s,
    version_attributes,
    version_pk,
)
from tessera.core.errors import KeyConflict, TesseraError, Unavailable, VersionConflict
from tessera.core.idempotency import IdempotencyInProgress
from tessera.core.model import Scope, Version, ancestors

MAX_TRANSACTION_ITEMS = 100  # DynamoDB's limit per TransactWriteItems
# Error codes that mean "try later": botocore already retried them with backoff before we see them.
RETRYABLE_ITEM_CODES = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
HEAD, COUNTER, VERSION, CHANGE, ANCESTOR, AUDIT, IDEM = "head", "counter", "version", "change", "ancestor", "audit", "idem"


@dataclass(frozen=True)
class Pending:
    """One version to commit, with what the commit needs to know about the key's previous version."""

    version: Version
    previous_live: bool
    obj: str | None = None  # its S3 object (live versions)
    sha: str | None = None

    @property
    def previous(self) -> int:
        return self.version.version - 1

    @property
    def live(self) -> bool:
        return not self.version.deleted

    @property
    def becomes_live(self) -> bool:
        return self.live and not self.previous_live

    @property
    def changes_ancestors(self) -> bool:
        return self.becomes_live or (self.previous_live and not self.live)

    def item_count(self) -> int:
        """Items this version adds to a transaction (head, version, change-log entry, ancestors)."""
        return 3 + (len(ancestors(self.version.key)) if self.changes_ancestors else 0)


def batch_items(pendings: list[tuple[int, Pending]], fixed: int, limit: int = MAX_TRANSACTION_ITEMS) -> list[list[tuple[int, Pending]]]:
    """Pack pending versions (with their caller's indexes) into transactions of at most ``limit`` items, ``fixed``
    of them taken by each transaction's own items (the counter, the audit block), keeping list order. Shared ancestors
    count once per transaction; a version whose head is another's ancestor in the same transaction, or a key twice,
    starts the next one (one operation per item)."""
    batches: list[list[tuple[int, Pending]]] = []
    batch: list[tuple[int, Pending]] = []
    heads: set[tuple[Scope, str]] = set()
    above: set[tuple[Scope, str]] = set()
    used = fixed
    for entry in pendings:
        pending = entry[1]
        scope, key = pending.version.scope, pending.version.key
        parents = [(scope, name) for name in ancestors(key)] if pending.changes_ancestors else []
        clash = (scope, key) in heads or (scope, key) in above or any(parent in heads for parent in parents)
        need = 3 + sum(1 for parent in parents if parent not in above)
        if batch and (clash or used + need > limit):
            batches.append(batch)
            batch, heads, above, used = [], set(), set(), fixed
            need = 3 + len(parents)
        batch.append(entry)
        heads.add((scope, key))
        above.update(parents)
        used += need
    if batch:
        batches.append(batch)
    return batches


@dataclass
class TransactionPlan:
    """The items of one transaction and, index by index, what each one is: (role, pending index, detail)."""

    table: str
    items: list[dict[str, Any]] = field(default_factory=list)
    roles: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, role: str, index: int, item: dict[str, Any], detail: str = "") -> None:
        self.items.append(item)
        self.roles.append((role, index, detail))

    def counter(self, current: int, revision: int) -> None:
        """Exactly one commit can move the revision counter from ``current``."""
        condition = "attribute_not_exists(#v)" if current == 0 else "#v = :current"
        values: dict[str, Any] = {":next": n(revision)}
        if current:
            values[":current"] = n(current)
        self.add(COUNTER, -1, {
            "Update": {
                "TableName": self.table,
                "Key": {"PK": s(COUNTER_PK), "SK": s(COUNTER_SK)},
                "UpdateExpression": "SET #v = :next",
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#v": "v"},
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        })  # fmt: skip

    def version(self, index: int, pending: Pending, revision: int, change_expires: int) -> None:
        """Head, version item, change-log entry and ancestors of one pending version."""
        self._own_items(index, pending, revision, change_expires)
        # A key turning live needs every ancestor not live, and counts itself below each; a live key going
        # away uncounts itself. (Updates of a live key change neither.)
        if pending.changes_ancestors:
            delta = 1 if pending.becomes_live else -1
            for ancestor in ancestors(pending.version.key):
                self._ancestor(index, pending.version.scope, ancestor, delta, pending.becomes_live)

    def versions(self, pendings: list[Pending], first_revision: int, change_expires: int) -> None:
        """Several pending versions of different keys (an import's batch), revisions ``first_revision`` onwards in
        list order: each one's head, version item and change-log entry, and one update per ancestor they share
        (DynamoDB allows one operation per item in a transaction), its delta summed. See ``batch_items``."""
        shared: dict[tuple[Scope, str], list[Any]] = {}
        for index, pending in enumerate(pendings):
            self._own_items(index, pending, first_revision + index, change_expires)
            if pending.changes_ancestors:
                for ancestor in ancestors(pending.version.key):
                    entry = shared.setdefault((pending.version.scope, ancestor), [0, False])
                    entry[0] += 1 if pending.becomes_live else -1
                    entry[1] = entry[1] or pending.becomes_live
        for (scope, ancestor), (delta, guarded) in shared.items():
            self._ancestor(-1, scope, ancestor, delta, guarded)

    def _ancestor(self, index: int, scope: Scope, ancestor: str, delta: int, guarded: bool) -> None:
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"PK": s(head_pk(scope)), "SK": s(ancestor)},
            "UpdateExpression": "ADD below :delta",
            "ExpressionAttributeValues": {":delta": n(delta)},
        }
        if guarded:  # a key turns live below it: it must not hold a value
            update["ConditionExpression"] = "attribute_not_exists(live) OR live = :false"
            update["ExpressionAttributeValues"][":false"] = b(False)
            update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        self.add(ANCESTOR, index, {"Update": update}, ancestor)

    def _own_items(self, index: int, pending: Pending, revision: int, change_expires: int) -> None:
        version = pending.version
        scope, key = version.scope, version.key
        attributes = version_attributes(version, revision, pending.obj, pending.sha)
        names: dict[str, str] = {}
        values: dict[str, Any] = {":live": b(pending.live)}
        sets = ["live = :live"]
        for name, value in attributes.items():
            names[f"#{name}"] = name
            values[f":{name}"] = value
            sets.append(f"#{name} = :{name}")
        gone = [name for name in ("rb", "kid", "obj", "sha") if name not in attributes]
        names.update({f"#{name}": name for name in gone})
        if pending.previous == 0:
            condition = "attribute_not_exists(#ver)"
        else:
            condition = "#ver = :previous"
            values[":previous"] = n(pending.previous)
        if pending.becomes_live:  # a key turning live must have no live key below it
            condition += " AND (attribute_not_exists(below) OR below = :zero)"
            values[":zero"] = n(0)
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(f"#{name}" for name in gone) if gone else "")
        self.add(HEAD, index, {
            "Update": {
                "TableName": self.table,
                "Key": {"PK": s(head_pk(scope)), "SK": s(key)},
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        })  # fmt: skip
        self.add(VERSION, index, {
            "Put": {
                "TableName": self.table,
                "Item": {"PK": s(version_pk(scope, key)), "SK": s(pad(version.version)), **attributes},
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        })  # fmt: skip
        self.add(CHANGE, index, {
            "Put": {
                "TableName": self.table,
                "Item": change_item(version, revision, change_expires),
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        })  # fmt: skip

    def put(self, role: str, item: dict[str, Any], condition: str = "attribute_not_exists(PK)") -> None:
        """A plain conditional put (the audit record of the request that commits)."""
        self.add(role, -1, {"Put": {"TableName": self.table, "Item": item, "ConditionExpression": condition}})

    def batch_failures(
        self,
        reasons: list[Mapping[str, Any]],
        pending: list[Pending],
        read_head: Callable[[Version], Mapping[str, Any] | None],
    ) -> dict[int, TesseraError]:
        """A cancelled batch (``versions``): which of its pending versions failed their own checks, and why. Those
        leave the batch and the rest go again; an empty answer means only the counter lost (or a transient conflict)."""
        failed: dict[int, TesseraError] = {}
        for position, reason in enumerate(reasons):
            if reason.get("Code") != "ConditionalCheckFailed" or position >= len(self.roles):
                continue
            role, index, detail = self.roles[position]
            if role == HEAD:
                item = pending[index]
                old = reason.get("Item") or read_head(item.version) or {}
                current = get_n(old, "ver") or 0
                failed[index] = (VersionConflict("the key changed since it was read", current) if current != item.previous
                                 else KeyConflict("keys exist below this key, so it cannot hold a value"))  # fmt: skip
            elif role == VERSION:
                failed[index] = VersionConflict("the key changed since it was read", pending[index].version.version)
            elif role == ANCESTOR:
                for number, item in enumerate(pending):
                    if item.becomes_live and detail in ancestors(item.version.key):
                        failed[number] = KeyConflict(f"'{detail}' holds a value, so no key can be below it")
            elif role == AUDIT:
                raise Unavailable("the audit log moved under this writer; nothing was changed")
            elif role == IDEM:
                raise IdempotencyInProgress("this request's Idempotency-Key was taken over by a retry; nothing was changed")
        retryable = {"ConditionalCheckFailed", "None", *RETRYABLE_ITEM_CODES}
        unexpected = [reason.get("Code", "None") for reason in reasons if reason.get("Code", "None") not in retryable]
        if unexpected and not failed:
            raise Unavailable(f"dynamodb refused the commit ({unexpected[0]}); nothing was changed")
        return failed

    def raise_for_cancellation(
        self,
        reasons: list[Mapping[str, Any]],
        pending: list[Pending],
        read_head: Callable[[Version], Mapping[str, Any] | None],
    ) -> None:
        """Turn a cancelled transaction into the domain error, or return when it is worth retrying
        (only the revision counter lost, or a transient per-item conflict)."""
        codes = [reason.get("Code", "None") for reason in reasons]
        if any(role == IDEM and codes[position] == "ConditionalCheckFailed"
               for position, (role, _, _) in enumerate(self.roles[: len(codes)])):  # fmt: skip
            # First: a claim taken over means a retry owns the write now, whatever else changed meanwhile.
            raise IdempotencyInProgress("this request's Idempotency-Key was taken over by a retry; nothing was changed")
        for position, code in enumerate(codes):
            if code != "ConditionalCheckFailed" or position >= len(self.roles):
                continue
            role, index, detail = self.roles[position]
            if role == HEAD:
                item = pending[index]
                old = reasons[position].get("Item") or read_head(item.version) or {}
                current = get_n(old, "ver") or 0
                if current != item.previous:
                    raise VersionConflict("the key changed since it was read", current)
                raise KeyConflict("keys exist below this key, so it cannot hold a value")
            if role == ANCESTOR:
                raise KeyConflict(f"'{detail}' holds a value, so no key can be below it")
            if role == AUDIT:
                raise Unavailable("the audit log moved under this writer; nothing was changed")
        retryable = {"ConditionalCheckFailed", "None", *RETRYABLE_ITEM_CODES}
        unexpected = [code for code in codes if code not in retryable]
        if unexpected:
            raise Unavailable(f"dynamodb refused the commit ({unexpected[0]}); nothing was changed")
