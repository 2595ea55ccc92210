"""``Idempotency-Key`` claims in the aws backend's table (``core/idempotency.py``; the embedded store's twin is
``core/backends/sqlite_idempotency.py``).

One item per claim, in its own partitions (so the write roles' ``dynamodb:LeadingKeys`` name them apart)::

    IDEM#<token id>   <key>   fp, owner, state, exp (µs since the epoch: the lease, then the 24 h window),
                              act, status, body (zlib when large), change, expires_at (TTL, epoch seconds)

- **claim**: one conditional ``PutItem`` (the item is absent, or its ``exp`` has passed), which returns the item
  it found when the condition fails (``ReturnValuesOnConditionCheckFailure``): a claim costs one write whatever
  the outcome. ``exp``, not the TTL attribute, decides: TTL deletes up to days late.
- **the commit it guards** marks it in its own ``TransactWriteItems`` (``mark_item``): ``state = committed`` on
  condition that the claim is still this request's owner's and still running. A node that paused past its lease
  (a retry on another node took the claim over, changing ``owner``) has its whole commit cancelled.
- **finish** keeps the response (a conditional ``UpdateItem``); **release** ends the lease at once (``exp = 0``,
  an ``UpdateItem`` as well: the write roles need no ``DeleteItem``).

Replay records never hold a secret value: config writes answer metadata only, and a created token's string is
taken out of the body before it is kept (``handlers/idempotency.kept_body``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera.core.backends.aws.calls import ClientFailure, Table
from tessera.core.backends.aws.items import TTL_ATTRIBUTE, get_n, get_s, n, s
from tessera.core.idempotency import COMMITTED, DONE, RETENTION, RUNNING, Claim, IdempotencyGuard, IdempotencyRecord

IDEM_PREFIX = "IDEM#"
COMPRESS_ABOVE = 4096  # bytes of response body kept as they are; larger ones are zlib-compressed
MAX_KEPT_BODY = 300_000  # a claim item stays well under DynamoDB's 400 KB; past this the claim is released instead
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CONDITION_FAILED = frozenset({"ConditionalCheckFailedException"})
NAMES = {"#fp": "fp", "#owner": "owner", "#state": "state", "#exp": "exp", "#status": "status", "#body": "body",
         "#z": "z", "#change": "change", "#ttl": TTL_ATTRIBUTE}  # fmt: skip


def idem_pk(token_id: str) -> str:
    return IDEM_PREFIX + token_id


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _moment(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def _ttl(moment: datetime) -> dict[str, str]:
    return n(int(moment.timestamp()) + 1)


def _names(*used: str) -> dict[str, str]:
    return {name: NAMES[name] for name in used}


def item_to_record(item: Mapping[str, Any]) -> IdempotencyRecord:
    body = item["body"]["B"] if "body" in item else b""
    if item.get("z", {}).get("BOOL"):
        body = zlib.decompress(body)
    change = tuple(value["S"] for value in item["change"]["L"]) if "change" in item else None
    return IdempotencyRecord(
        token_id=item["PK"]["S"][len(IDEM_PREFIX):],
        key=item["SK"]["S"],
        fingerprint=get_s(item, "fp") or "",
        owner=get_s(item, "owner") or "",
        state=get_s(item, "state") or RUNNING,
        expires_at=_moment(get_n(item, "exp") or 0),
        action=get_s(item, "act") or "",
        status=get_n(item, "status") or 0,
        body=bytes(body),
        change=change,
    )


def mark_item(table: str, guard: IdempotencyGuard, change: tuple[str, ...], expires_at: datetime) -> dict[str, Any]:
    """The ``TransactWriteItems`` entry that marks the guard's claim committed (with what it changed), or cancels
    the whole transaction when the claim is no longer the guard's (taken over by a retry, or already finished)."""
    return {
        "Update": {
            "TableName": table,
            "Key": {"PK": s(idem_pk(guard.token_id)), "SK": s(guard.key)},
            "UpdateExpression": "SET #state = :committed, #change = :change, #exp = :exp, #ttl = :ttl",
            "ConditionExpression": "#owner = :owner AND #state = :running",
            "ExpressionAttributeNames": _names("#state", "#change", "#exp", "#ttl", "#owner"),
            "ExpressionAttributeValues": {
                ":committed": s(COMMITTED), ":change": {"L": [s(part) for part in change]}, ":exp": n(micros(expires_at)),
                ":ttl": _ttl(expires_at), ":owner": s(guard.owner), ":running": s(RUNNING),
            },
        }
    }  # fmt: skip


class DynamoIdempotencyStore:
    """``IdempotencyStore`` on the aws backend's table (shares the store's ``Table``: clients and call counter)."""

    def __init__(self, db: Table) -> None:
        self.db = db

    def claim(self, record: IdempotencyRecord, now: datetime) -> Claim:
        item = {
            "PK": s(idem_pk(record.token_id)),
            "SK": s(record.key),
            "fp": s(record.fingerprint),
            "owner": s(record.owner),
            "state": s(RUNNING),
            "exp": n(micros(record.expires_at)),
            "act": s(record.action),
            TTL_ATTRIBUTE: _ttl(now + RETENTION),  # a claim whose node died goes away by itself
        }
        for _ in range(3):
            try:
                self.db.call(
                    "PutItem", CONDITION_FAILED, TableName=self.db.name, Item=item,
                    # Absent, or its lease or window over (a node that died or paused, a released claim): ours.
                    ConditionExpression="attribute_not_exists(PK) OR #exp <= :now",
                    ExpressionAttributeNames=_names("#exp"), ExpressionAttributeValues={":now": n(micros(now))},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )  # fmt: skip
                return Claim(True)
            except ClientFailure as failure:
                found = failure.response.get("Item") or self.db.get(item["PK"]["S"], record.key)
                if found is not None:
                    return Claim(False, item_to_record(found))
                # Gone between the condition and the read (TTL): claim again.
        return Claim(False, record)  # pragma: no cover - three vanishing items in a row

    def finish(self, guard: IdempotencyGuard, status: int, body: bytes, expires_at: datetime) -> None:
        compressed = len(body) > COMPRESS_ABOVE
        kept = zlib.compress(body, 6) if compressed else body
        if len(kept) > MAX_KEPT_BODY:
            self.release(guard)  # too large to keep: a retry runs again (only imports answer this much)
            return
        self._update(
            guard,
            "SET #state = :done, #status = :status, #body = :body, #z = :z, #exp = :exp, #ttl = :ttl",
            "#owner = :owner AND (#state = :running OR #state = :committed)",
            {":done": s(DONE), ":status": n(status), ":body": {"B": kept}, ":z": {"BOOL": compressed},
             ":exp": n(micros(expires_at)), ":ttl": _ttl(expires_at), ":running": s(RUNNING), ":committed": s(COMMITTED)},
        )  # fmt: skip

    def release(self, guard: IdempotencyGuard) -> None:
        self._update(guard, "SET #exp = :zero", "#owner = :owner AND #state = :running", {":zero": n(0), ":running": s(RUNNING)})

    def _update(self, guard: IdempotencyGuard, expression: str, condition: str, values: dict[str, Any]) -> None:
        used = {name for name in NAMES if name in expression or name in condition}
        try:
            self.db.call(
                "UpdateItem", CONDITION_FAILED, TableName=self.db.name,
                Key={"PK": s(idem_pk(guard.token_id)), "SK": s(guard.key)},
                UpdateExpression=expression, ConditionExpression=condition,
                ExpressionAttributeNames=_names(*sorted(used)), ExpressionAttributeValues={":owner": s(guard.owner), **values},
            )  # fmt: skip
        except ClientFailure:
            pass  # no longer this request's claim (a retry took it over): nothing of ours to keep or drop
