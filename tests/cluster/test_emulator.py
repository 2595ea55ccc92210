"""The emulator (``python -m tests.cluster emulator``): what it serves, and that it holds load."""

from __future__ import annotations

import gc
import time

import httpx
import pytest

from tessera.core.backends.aws import AwsClients
from tests.aws.support import REGION, create_resources
from tests.cluster.emulator import Emulator, service_of
from tests.cluster.load import drive_commits

MB = 2**20


@pytest.fixture(scope="module")
def emulator():
    with Emulator() as running:
        yield running


def test_service_of_reads_the_signing_scope():
    auth = "AWS4-HMAC-SHA256 Credential=testing/20261202/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=x"
    assert service_of({"HTTP_AUTHORIZATION": auth}) == "dynamodb"
    assert service_of({"HTTP_AUTHORIZATION": auth.replace("/dynamodb/", "/s3/")}) == "s3"
    assert service_of({}) is None  # /moto-api/ calls are unsigned


def test_it_serves_what_moto_server_serves(emulator):
    clients = AwsClients.create(REGION, emulator.url, max_attempts=1)
    recorder = f"{emulator.url}/moto-api/recorder"
    assert httpx.post(f"{recorder}/start-recording").status_code == 200
    table, bucket, key_arn = create_resources(clients)
    # S3 (the backend's conditional put), KMS data keys
    clients.s3.put_object(Bucket=bucket, Key="a", Body=b"x", IfNoneMatch="*")
    assert clients.s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"x"
    data_key = clients.kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256", EncryptionContext={"k": "v"})
    assert clients.kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext={"k": "v"})["Plaintext"] == data_key["Plaintext"]
    # DynamoDB transactions, and their stream
    ddb = clients.dynamodb
    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": table, "Item": {"PK": {"S": "p"}, "SK": {"S": str(n)}}}} for n in range(3)
    ])
    stream_arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    import boto3

    streams = boto3.client("dynamodbstreams", region_name=REGION, endpoint_url=emulator.url)
    shard = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [r["dynamodb"]["Keys"]["SK"]["S"] for r in records] == ["0", "1", "2"]
    # The table's stream is KEYS_ONLY (the notifier reads the change log; a record is a wake-up): keys, no image.
    assert all(r["eventName"] == "INSERT" and r["dynamodb"]["Keys"]["PK"] == {"S": "p"} for r in records)
    # The request recorder saw the calls; reset clears everything.
    recording = httpx.get(f"{recorder}/download-recording").text
    assert "TransactWriteItems" in recording and "GenerateDataKey" in recording
    httpx.post(f"{recorder}/stop-recording")
    assert httpx.post(f"{emulator.url}/moto-api/reset").status_code == 200
    assert table not in ddb.list_tables()["TableNames"]


def test_unreferenced_model_objects_are_freed(emulator):
    """moto tracks every model object it makes; the emulator's patch tracks them weakly (in-process here)."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    from tests.cluster import moto_patch

    moto_patch.install()
    try:
        kept = Item(DynamoType({"S": "kept"}), None, {"PK": {"S": "kept"}})
        Item(DynamoType({"S": "gone"}), None, {"PK": {"S": "gone"}})
        gc.collect()
        tracked = [item.hash_key.value for item in Item.instances_tracked]  # type: ignore[attr-defined]
        assert "kept" in tracked and "gone" not in tracked
        assert kept is not None
    finally:
        moto_patch.uninstall()


# ---------------------------------------------------------------- the regression test: it holds load
COMMITS = 5000
WINDOW = 500
WARMUP = 100
SAMPLE_EVERY = 50
# On a loaded machine the run stops at its time budget; it then compares the first and last quarter of what it
# did (at least this many commits). Plain moto's per-item table copy shows within the first few hundred.
MIN_COMMITS = 600
TIME_BUDGET = 180.0


@pytest.mark.slow
def test_five_thousand_commits_in_flat_time_and_memory():
    """Real commits (``ConfigService.put`` over ``AwsStore``: S3 object, reads, one TransactWriteItems), one
    after another. The emulator's CPU time per commit and its memory growth per commit over the last 500
    are within 1.5x of the first 500 (after a short warm-up; a run cut short by its time budget compares
    its first and last quarters); its memory projected to 20,000 commits stays under 500 MB. Time is the
    emulator's own CPU time, which other load on the machine does not inflate much; wall-clock medians are
    reported alongside. Plain moto 5.2.5 fails this within the first few hundred commits."""
    with Emulator() as emulator:
        curve = drive_commits(emulator.url, COMMITS, emulator.measure, sample_every=SAMPLE_EVERY,
                              deadline=time.monotonic() + TIME_BUDGET)
    done = curve.samples[-1].commits
    assert done >= MIN_COMMITS, f"only {done} commits in {TIME_BUDGET:.0f} s"
    window = min(WINDOW, (done - WARMUP) // 4 // SAMPLE_EVERY * SAMPLE_EVERY)
    first = (WARMUP, WARMUP + window)
    last = (done - window, done)
    (first_rss, first_cpu), (last_rss, last_cpu) = curve.growth(*first), curve.growth(*last)
    end = curve.samples[-1]
    slope = max(last_rss, 0) / window
    projected = end.rss_bytes + (20_000 - done) * slope
    report = (
        f"{done} commits, windows of {window}; emulator CPU ms/commit first {1000 * first_cpu / window:.2f}, "
        f"last {1000 * last_cpu / window:.2f}; "
        f"wall median ms first {1000 * curve.window_median(*first):.1f}, last {1000 * curve.window_median(*last):.1f}; "
        f"RSS growth first {first_rss / MB:.1f} MB, last {last_rss / MB:.1f} MB per window; "
        f"RSS now {end.rss_bytes / MB:.0f} MB, projected at 20,000 commits {projected / MB:.0f} MB"
    )
    print(report)
    assert last_cpu <= 1.5 * first_cpu, report
    # Memory comes in allocator-sized steps: allow 2 MB on top of the ratio.
    assert last_rss <= 1.5 * max(first_rss, 0) + 2 * MB, report
    assert projected <= 500 * MB, report

