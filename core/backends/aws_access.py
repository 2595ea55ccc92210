"""Tokens, policies and the audit log in the aws backend's DynamoDB table (the same table as ``AwsStore``).

Items (``PK``/``SK`` strings; ``<seq>`` zero-padded to 20 digits so it sorts)::

    TOKEN             <id>            a token: service, policies, token_hash, created/expires/revoked_at
    TOKENHASH         <sha256>        the same record, addressed by the digest of its string (the login lookup)
    POLICY            <name>          rules (JSON), version, updated_at
    POLICYCOUNTER     version         the policy version counter (``#v``): versions never repeat; kept apart
                                      from the revision counter so the policy function cannot touch that one
    AUDIT#<chain>     <seq>           an audit entry (fields, prev_hash, hash)
    AUDITHEAD         <chain>         a chain's head: seq and hash of its last entry

The token string is never stored, only its SHA-256. Audit chains are per node (``node-<random>``, new for each
process or Lambda container), so nodes never contend on one item; each batch is one ``TransactWriteItems``
whose entry puts are conditioned on ``attribute_not_exists`` and whose head update is conditioned on the
previous head, so a chain cannot fork even if two writers shared a name (``core/audit.py``, ``docs/audit.md``).
No botocore exception leaves the module (``call_aws`` turns them into ``Unavailable``).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import GENESIS, RESPONSE, link
from tessera.core.backends.aws import AwsStore, CallCounter, ClientFailure, Table, pad
from tessera.core.backends.aws.items import n as _n
from tessera.core.backends.aws.items import s as _s
from tessera.core.errors import Unavailable

TOKEN_PK, TOKEN_HASH_PK, POLICY_PK = "TOKEN", "TOKENHASH", "POLICY"
POLICY_COUNTER_PK, POLICY_COUNTER_SK = "POLICYCOUNTER", "version"
AUDIT_PREFIX, AUDIT_HEAD_PK = "AUDIT#", "AUDITHEAD"
MAX_TRANSACTION_ITEMS = 100  # DynamoDB's limit per TransactWriteItems
SINCE_SLACK_SECONDS = 60  # entries of one chain are in time order up to a batch; keep reading a little past ``since``
AUDIT_FIELDS = ("request_id", "service", "token_id", "action", "namespace", "env", "key", "outcome", "target", "client", "method", "path")


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


def _audit_item(entry: AuditEntry) -> dict[str, Any]:
    item: dict[str, Any] = {
        "PK": _s(AUDIT_PREFIX + entry.chain),
        "SK": _s(pad(entry.seq)),
        "ts": _s(_stamp(entry.ts) or ""),
        "status": _n(entry.status),
        "prev_hash": _s(entry.prev_hash),
        "hash": _s(entry.hash),
    }
    for name in AUDIT_FIELDS:
        value = getattr(entry, name)
        if value is not None:
            item[name] = _s(value)
    if entry.version is not None:
        item["version"] = _n(entry.version)
    if entry.phase != RESPONSE:  # absent means "response" (and on items from before request entries)
        item["phase"] = _s(entry.phase)
    return item


def _audit(item: dict[str, Any]) -> AuditEntry:
    fields: dict[str, Any] = {name: item[name]["S"] if name in item else None for name in AUDIT_FIELDS}
    return AuditEntry(
        ts=datetime.fromisoformat(item["ts"]["S"]),
        status=int(item["status"]["N"]),
        version=int(item["version"]["N"]) if "version" in item else None,
        chain=item["PK"]["S"][len(AUDIT_PREFIX) :],
        seq=int(item["SK"]["S"]),
        prev_hash=item["prev_hash"]["S"],
        hash=item["hash"]["S"],
        phase=item["phase"]["S"] if "phase" in item else RESPONSE,
        **fields,
    )


class DynamoAccessStore:
    """``TokenStore`` + ``PolicyStore`` + ``AuditStore`` on the aws backend's table."""

    max_batch = MAX_TRANSACTION_ITEMS - 1  # the entries and the head update fit one transaction

    def __init__(self, *, table: str, dynamodb: Any, calls: CallCounter | None = None, chain_name: str | None = None) -> None:
        self.table = table
        self.dynamodb = dynamodb
        self.calls = calls if calls is not None else CallCounter()
        self.db = Table(table, dynamodb, self.calls)
        self.chain_name = chain_name or f"node-{secrets.token_hex(6)}"
        self._heads: dict[str, tuple[int, str]] = {}  # the heads this writer moved last (it is their only writer)
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store: AwsStore) -> DynamoAccessStore:
        return cls(table=store.table, dynamodb=store.dynamodb, calls=store.calls)

    def _ddb(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return self.db.call(operation, handled, **params)

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        return self.db.get(pk, sk)

    def _query(self, pk: str, *, forward: bool = True, after: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self.db.partition(pk, forward=forward, after=after, limit=limit)

    # ------------------------------------------------------------------ tokens
    def create_token(self, record: TokenRecord) -> None:
        condition = "attribute_not_exists(PK)"
        self._ddb(
            "TransactWriteItems",
            TransactItems=[
                {"Put": {"TableName": self.table, "Item": _token_item(TOKEN_PK, record.id, record), "ConditionExpression": condition}},
                {"Put": {"TableName": self.table, "Item": _token_item(TOKEN_HASH_PK, record.token_hash, record), "ConditionExpression": condition}},
            ],
        )  # fmt: skip

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        item = self._get(TOKEN_HASH_PK, token_hash)
        return _token(item) if item else None

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
            ],
        )  # fmt: skip
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
        self._ddb(
            "PutItem",
            TableName=self.table,
            Item={
                "PK": _s(POLICY_PK),
                "SK": _s(name),
                "rules": _s(json.dumps([rule.to_dict() for rule in rules])),
                "version": _n(version),
                "updated_at": _s(_stamp(when) or ""),
            },
        )
        return PolicyDoc(name, rules, version, when)

    @staticmethod
    def _policy(item: dict[str, Any]) -> PolicyDoc:
        rules = tuple(Rule.from_dict(raw) for raw in json.loads(item["rules"]["S"]))
        return PolicyDoc(item["SK"]["S"], rules, int(item["version"]["N"]), _moment(item, "updated_at"))

    def get_policy(self, name: str) -> PolicyDoc | None:
        item = self._get(POLICY_PK, name)
        return self._policy(item) if item else None

    def list_policies(self) -> list[PolicyDoc]:
        return [self._policy(item) for item in self._query(POLICY_PK)]

    def delete_policy(self, name: str) -> bool:
        response = self._ddb(
            "DeleteItem", TableName=self.table, Key={"PK": _s(POLICY_PK), "SK": _s(name)}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in response

    # ------------------------------------------------------------------ audit
    def _head(self, chain: str) -> tuple[int, str] | None:
        item = self._get(AUDIT_HEAD_PK, chain)
        return (int(item["seq"]["N"]), item["hash"]["S"]) if item else None

    def append(self, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]:
        if not entries:
            return []
        if len(entries) > self.max_batch:
            raise Unavailable(f"an audit batch holds at most {self.max_batch} entries here")
        with self._lock:
            head = self._heads.get(chain)
            if head is None:
                head = self._head(chain)
            last_seq, last_hash = head if head is not None else (0, GENESIS)
            linked = link(chain, entries, last_seq, last_hash)
            items: list[dict[str, Any]] = [
                {"Put": {"TableName": self.table, "Item": _audit_item(e), "ConditionExpression": "attribute_not_exists(PK)"}}
                for e in linked
            ]
            head_key = {"PK": _s(AUDIT_HEAD_PK), "SK": _s(chain)}
            new_head = {":seq": _n(linked[-1].seq), ":hash": _s(linked[-1].hash)}
            if head is None:
                items.append({"Put": {"TableName": self.table, "Item": {**head_key, "seq": new_head[":seq"], "hash": new_head[":hash"]},
                                      "ConditionExpression": "attribute_not_exists(PK)"}})  # fmt: skip
            else:
                items.append({"Update": {"TableName": self.table, "Key": head_key, "UpdateExpression": "SET seq = :seq, #h = :hash",
                                         "ConditionExpression": "seq = :last", "ExpressionAttributeNames": {"#h": "hash"},
                                         "ExpressionAttributeValues": {**new_head, ":last": _n(last_seq)}}})  # fmt: skip
            try:
                self._ddb("TransactWriteItems", frozenset({"TransactionCanceledException"}), TransactItems=items)
            except ClientFailure as exc:
                self._heads.pop(chain, None)  # someone else moved this chain: re-read before the next batch
                raise Unavailable("the audit chain moved under this writer; nothing was written") from exc
            except Exception:
                self._heads.pop(chain, None)
                raise
            self._heads[chain] = (linked[-1].seq, linked[-1].hash)
            return linked

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        """Newest first, across every chain (one backwards query per chain, stopping early); ``phase`` as in SQLite."""
        floor = _stamp(since) if since is not None else None
        found: list[AuditEntry] = []
        for chain in self.chains():
            kept = 0
            for item in self._query(AUDIT_PREFIX + chain, forward=False):
                ts = item["ts"]["S"]
                if floor is not None and ts < floor:
                    if datetime.fromisoformat(ts).timestamp() < since.timestamp() - SINCE_SLACK_SECONDS:  # type: ignore[union-attr]
                        break
                    continue
                if key is not None and item.get("key", {}).get("S") != key:
                    continue
                if service is not None and item.get("service", {}).get("S") != service:
                    continue
                if phase is not None and item.get("phase", {}).get("S", RESPONSE) != phase:
                    continue
                found.append(_audit(item))
                kept += 1
                if kept >= limit:
                    break
        found.sort(key=lambda e: (e.ts, e.seq), reverse=True)
        return found[:limit]

    def chains(self) -> dict[str, tuple[int, str]]:
        return {item["SK"]["S"]: (int(item["seq"]["N"]), item["hash"]["S"]) for item in self._query(AUDIT_HEAD_PK)}

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        return [_audit(item) for item in self._query(AUDIT_PREFIX + chain, after=pad(after_seq), limit=limit)]
