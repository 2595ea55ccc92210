"""``Idempotency-Key`` on the aws backend, call by call (in-process moto): what a claim costs, that the claim is
marked inside the commit's own transaction, that replay records hold no secret and expire by TTL. The behaviour
itself (replays, refusals, a claim taken over) runs on every backend in tests/api/test_idempotency.py."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.aws import CallCounter
from tessera.core.backends.aws.idempotency import COMPRESS_ABOVE, MAX_KEPT_BODY, DynamoIdempotencyStore
from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.idempotency import LEASE, RETENTION, IdempotencyGuard, IdempotencyRecord, fingerprint
from tessera.core.model import utcnow
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.aws.test_costs import recording

pytestmark = pytest.mark.aws
ROOT_TOKEN = "tsr_idem-root-token-0123456789abcdef0"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}


@pytest.fixture
def node(target):
    container = build(Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN),
                      store=target.store(CallCounter()), keys=CachingKeyService(target.kms()))  # fmt: skip
    with TestClient(create_app(container), headers=ROOT) as client:
        yield container, client
    container.close()


def items(target, prefix: str) -> list[dict]:
    scanned = target.clients.dynamodb.scan(TableName=target.table)["Items"]
    return [item for item in scanned if item["PK"]["S"].startswith(prefix)]


def by_partition(calls: Counter, partition: str) -> Counter:
    return Counter({operation: count for (operation, where), count in calls.items() if where == partition})


def operations(calls: Counter) -> Counter:
    return Counter({operation: count for (operation, _), count in calls.items()})


def test_a_put_with_a_key_costs_one_claim_and_one_finish_and_is_marked_in_the_commit(node, target):
    container, client = node
    client.put("/config/cost.a", json={"value": 0}).raise_for_status()  # warm: keys, caches
    transactions: list[list[str]] = []

    def spy(params, model, **_):  # noqa: ANN001 - botocore's hook signature
        if model.name == "TransactWriteItems":
            transactions.append([next(iter(entry.values())).get("Key", next(iter(entry.values())).get("Item"))["PK"]["S"]
                                 for entry in params["TransactItems"]])  # fmt: skip

    target.clients.dynamodb.meta.events.register("provide-client-params.dynamodb", spy)
    try:
        with recording(target) as recorder:
            client.put("/config/cost.a", json={"value": 1}).raise_for_status()
            plain = recorder.take()
            keyed = client.put("/config/cost.a", json={"value": 2}, headers={"Idempotency-Key": "cost-1"})
            assert keyed.status_code == 200
            with_key = recorder.take()
            replay = client.put("/config/cost.a", json={"value": 2}, headers={"Idempotency-Key": "cost-1"})
            replayed = recorder.take()
    finally:
        target.clients.dynamodb.meta.events.unregister("provide-client-params.dynamodb", spy)
    assert by_partition(with_key, "IDEM") == Counter({"PutItem": 1, "UpdateItem": 1})  # the claim, the response kept
    assert operations(with_key)["TransactWriteItems"] == operations(plain)["TransactWriteItems"] == 1  # no extra one
    assert [pks for pks in transactions if "COUNTER" in pks][-1].count("IDEM#root") == 1  # marked in the commit
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true" and replay.json() == keyed.json()
    # A replay: the failed conditional put hands back the record (no read of it); no head, value, key or commit.
    assert by_partition(replayed, "IDEM") == Counter({"PutItem": 1})
    assert not {"TransactWriteItems", "PutObject", "GenerateDataKey", "Decrypt"} & set(operations(replayed))
    assert by_partition(replayed, "H") == Counter()


def test_replay_records_hold_no_secret_and_expire_by_ttl(node, target):
    container, client = node
    secret = "hunter2-idempotent-secret"
    assert client.put("/config/db.password", json={"value": secret, "secret": True},
                      headers={"Idempotency-Key": "s-1"}).status_code == 201  # fmt: skip
    created = client.post("/auth/tokens", json={"service": "idem", "policies": []}, headers={"Idempotency-Key": "t-1"})
    assert created.status_code == 201
    claims = items(target, "IDEM#")
    assert {item["SK"]["S"] for item in claims} == {"s-1", "t-1"}
    assert {item["state"]["S"] for item in claims} == {"done"}
    dumped = repr(claims)
    assert secret not in dumped and created.json()["token"] not in dumped
    now = utcnow().timestamp()
    for item in claims:
        assert now + RETENTION.total_seconds() - 60 < int(item["expires_at"]["N"]) < now + RETENTION.total_seconds() + 60
    # Nothing anywhere in the table holds the secret in plain text.
    assert secret not in repr(target.clients.dynamodb.scan(TableName=target.table)["Items"])


def test_a_retry_while_running_is_refused_and_a_released_claim_runs(node, target):
    container, client = node
    store: DynamoIdempotencyStore = container.idempotency
    now = utcnow()
    body = b'{"value": 1}'
    request = {"content": body, "headers": {"Idempotency-Key": "busy", "Content-Type": "application/json"}}
    # The same request's claim, taken by another node that is still running it.
    asked = fingerprint("PUT", "/config/idem.busy", b"", body, ROOT_TOKEN.encode())
    running = IdempotencyRecord("root", "busy", asked, "owner-a", "running", now + LEASE, "config.write")
    assert store.claim(running, now).ours
    busy = client.put("/config/idem.busy", **request)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_in_progress"
    store.release(IdempotencyGuard("root", "busy", "owner-b"))  # not its owner: nothing happens
    assert not store.claim(running, now).ours
    store.release(IdempotencyGuard("root", "busy", "owner-a"))
    assert client.put("/config/idem.busy", **request).status_code == 201
    other = fingerprint("PUT", "/config/idem.busy", b"", body, b"another token")
    assert (items(target, "IDEM#")[0]["fp"]["S"], other) != (asked, asked)  # keyed by the token: no plain hash kept


def test_large_bodies_are_compressed_and_too_large_ones_released(node):
    container, _ = node
    store: DynamoIdempotencyStore = container.idempotency
    now = utcnow()
    body = b'{"keys": [' + b",".join(b'{"key": "k%d", "status": 200}' % i for i in range(2000)) + b"]}"
    assert len(body) > COMPRESS_ABOVE
    for key, kept in (("big", body), ("huge", os.urandom(MAX_KEPT_BODY + 1000))):
        assert store.claim(IdempotencyRecord("root", key, "fp", "o", "running", now + LEASE, "config.import"), now).ours
        store.finish(IdempotencyGuard("root", key, "o"), 200, kept, now + RETENTION)
    found = store.claim(IdempotencyRecord("root", "big", "fp", "o2", "running", now + LEASE), now)
    assert not found.ours and found.record.state == "done" and found.record.body == body
    assert store.claim(IdempotencyRecord("root", "huge", "fp", "o2", "running", now + LEASE), now).ours  # released
