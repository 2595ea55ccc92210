"""Tokens, policies and the audit log in the aws backend's DynamoDB table (the same table as ``AwsStore``).

Items (``PK``/``SK`` strings)::

    TOKEN             <id>            a token: service, policies, token_hash, created/expires/revoked_at
    TOKENHASH         <sha256>        the same record, addressed by the digest of its string (the login lookup)
    POLICY            <name>          rules (JSON), version, updated_at
    POLICYCOUNTER     version         the policy version counter (``#v``): versions never repeat; kept apart
                                      from the revision counter so the policy function cannot touch that one

The token string is never stored, only its SHA-256. The audit log's items and how its chains are sharded:
``core/backends/aws/audit.py``. No botocore exception leaves the module (``Unavailable`` instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import RESPONSE
from tessera.core.backends.aws import AwsStore, CallCounter, ClientFailure, Table
from tessera.core.backends.aws.audit import DEFAULT_RETENTION, MAX_BLOCK_RECORDS, SHARDS, AuditReader, ShardWriter
from tessera.core.backends.aws.idempotency import mark_item
from tessera.core.backends.aws.items import n as _n
from tessera.core.backends.aws.items import s as _s
from tessera.core.backends.aws.stamp import AuthStamp
from tessera.core.errors import Unavailable
from tessera.core.idempotency import RETENTION, IdempotencyGuard, IdempotencyInProgress

TOKEN_PK, TOKEN_HASH_PK, POLICY_PK = "TOKEN", "TOKENHASH", "POLICY"
POLICY_COUNTER_PK, POLICY_COUNTER_SK = "POLICYCOUNTER", "version"


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _moment(item: dict[str, Any], name: str) -> datetime | None:
    value = item.get(name, {}).get("S")
    return datetime.fromisoformat(value) if value else None


def _token_item(pk: str, sk: str, record: TokenRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "PK": _s(pk),
        "SK": _s(sk),
        "id": _s(record.id),
        "service": _s(record.service),
        "policies": _s(json.dumps(list(record.policies))),
        "token_hash": _s(record.token_hash),
        "created_at": _s(_stamp(record.created_at) or ""),
    }
    if record.expires_at is not None:
        item["expires_at"] = _s(_stamp(record.expires_at) or "")
    return item


def _token(item: dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        id=item["id"]["S"],
        service=item["service"]["S"],
        policies=tuple(json.loads(item["policies"]["S"])),
        token_hash=item["token_hash"]["S"],
        created_at=_moment(item, "created_at") or datetime.min.replace(tzinfo=UTC),
        expires_at=_moment(item, "expires_at"),
        revoked_at=_moment(item, "revoked_at"),
    )


class DynamoAccessStore:
    """``TokenStore`` + ``PolicyStore`` + ``AuditStore`` on the aws backend's table.

    >>> # access = DynamoAccessStore.for_store(store)       # shares the store's clients and audit writer
    >>> # access.append(None, [entry])                      # → [entry linked into this process's shard]
    """

    max_batch = MAX_BLOCK_RECORDS  # a group-committed batch is one item (one write)
    durable_appends = True  # every append is a durable DynamoDB write: nothing to flush
    chain_name = None  # the store picks the chain: the audit shard this process holds

    def __init__(
        self,
        *,
        table: str,
        dynamodb: Any,
        calls: CallCounter | None = None,
        writer: ShardWriter | None = None,
        retention: timedelta = DEFAULT_RETENTION,
        clock: Callable[[], float] | None = None,
        shards: int = SHARDS,
        stamp: AuthStamp | None = None,
    ) -> None:
        self.table = table
        self.dynamodb = dynamodb
        self.calls = calls if calls is not None else CallCounter()
        self.db = Table(table, dynamodb, self.calls)
        clocked: dict[str, Any] = {"clock": clock} if clock is not None else {}
        self.writer = writer or ShardWriter(self.db, retention, shards=shards, **clocked)
        self.reader = AuditReader(self.db, **clocked)
        # Token and policy lookups are answered from memory while the auth stamp stays put (aws/stamp.py).
        self.stamp = stamp or AuthStamp(self.db)
        self._tokens = self.stamp.cache()
        self._policies = self.stamp.cache()

    @classmethod
    def for_store(cls, store: AwsStore) -> DynamoAccessStore:
        """Shares the store's clients, counter and audit writer (so a commit's record extends the same chain)."""
        return cls(table=store.table, dynamodb=store.dynamodb, calls=store.calls, writer=store.audit_writer(), stamp=store.auth_stamp)

    def _ddb(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return self.db.call(operation, handled, **params)

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        return self.db.get(pk, sk)

    def _query(self, pk: str, *, forward: bool = True, after: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self.db.partition(pk, forward=forward, after=after, limit=limit)

    # ------------------------------------------------------------------ tokens
    idempotency = True  # create_token marks an Idempotency-Key claim in its own transaction

    def create_token(self, record: TokenRecord, guard: IdempotencyGuard | None = None) -> None:
        condition = "attribute_not_exists(PK)"
        items = [
            {"Put": {"TableName": self.table, "Item": _token_item(TOKEN_PK, record.id, record), "ConditionExpression": condition}},
            {"Put": {"TableName": self.table, "Item": _token_item(TOKEN_HASH_PK, record.token_hash, record), "ConditionExpression": condition}},
            self.stamp.bump(),
        ]  # fmt: skip
        if guard is not None:  # the claim is marked with the token's creation, or nothing is created
            items.append(mark_item(self.table, guard, ("token", record.id), record.created_at + RETENTION))
        try:
            self._ddb("TransactWriteItems", frozenset({"TransactionCanceledException"}), TransactItems=items)
        except ClientFailure as failure:
            if guard is not None and failure.cancellation_codes[3:4] == ["ConditionalCheckFailed"]:
                raise IdempotencyInProgress("this request's Idempotency-Key was taken over by a retry; nothing was changed") from None
            raise Unavailable("dynamodb refused the token's creation; nothing was changed") from None
        self.stamp.changed()

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The login lookup: from memory while the auth stamp has not moved (unknown digests too)."""

        def load() -> TokenRecord | None:
            item = self._get(TOKEN_HASH_PK, token_hash)
            return _token(item) if item else None

        return self._tokens.get(token_hash, load)  # type: ignore[no-any-return]

    def get_token(self, token_id: str) -> TokenRecord | None:
        item = self._get(TOKEN_PK, token_id)
        return _token(item) if item else None

    def list_tokens(self) -> list[TokenRecord]:
        records = [_token(item) for item in self._query(TOKEN_PK)]
        return sorted((r for r in records if r.revoked_at is None), key=lambda r: (r.created_at, r.id))

    def revoke_token(self, token_id: str, when: datetime) -> bool:
        record = self.get_token(token_id)
        if record is None or record.revoked_at is not None:
            return False
        update = {
            "UpdateExpression": "SET revoked_at = :when",
            "ConditionExpression": "attribute_exists(PK)",
            "ExpressionAttributeValues": {":when": _s(_stamp(when) or "")},
        }
        self._ddb(
            "TransactWriteItems",
            TransactItems=[
                {"Update": {"TableName": self.table, "Key": {"PK": _s(TOKEN_PK), "SK": _s(token_id)}, **update}},
                {"Update": {"TableName": self.table, "Key": {"PK": _s(TOKEN_HASH_PK), "SK": _s(record.token_hash)}, **update}},
                self.stamp.bump(),
            ],
        )  # fmt: skip
        self.stamp.changed()
        return True

    # ------------------------------------------------------------------ policies
    def put_policy(self, name: str, rules: tuple[Rule, ...], when: datetime) -> PolicyDoc:
        counter = self._ddb(
            "UpdateItem",
            TableName=self.table,
            Key={"PK": _s(POLICY_COUNTER_PK), "SK": _s(POLICY_COUNTER_SK)},
            UpdateExpression="ADD #v :one",
            ExpressionAttributeNames={"#v": "v"},
            ExpressionAttributeValues={":one": _n(1)},
            ReturnValues="UPDATED_NEW",
        )
        version = int(counter["Attributes"]["v"]["N"])
        item = {
            "PK": _s(POLICY_PK),
            "SK": _s(name),
            "rules": _s(json.dumps([rule.to_dict() for rule in rules])),
            "version": _n(version),
            "updated_at": _s(_stamp(when) or ""),
        }
        self._ddb("TransactWriteItems", TransactItems=[{"Put": {"TableName": self.table, "Item": item}}, self.stamp.bump()])
        self.stamp.changed()
        return PolicyDoc(name, rules, version, when)

    @staticmethod
    def _policy(item: dict[str, Any]) -> PolicyDoc:
        rules = tuple(Rule.from_dict(raw) for raw in json.loads(item["rules"]["S"]))
        return PolicyDoc(item["SK"]["S"], rules, int(item["version"]["N"]), _moment(item, "updated_at"))

    def get_policy(self, name: str) -> PolicyDoc | None:
        def load() -> PolicyDoc | None:
            item = self._get(POLICY_PK, name)
            return self._policy(item) if item else None

        return self._policies.get(("one", name), load)  # type: ignore[no-any-return]

    def list_policies(self) -> list[PolicyDoc]:
        return list(self._policies.get(("all",), lambda: [self._policy(item) for item in self._query(POLICY_PK)]))

    def delete_policy(self, name: str) -> bool:
        delete = {"TableName": self.table, "Key": {"PK": _s(POLICY_PK), "SK": _s(name)}, "ConditionExpression": "attribute_exists(PK)"}
        try:
            self._ddb("TransactWriteItems", frozenset({"TransactionCanceledException"}),
                      TransactItems=[{"Delete": delete}, self.stamp.bump()])  # fmt: skip
        except ClientFailure as failure:
            if failure.cancellation_codes[:1] == ["ConditionalCheckFailed"]:
                return False
            raise Unavailable("dynamodb refused the change; nothing was changed") from failure
        self.stamp.changed()
        return True

    # ------------------------------------------------------------------ audit (core/backends/aws/audit.py)
    def append(self, chain: str | None, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Appends to the shard this process holds (``chain`` is not used: the store picks the chain; the
        returned entries name it). One ``PutItem`` per call, fail-closed: ``Unavailable`` and nothing written."""
        return self.writer.append(entries)

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        """Newest first, across every chain: one ``Query`` per lane (3) for the newest ``limit`` entries."""
        return self.reader.query(key, service, since, limit, phase)

    def chains(self) -> dict[str, tuple[int, str]]:
        return self.reader.chains()

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        return self.reader.chain_entries(chain, after_seq, limit)

    def chain_starts(self) -> dict[str, tuple[int, str]]:
        """Retention checkpoints: where ``verify`` starts each chain (records before may have expired)."""
        return self.reader.chain_starts()
