"""The moto patch the emulator runs (``tests/cluster/moto_patch.py``) and its upstream form
(``docs/upstream/moto-transact-rollback.diff``), checked against in-process moto."""

from __future__ import annotations

import ast
import copy
import inspect
import shutil
import subprocess
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from botocore.exceptions import ClientError

from tests.aws.support import mocked_aws
from tests.cluster import moto_patch

REPO = Path(__file__).resolve().parents[2]
DIFF = REPO / "docs" / "upstream" / "moto-transact-rollback.diff"


@pytest.fixture
def patched() -> Iterator[None]:
    moto_patch.install()
    try:
        yield
    finally:
        moto_patch.uninstall()


@pytest.fixture
def ddb():
    with mocked_aws() as clients:
        yield clients.dynamodb


def make_table(ddb, *, range_key: bool = False) -> str:
    name = f"patch-{uuid.uuid4().hex[:10]}"
    schema = [{"AttributeName": "PK", "KeyType": "HASH"}]
    attributes = [{"AttributeName": "PK", "AttributeType": "S"}]
    if range_key:
        schema.append({"AttributeName": "SK", "KeyType": "RANGE"})
        attributes.append({"AttributeName": "SK", "AttributeType": "S"})
    ddb.create_table(TableName=name, KeySchema=schema, AttributeDefinitions=attributes, BillingMode="PAY_PER_REQUEST",
                     StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    return name


def backend_table(name: str):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb import dynamodb_backends

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    return backend, backend.get_table(name)


def scan(ddb, table: str) -> list[dict]:
    items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda item: (item["PK"]["S"], item.get("SK", {}).get("S", "")))


def cancelled_transaction_with_a_write_landing_meanwhile(ddb) -> tuple[list[dict], list[dict]]:
    """A transaction (put ``new``, update ``n``, then a failing check) pauses after its first write while
    another request writes ``other``. Returns the table's items and its stream records' keys afterwards."""
    table = make_table(ddb)
    ddb.put_item(TableName=table, Item={"PK": {"S": "n"}, "v": {"N": "1"}})
    _, model = backend_table(table)
    table_put_item = model.put_item
    transaction_wrote, go_on = threading.Event(), threading.Event()
    errors: list[str] = []

    def put_item_then_pause(item_attrs, *args, **kwargs):
        result = table_put_item(item_attrs, *args, **kwargs)
        if item_attrs["PK"] == {"S": "new"}:
            transaction_wrote.set()
            go_on.wait(timeout=10)
        return result

    def transaction() -> None:
        try:
            ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": table, "Item": {"PK": {"S": "new"}}}},
                {"Update": {"TableName": table, "Key": {"PK": {"S": "n"}}, "UpdateExpression": "SET v = :two",
                            "ExpressionAttributeValues": {":two": {"N": "2"}}}},
                {"ConditionCheck": {"TableName": table, "Key": {"PK": {"S": "missing"}},
                                    "ConditionExpression": "attribute_exists(PK)"}},
            ])
        except ClientError as exc:
            errors.append(exc.response["Error"]["Code"])

    with mock.patch.object(model, "put_item", put_item_then_pause):
        first = threading.Thread(target=transaction)
        first.start()
        assert transaction_wrote.wait(timeout=10)
        second = threading.Thread(target=lambda: ddb.put_item(TableName=table, Item={"PK": {"S": "other"}}))
        second.start()
        second.join(timeout=0.5)  # patched, it waits for the transaction
        go_on.set()
        first.join(timeout=10)
        second.join(timeout=10)
    assert errors == ["TransactionCanceledException"]
    _, model = backend_table(table)
    return scan(ddb, table), [record.record["dynamodb"]["Keys"]["PK"] for record in model.stream_shard.items]


def test_a_cancelled_transaction_keeps_writes_it_did_not_make(patched, ddb):
    items, stream_keys = cancelled_transaction_with_a_write_landing_meanwhile(ddb)
    assert items == [{"PK": {"S": "n"}, "v": {"N": "1"}}, {"PK": {"S": "other"}}]
    assert stream_keys == [{"S": "n"}, {"S": "other"}]  # nothing from the cancelled transaction


def test_unpatched_moto_still_loses_them(ddb):
    """The bug the patch fixes, on the installed moto. When this fails, moto has fixed it upstream: drop the
    patch (``tests/cluster/moto_patch.py``) and run the emulator on plain moto."""
    items, _ = cancelled_transaction_with_a_write_landing_meanwhile(ddb)
    assert {"PK": {"S": "other"}} not in items


def test_a_cancelled_transaction_restores_exactly_what_it_changed(patched, ddb):
    table = make_table(ddb, range_key=True)
    for sk, n in (("a", 1), ("b", 2), ("c", 3)):
        ddb.put_item(TableName=table, Item={"PK": {"S": "p"}, "SK": {"S": sk}, "n": {"N": str(n)}, "l": {"L": [{"S": "x"}]}})
    before = scan(ddb, table)
    _, model = backend_table(table)
    stream_before = len(model.stream_shard.items)
    key = lambda sk: {"PK": {"S": "p"}, "SK": {"S": sk}}  # noqa: E731
    with pytest.raises(ClientError) as exc:
        ddb.transact_write_items(TransactItems=[
            # updated in place (moto mutates the stored item), with a list appended to
            {"Update": {"TableName": table, "Key": key("a"), "UpdateExpression": "ADD n :one SET l = list_append(l, :y)",
                        "ExpressionAttributeValues": {":one": {"N": "1"}, ":y": {"L": [{"S": "y"}]}}}},
            {"Delete": {"TableName": table, "Key": key("b")}},
            {"Put": {"TableName": table, "Item": {**key("new"), "n": {"N": "9"}}}},
            # an update that creates its item, in a hash key not seen before
            {"Update": {"TableName": table, "Key": {"PK": {"S": "q"}, "SK": {"S": "z"}}, "UpdateExpression": "SET n = :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": table, "Key": key("c"), "ConditionExpression": "n = :zero",
                                "ExpressionAttributeValues": {":zero": {"N": "0"}}}},
        ])
    assert exc.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert [r.get("Code") for r in exc.value.response["CancellationReasons"]] == ["None"] * 4 + ["ConditionalCheckFailed"]
    assert scan(ddb, table) == before
    assert len(model.stream_shard.items) == stream_before
    assert ddb.get_item(TableName=table, Key={"PK": {"S": "q"}, "SK": {"S": "z"}}, ConsistentRead=True).get("Item") is None
    # A duplicate key is refused (a validation error, not a cancellation) and leaves nothing either.
    with pytest.raises(ClientError) as exc:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": {**key("a"), "n": {"N": "7"}}}},
            {"Delete": {"TableName": table, "Key": key("a")}},
        ])
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert scan(ddb, table) == before and len(model.stream_shard.items) == stream_before
    # And a transaction that succeeds still applies everything, with one stream record per write.
    ddb.transact_write_items(TransactItems=[
        {"Update": {"TableName": table, "Key": key("a"), "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Delete": {"TableName": table, "Key": key("b")}},
    ])
    assert [item["SK"]["S"] for item in scan(ddb, table)] == ["a", "c"]
    assert len(model.stream_shard.items) == stream_before + 2


def test_a_transaction_copies_only_the_items_it_touches(patched, ddb):
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import Table

    table = make_table(ddb)
    _, model = backend_table(table)
    for number in range(300):
        model.put_item({"PK": {"S": f"k{number}"}, "v": {"N": str(number)}})
    copied: list[type] = []
    real_deepcopy = copy.deepcopy

    def counting_deepcopy(value, *args):
        copied.append(type(value))
        return real_deepcopy(value, *args)

    with mock.patch("copy.deepcopy", counting_deepcopy):
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": {"PK": {"S": "k1"}, "v": {"N": "0"}}}},
            {"Update": {"TableName": table, "Key": {"PK": {"S": "k2"}}, "UpdateExpression": "SET v = :z",
                        "ExpressionAttributeValues": {":z": {"N": "0"}}}},
        ])
    assert Table not in copied
    assert copied.count(Item) <= 3  # the two snapshots, and update_item's own copy for the stream's old image


def test_concurrent_compare_and_set_transactions_lose_no_update(patched, ddb):
    table = make_table(ddb)
    ddb.put_item(TableName=table, Item={"PK": {"S": "counter"}, "v": {"N": "0"}})
    done: list[int] = []

    def increment(worker: int) -> None:
        wins = 0
        while wins < 15:
            current = int(ddb.get_item(TableName=table, Key={"PK": {"S": "counter"}}, ConsistentRead=True)["Item"]["v"]["N"])
            try:
                ddb.transact_write_items(TransactItems=[
                    {"Update": {"TableName": table, "Key": {"PK": {"S": "counter"}}, "UpdateExpression": "SET v = :next",
                                "ConditionExpression": "v = :current",
                                "ExpressionAttributeValues": {":next": {"N": str(current + 1)}, ":current": {"N": str(current)}}}},
                    {"Put": {"TableName": table, "Item": {"PK": {"S": f"log{current + 1}"}, "by": {"N": str(worker)}}}},
                ])
                wins += 1
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "TransactionCanceledException"
        done.append(wins)

    threads = [threading.Thread(target=increment, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert done == [15] * 4
    items = scan(ddb, table)
    assert {"PK": {"S": "counter"}, "v": {"N": "60"}} in items
    assert sorted(int(item["PK"]["S"][3:]) for item in items if item["PK"]["S"].startswith("log")) == list(range(1, 61))


def test_the_upstream_diff_applies_to_the_installed_moto_and_is_what_the_emulator_runs(tmp_path: Path):
    """docs/upstream/moto-transact-rollback.diff applies cleanly to the installed moto, and the functions it
    adds are character for character the ones tests/cluster/moto_patch.py installs."""
    import moto.dynamodb.models as models

    target = tmp_path / "moto" / "dynamodb" / "models" / "__init__.py"
    target.parent.mkdir(parents=True)
    shutil.copy(models.__file__, target)
    applied = subprocess.run(["git", "apply", "--include=moto/*", str(DIFF)], cwd=tmp_path, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    source = target.read_text()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)

    def segment(node: ast.FunctionDef) -> str:
        start = node.lineno - 1 - len(node.decorator_list)
        return textwrap.dedent("".join(lines[start : node.end_lineno]))

    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    backend = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "DynamoDBBackend")
    methods = {node.name: node for node in backend.body if isinstance(node, ast.FunctionDef)}
    assert segment(functions["one_write_at_a_time"]) == inspect.getsource(moto_patch.one_write_at_a_time)
    # (getsource unwraps the decorated function and shows its decorator line)
    assert segment(methods["transact_write_items"]) == inspect.getsource(moto_patch.transact_write_items)
    decorated = {name for name, node in methods.items() if any(getattr(d, "id", "") == "one_write_at_a_time" for d in node.decorator_list)}
    assert decorated == {*moto_patch.WRITES, "transact_write_items"}


def test_shard_iterators_expire_after_fifteen_minutes_instead_of_piling_up(patched, ddb, monkeypatch):
    """moto keeps every iterator it hands out (one more per GetRecords); the emulator forgets them after 15
    minutes, as DynamoDB Streams does, and an expired one is refused with ExpiredIteratorException."""
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodbstreams import dynamodbstreams_backends

    now = [1000.0]
    monkeypatch.setattr(moto_patch, "clock", lambda: now[0])
    table = make_table(ddb)
    ddb.put_item(TableName=table, Item={"PK": {"S": "a"}})
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    backend = dynamodbstreams_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    before = len(backend.shard_iterators)
    for _ in range(20):  # a poller
        page = streams.get_records(ShardIterator=iterator)
        iterator = page["NextShardIterator"]
        now[0] += 60
    assert [r["dynamodb"]["Keys"]["PK"]["S"] for r in streams.get_records(ShardIterator=iterator)["Records"]] == []
    assert len(backend.shard_iterators) <= before + 16  # about 15 minutes' worth, not all 21
    old = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    now[0] += 16 * 60
    streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")  # any call prunes
    with pytest.raises(ClientError) as exc:
        streams.get_records(ShardIterator=old)
    assert exc.value.response["Error"]["Code"] == "ExpiredIteratorException"
