"""Faults injected at the HTTP layer: a commit that fails after its S3 put, throttling on each service.
No visible change, a clear 503 through the HTTP API, and gc removes what a failed commit left behind."""

from __future__ import annotations

import pytest
from botocore.retries import standard
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tessera.core.backends.aws import AwsClients, AwsStore, CallCounter, KmsKeyService
from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.errors import Unavailable
from tessera.core.model import ROOT, Scope
from tessera.core.service import ConfigService
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.aws.faults import FaultInjector
from tests.aws.support import REGION, moto_target

SCOPE = Scope()
ROOT_TOKEN = "tsr_aws-fault-root-token-0123456789"


@pytest.fixture
def fast_backoff(monkeypatch):
    """botocore's standard retry sleeps up to 1 s, 2 s, … on throttling: keep the retries, drop the wait."""
    delays: list[float] = []

    def delay_amount(self, context):  # noqa: ANN001
        delays.append(1.0)
        return 0.001

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", delay_amount)
    return delays


@pytest.fixture
def faulty(fast_backoff):
    """A node whose own boto3 clients (3 attempts each, as in production but fewer) carry a fault injector."""
    with moto_target() as target:
        clients = AwsClients.create(REGION, max_attempts=3)
        injector = FaultInjector(clients)
        calls = CallCounter()
        store = AwsStore(table=target.table, bucket=target.bucket, dynamodb=clients.dynamodb, s3=clients.s3, calls=calls)
        keys = CachingKeyService(KmsKeyService(clients.kms, "alias/tessera", calls))
        yield target, store, keys, injector


def objects(target) -> list[str]:
    return [o["Key"] for o in target.clients.s3.list_objects_v2(Bucket=target.bucket).get("Contents", [])]


def test_transaction_failing_after_the_s3_put_changes_nothing_and_gc_removes_the_orphan(faulty):
    target, store, keys, injector = faulty
    service = ConfigService(store, keys)
    service.put(ROOT, SCOPE, "database.host", "old")
    revision = store.current_revision()
    injector.fail("dynamodb", "TransactWriteItems", 500, "InternalServerError")
    with pytest.raises(Unavailable):
        service.put(ROOT, SCOPE, "database.host", "new")
    assert injector.attempts["dynamodb:TransactWriteItems"] == 3  # botocore retried before giving up
    injector.clear()
    # No visible change, on this node or a fresh one.
    assert store.current_revision() == revision
    assert [v.version for v in store.history(SCOPE, "database.host", 10, None)] == [1]
    fresh = ConfigService(AwsStore(table=target.table, bucket=target.bucket, dynamodb=target.clients.dynamodb,
                                   s3=target.clients.s3), CachingKeyService(KmsKeyService(target.clients.kms)))
    assert fresh.get(ROOT, SCOPE, "database.host").value == "old"
    assert len(objects(target)) == 2  # the committed value and the orphan
    # gc: a young orphan is left alone (its commit may be in flight); past the grace period it goes.
    runner = CliRunner()
    from tessera.client.cli import app

    env = {"TESSERA_BUCKET": target.bucket, "TESSERA_TABLE": target.table, "AWS_REGION": REGION}
    young = runner.invoke(app, ["aws", "gc", "--json"], env=env)
    assert young.exit_code == 0, young.output
    assert '"orphans": []' in young.output
    result = runner.invoke(app, ["aws", "gc", "--json", "--grace-seconds", "0"], env=env)
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.output)
    assert report["deleted"] == 1 and len(report["orphans"]) == 1
    assert len(objects(target)) == 1
    assert fresh.get(ROOT, SCOPE, "database.host").value == "old"
    # And the next write goes through.
    assert service.put(ROOT, SCOPE, "database.host", "new").version.version == 2


@pytest.mark.parametrize(
    ("service_name", "operation", "status", "code"),
    [
        ("dynamodb", "GetItem", 400, "ThrottlingException"),
        ("dynamodb", "TransactWriteItems", 400, "ProvisionedThroughputExceededException"),
        ("s3", "PutObject", 503, "SlowDown"),
        ("kms", "GenerateDataKey", 400, "ThrottlingException"),
    ],
)
def test_persistent_throttling_is_unavailable_with_nothing_written(faulty, fast_backoff, service_name, operation, status, code):
    target, store, keys, injector = faulty
    service = ConfigService(store, keys)
    service.put(ROOT, SCOPE, "k", 1)
    injector.fail(service_name, operation, status, code)
    with pytest.raises(Unavailable) as raised:
        service.put(ROOT, SCOPE, "k", 2)
    assert service_name in raised.value.message and raised.value.status == 503
    assert injector.attempts[f"{service_name}:{operation}"] == 3 and fast_backoff
    injector.clear()
    assert store.current_revision() == 1
    assert service.get(ROOT, SCOPE, "k").version.version == 1


@pytest.mark.parametrize(
    ("service_name", "operation", "status", "code"),
    [
        ("dynamodb", "GetItem", 400, "ThrottlingException"),
        ("s3", "GetObject", 503, "SlowDown"),
        ("kms", "Decrypt", 400, "ThrottlingException"),
        ("s3", "PutObject", 500, "InternalError"),
        ("dynamodb", "TransactWriteItems", 500, "InternalServerError"),
    ],
)
def test_transient_faults_are_retried_by_botocore(faulty, service_name, operation, status, code):
    target, store, keys, injector = faulty
    node = ConfigService(AwsStore(table=target.table, bucket=target.bucket, dynamodb=target.clients.dynamodb,
                                  s3=target.clients.s3), CachingKeyService(KmsKeyService(target.clients.kms)))
    node.put(ROOT, SCOPE, "k", "before")
    service = ConfigService(store, keys)  # cold node: its reads reach S3 and KMS
    injector.fail(service_name, operation, status, code, times=2)
    service.get(ROOT, SCOPE, "k")
    service.put(ROOT, SCOPE, "k", "after")
    assert injector.attempts[f"{service_name}:{operation}"] == 2
    assert node.get(ROOT, SCOPE, "k").value == "after"


@pytest.mark.parametrize(
    ("service_name", "operation", "status", "code"),
    [
        ("dynamodb", "TransactWriteItems", 400, "ThrottlingException"),
        ("s3", "PutObject", 503, "SlowDown"),
        ("kms", "GenerateDataKey", 400, "ThrottlingException"),
    ],
)
def test_http_api_answers_503_with_the_error_shape(faulty, fast_backoff, service_name, operation, status, code):
    target, store, keys, injector = faulty
    settings = Settings(backend="aws", bucket=target.bucket, table=target.table, region=REGION, root_token=ROOT_TOKEN)
    container = build(settings, store=store, keys=keys)
    with TestClient(create_app(container), headers={"Authorization": f"Bearer {ROOT_TOKEN}"}) as client:
        assert client.put("/config/database.host", json={"value": "db"}).status_code == 201
        injector.fail(service_name, operation, status, code)
        response = client.put("/config/database.host", json={"value": "other"}, headers={"X-Request-Id": "req-1"})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "unavailable" and error["request_id"] == "req-1"
        assert "Traceback" not in response.text and "botocore" not in response.text
        injector.clear()
        injector.fail("dynamodb", "GetItem", 400, "ThrottlingException")
        response = client.get("/config/database.host")
        assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
        injector.clear()
        read = client.get("/config/database.host")
        assert read.status_code == 200 and read.json()["value"] == "db" and read.json()["version"] == 1
    container.close()


def test_a_commit_whose_answer_is_lost_is_recognised_as_landed(faulty):
    """The transaction applied but every answer was a 500: the store reads its version item back and
    reports success (revision included) instead of a 503 for a write that happened."""
    target, store, keys, injector = faulty
    service = ConfigService(store, keys)
    service.put(ROOT, SCOPE, "k", 1)
    injector.fail("dynamodb", "TransactWriteItems", 500, "InternalServerError", times=1, landed=True)
    injector.fail("dynamodb", "TransactWriteItems", 500, "InternalServerError")  # and its retries never answer
    result = service.put(ROOT, SCOPE, "k", 2)
    assert result.version.version == 2 and result.version.revision == 2
    injector.clear()
    assert store.current_revision() == 2 and len(objects(target)) == 2


def test_a_retry_that_meets_its_own_landed_commit_succeeds(faulty):
    """moto has no idempotency tokens: botocore's retry of a landed transaction is refused by the head's
    condition; the store recognises its own write in the returned head and reports success."""
    target, store, keys, injector = faulty
    service = ConfigService(store, keys)
    service.put(ROOT, SCOPE, "k", 1)
    injector.fail("dynamodb", "TransactWriteItems", 500, "InternalServerError", times=1, landed=True)
    result = service.put(ROOT, SCOPE, "k", 2)  # attempt 1 lands (500), botocore's attempt 2 is refused
    assert result.version.version == 2 and result.version.revision == 2 and result.changed
    injector.clear()
    assert store.current_revision() == 2 and len(objects(target)) == 2
    injector.fail("dynamodb", "TransactWriteItems", 500, "InternalServerError", times=1, landed=True)
    deleted = service.delete(ROOT, SCOPE, "k")  # the same for a deletion (no object to recognise it by)
    assert deleted.version == 3 and store.current_revision() == 3
