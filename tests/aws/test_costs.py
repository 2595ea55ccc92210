"""What each operation costs on AWS, counted call by call through the HTTP app (in-process moto), and priced:
the numbers behind docs/aws.md's call-and-cost table. Every AWS request a node makes is recorded by botocore's
event hooks (operation and partition), so the assertions name exactly which items a request reads and writes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.aws import CallCounter
from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.settings import Settings
from tessera.handlers.app import create_app

pytestmark = pytest.mark.aws
ROOT_TOKEN = "tsr_cost-root-token-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}

# us-east-1 on-demand list prices, US$ per request (checked 2026-12-02; docs/aws.md states the same).
READ_UNIT = 0.125e-6  # DynamoDB read request unit (a strongly consistent read of up to 4 KB)
WRITE_UNIT = 0.625e-6  # DynamoDB write request unit (up to 1 KB; transactional: 2 per KB per item)
S3_GET, S3_PUT, KMS_REQUEST = 0.4e-6, 5e-6, 3e-6


class Recorder:
    """Every request the clients send: (``Operation``, partition key or bucket), from botocore's event hooks."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()

    def __call__(self, params, model, **_) -> None:  # noqa: ANN001 - botocore's hook signature
        self.calls[(model.name, partition_of(model.name, params))] += 1

    def take(self) -> Counter[tuple[str, str]]:
        taken, self.calls = self.calls, Counter()
        return taken


def partition_of(operation: str, params: dict) -> str:
    if "Key" in params and isinstance(params["Key"], dict) and "PK" in params["Key"]:
        return params["Key"]["PK"]["S"].split("#", 1)[0]
    if "Item" in params:
        return params["Item"]["PK"]["S"].split("#", 1)[0]
    if operation == "Query":
        return params["ExpressionAttributeValues"][":pk"]["S"].split("#", 1)[0]
    if operation == "TransactWriteItems":
        parts = sorted({(next(iter(item.values())).get("Key") or next(iter(item.values())).get("Item"))["PK"]["S"].split("#", 1)[0]
                        for item in params["TransactItems"]})  # fmt: skip
        return "+".join(parts)
    return ""


@contextmanager
def recording(target) -> Iterator[Recorder]:
    recorder = Recorder()
    hooks = [(client, f"provide-client-params.{client.meta.service_model.service_name}")
             for client in (target.clients.dynamodb, target.clients.s3, target.clients.kms)]  # fmt: skip
    for client, event in hooks:
        client.meta.events.register(event, recorder)
    try:
        yield recorder
    finally:
        for client, event in hooks:
            client.meta.events.unregister(event, recorder)


class Clock:
    """Monotonic seconds a test moves by hand (starting past the real clock: the stamp was read at build)."""

    def __init__(self) -> None:
        self.now = time.monotonic() + 10

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(target):
    """One node of the HTTP app over the test's table, with a hand-moved clock on its auth stamp."""
    container = build(Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN),
                      store=target.store(CallCounter()), keys=CachingKeyService(target.kms()))  # fmt: skip
    clock = Clock()
    container.store.auth_stamp.clock = clock
    with TestClient(create_app(container)) as client:
        yield container, client, clock
    container.close()


def service_token(client: TestClient, rules: list[dict]) -> dict[str, str]:
    client.put("/policies/reader", json={"rules": rules}, headers=ROOT).raise_for_status()
    token = client.post("/auth/tokens", json={"service": "app", "policies": ["reader"]}, headers=ROOT).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def price(calls: Counter[tuple[str, str]], write_units: int | None = None) -> float:
    """US$ of these calls (DynamoDB items here are under 1 KB: one read unit per consistent read of an item)."""
    total = 0.0
    for (operation, _), count in calls.items():
        if operation in ("GetItem", "Query"):
            total += READ_UNIT * count
        elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
            total += WRITE_UNIT * count
        elif operation == "GetObject":
            total += S3_GET * count
        elif operation == "PutObject":
            total += S3_PUT * count
        elif operation in ("Decrypt", "GenerateDataKey"):
            total += KMS_REQUEST * count
    return total


def test_warm_get_with_a_service_token_is_one_head_read_one_stamp_read_and_one_record(node, target):
    container, client, clock = node
    client.put("/config/database.host", json={"value": "db.internal"}, headers=ROOT).raise_for_status()
    headers = service_token(client, [{"path": "database.*", "capabilities": ["read"]}])
    assert client.get("/config/database.host", headers=headers).status_code == 200  # cold: value, data key, token
    # The request path's own caches (core/auth.py, core/policy.py) expire at once here: every request asks the
    # store, so what is left is what the store's auth stamp saves.
    container.authenticator.cache_seconds = 0
    container.access.authorizer.refresh_seconds = 0
    clock.now += 1
    client.get("/config/database.host", headers=headers)  # the stamp moved since this node's last read: reload once
    with recording(target) as recorder:
        for _ in range(5):
            clock.now += 1  # past the stamp's age: it is read again, once
            assert client.get("/config/database.host", headers=headers).json()["value"] == "db.internal"
            assert recorder.take() == {("GetItem", "H"): 1, ("GetItem", "AUTHSTAMP"): 1, ("PutItem", "AUDITLOG"): 1}
        for _ in range(5):  # within the stamp's age (a busy node): not even the stamp
            assert client.get("/config/database.host", headers=headers).status_code == 200
            assert recorder.take() == {("GetItem", "H"): 1, ("PutItem", "AUDITLOG"): 1}
    per_million = price(Counter({("GetItem", "H"): 1, ("GetItem", "AUTHSTAMP"): 1, ("PutItem", "AUDITLOG"): 1})) * 1e6
    assert per_million <= 1.00  # issue 10's target, before Lambda and API Gateway


def test_a_revocation_reaches_another_node_through_the_stamp(target):
    nodes = []
    for _ in range(2):
        container = build(Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN),
                          store=target.store(), keys=CachingKeyService(target.kms()))  # fmt: skip
        clock = Clock()
        container.store.auth_stamp.clock = clock
        nodes.append((container, TestClient(create_app(container)).__enter__(), clock))
    (a, client_a, _), (b, client_b, clock_b) = nodes
    try:
        client_a.put("/config/k", json={"value": 1}, headers=ROOT).raise_for_status()
        headers = service_token(client_a, [{"path": "*", "capabilities": ["read"]}])
        assert client_b.get("/config/k", headers=headers).status_code == 200
        token_id = client_a.get("/auth/self", headers=headers).json()["id"]
        client_a.delete(f"/auth/tokens/{token_id}", headers=ROOT).raise_for_status()
        b.authenticator.cache_seconds = 0  # the request path's own half second has passed
        clock_b.now += 1  # and the stamp's
        assert client_b.get("/config/k", headers=headers).status_code == 401
    finally:
        for container, client, _ in nodes:
            client.__exit__(None, None, None)
            container.close()


# ---------------------------------------------------------------------- the call-and-cost table (docs/aws.md)
def fresh_node(target):
    """A new container (a Lambda cold start): nothing cached, no audit shard yet."""
    container = build(Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN),
                      store=target.store(CallCounter()), keys=CachingKeyService(target.kms()))  # fmt: skip
    return container, TestClient(create_app(container)).__enter__()


def test_a_cold_get_reads_the_token_its_policy_the_head_the_value_and_takes_an_audit_shard(node, target):
    _, client, _ = node
    client.put("/config/database.host", json={"value": "db.internal"}, headers=ROOT).raise_for_status()
    headers = service_token(client, [{"path": "database.*", "capabilities": ["read"]}])
    cold, cold_client = fresh_node(target)
    try:
        with recording(target) as recorder:
            assert cold_client.get("/config/database.host", headers=headers).status_code == 200
            assert recorder.take() == {("GetItem", "TOKENHASH"): 1, ("Query", "POLICY"): 1, ("GetItem", "H"): 1,
                                       ("GetObject", ""): 1, ("Decrypt", ""): 1, ("UpdateItem", "AUDITSHARD"): 1,
                                       ("PutItem", "AUDITCKPT"): 1, ("PutItem", "AUDITLOG"): 1}  # fmt: skip
    finally:
        cold_client.__exit__(None, None, None)
        cold.close()


def test_a_put_writes_the_object_one_transaction_and_two_records(node, target):
    container, client, clock = node
    headers = service_token(client, [{"path": "database.*", "capabilities": ["read", "write"]}])
    client.put("/config/database.host", json={"value": "db1"}, headers=headers).raise_for_status()
    with recording(target) as recorder:
        assert client.put("/config/database.host", json={"value": "db2"}, headers=headers).status_code == 200
        calls = recorder.take()
        assert calls.pop(("GetItem", "META"), 0) <= 1  # the active KMS key id, at most every 10 s (docs/aws.md)
        # The record of the attempt before the commit and of its outcome after it: two plain items (this store does
        # not put a change's record in the commit's transaction; the embedded store does).
        assert calls == {("GetItem", "H"): 1, ("GetItem", "COUNTER"): 1, ("PutObject", ""): 1,
                                   ("GenerateDataKey", ""): 1, ("TransactWriteItems", "CHANGES+COUNTER+H+V"): 1,
                                   ("PutItem", "AUDITLOG"): 2}  # fmt: skip


def test_an_import_costs_per_key_what_a_put_does_and_two_records_in_all(node, target):
    """Measured on 20 keys (moto's transactions slow down as the table grows): per key an object and a data key;
    heads and commits batched (``tests/aws/test_bulk_import.py`` counts larger imports)."""
    _, client, _ = node
    keys = 20
    client.put("/config/warm", json={"value": 1}, headers=ROOT).raise_for_status()  # the node holds its audit shard
    with recording(target) as recorder:
        body = {"values": {"imp": {f"k{i:03d}": i for i in range(keys)}}}
        assert client.post("/config/import", json=body, headers=ROOT).status_code == 200
        calls = recorder.take()
    assert calls.pop(("GetItem", "META"), 0) <= 1
    assert calls == {("BatchGetItem", ""): 1, ("GetItem", "COUNTER"): 1, ("PutObject", ""): keys,
                     ("GenerateDataKey", ""): keys, ("TransactWriteItems", "CHANGES+COUNTER+H+V"): 1,
                     ("PutItem", "AUDITLOG"): 2}  # fmt: skip


def test_an_idle_sdk_poll_is_one_counter_read_and_its_record(node, target):
    """``GET /watch?since=N&timeout=0`` every 30-60 s: the cheap "anything new?" an SDK polls with."""
    container, client, clock = node
    headers = service_token(client, [{"path": "*", "capabilities": ["read"]}])
    container.authenticator.cache_seconds = 0
    container.access.authorizer.refresh_seconds = 0
    revision = client.get("/health").json()["revision"]
    clock.now += 1
    client.get(f"/watch?since={revision}&timeout=0", headers=headers)  # the stamp moved with the token: reloaded once
    with recording(target) as recorder:
        for _ in range(3):
            clock.now += 30  # polls are far apart: the auth stamp is read each time
            assert client.get(f"/watch?since={revision}&timeout=0", headers=headers).json() == {"revision": revision, "events": []}
            assert recorder.take() == {("GetItem", "AUTHSTAMP"): 1, ("GetItem", "COUNTER"): 1, ("PutItem", "AUDITLOG"): 1}
        client.put("/config/k", json={"value": 1}, headers=ROOT).raise_for_status()
        recorder.take()
        events = client.get(f"/watch?since={revision}&timeout=0", headers=headers).json()["events"]
        assert [event["key"] for event in events] == ["k"]


def test_a_held_long_poll_reads_the_counter_twice_a_second(node, target):
    """What one idle long-poll costs while held (on Lambda: 25 s at a time, holding the function too)."""
    container, client, clock = node
    headers = service_token(client, [{"path": "*", "capabilities": ["read"]}])
    revision = client.get("/health").json()["revision"]
    clock.now += 1
    client.get(f"/watch?since={revision}&timeout=0", headers=headers)  # the stamp moved with the token: reloaded once
    with recording(target) as recorder:
        started = time.monotonic()
        assert client.get(f"/watch?since={revision}&timeout=2", headers=headers).json()["events"] == []
        held = time.monotonic() - started
        calls = recorder.take()
    counter_reads = calls.pop(("GetItem", "COUNTER"))
    calls.pop(("GetItem", "META"), None)  # a time-based re-read (docs/aws.md), not the watch's
    assert counter_reads <= 2 * held / 0.5 + 2  # the feed poller: one read per 0.5 s while anyone waits
    assert calls[("PutItem", "AUDITLOG")] == 1 and sum(calls.values()) <= 4  # + its record, a stamp, the log's head
