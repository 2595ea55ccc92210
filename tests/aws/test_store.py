"""What the aws backend does beyond the contract suite: its commit protocol, call counts, rewrap, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tessera.core import crypto
from tessera.core.backends.aws import CallCounter, pad, parse_object_key, version_pk
from tessera.core.crypto import CachingKeyService
from tessera.core.errors import KeyConflict, Unavailable, VersionConflict
from tessera.core.model import ROOT, Action, Scope, Version
from tessera.core.service import ConfigService

SCOPE = Scope()


def node(target, calls: CallCounter | None = None) -> ConfigService:
    """A fresh node: its own store object (record cache), data-key cache and value cache."""
    calls = calls if calls is not None else CallCounter()
    return ConfigService(target.store(calls), CachingKeyService(target.kms(calls)))


def delta(calls: CallCounter, action) -> dict[str, int]:
    before = CallCounter(calls)
    action()
    after = CallCounter(calls)
    after.subtract(before)
    return {name: count for name, count in after.items() if count}


# ---------------------------------------------------------------------- call counts (documented in docs/aws.md)
def test_warm_get_is_one_consistent_dynamodb_read(target):
    calls = CallCounter()
    service = node(target, calls)
    service.put(ROOT, SCOPE, "database.host", "db.internal")
    service.get(ROOT, SCOPE, "database.host")
    for _ in range(3):
        assert delta(calls, lambda: service.get(ROOT, SCOPE, "database.host")) == {"dynamodb:GetItem": 1}
    assert calls.by_service()["dynamodb"] >= 1


def test_cold_get_reads_head_object_and_data_key_once(target):
    node(target).put(ROOT, SCOPE, "database.host", "db.internal")
    calls = CallCounter()
    cold = node(target, calls)
    assert delta(calls, lambda: cold.get(ROOT, SCOPE, "database.host")) == {
        "dynamodb:GetItem": 1, "s3:GetObject": 1, "kms:Decrypt": 1,
    }
    # ...and the next read on that node is warm.
    assert delta(calls, lambda: cold.get(ROOT, SCOPE, "database.host")) == {"dynamodb:GetItem": 1}


def test_put_call_counts(target):
    calls = CallCounter()
    service = node(target, calls)
    create = delta(calls, lambda: service.put(ROOT, SCOPE, "feature.flag", True))
    assert create == {"dynamodb:GetItem": 2, "dynamodb:TransactWriteItems": 1, "s3:PutObject": 1, "kms:GenerateDataKey": 1}
    update = delta(calls, lambda: service.put(ROOT, SCOPE, "feature.flag", False))
    assert update == create  # warm: liveness of the previous version comes from the record cache
    unchanged = delta(calls, lambda: service.put(ROOT, SCOPE, "feature.flag", False))
    assert unchanged == {"dynamodb:GetItem": 1}
    delete = delta(calls, lambda: service.delete(ROOT, SCOPE, "feature.flag"))
    assert delete == {"dynamodb:GetItem": 2, "dynamodb:TransactWriteItems": 1}


def test_cold_put_of_existing_key_also_decrypts_for_the_equality_check(target):
    node(target).put(ROOT, SCOPE, "feature.flag", True)
    calls = CallCounter()
    cold = node(target, calls)
    assert delta(calls, lambda: cold.put(ROOT, SCOPE, "feature.flag", False)) == {
        "dynamodb:GetItem": 2, "dynamodb:TransactWriteItems": 1,
        "s3:GetObject": 1, "kms:Decrypt": 1, "s3:PutObject": 1, "kms:GenerateDataKey": 1,
    }


# ---------------------------------------------------------------------- commit protocol
def _pending(key: str, number: int, envelope: bytes | None = b"x" * 40, action: Action = Action.UPDATE) -> Version:
    return Version(SCOPE, key, number, action, False, datetime.now(UTC), "test", envelope=envelope, key_id="k")


def test_stale_commit_is_a_version_conflict_and_leaves_no_object(target):
    store = target.store()
    store.commit(_pending("a.b", 1, action=Action.CREATE))
    store.commit(_pending("a.b", 2))
    fresh = target.store()  # no record cache: must find out from DynamoDB
    with pytest.raises(VersionConflict) as raised:
        fresh.commit(_pending("a.b", 2))
    assert raised.value.current_version == 2
    with pytest.raises(VersionConflict) as raised:
        store.commit(_pending("a.b", 2))  # the record cache knows version 1, DynamoDB refuses
    assert raised.value.current_version == 2
    objects = target.clients.s3.list_objects_v2(Bucket=target.bucket).get("Contents", [])
    assert len(objects) == 2  # the refused attempt's object was removed at once
    assert store.current_revision() == 2


def test_key_conflicts_follow_deletes(target):
    service = node(target)
    service.put(ROOT, SCOPE, "a.b.c", 1)
    service.put(ROOT, SCOPE, "a.b.d", 2)
    with pytest.raises(KeyConflict):
        service.put(ROOT, SCOPE, "a.b", 0)
    with pytest.raises(KeyConflict):
        service.put(ROOT, SCOPE, "a", 0)
    with pytest.raises(KeyConflict):
        service.put(ROOT, SCOPE, "a.b.c.d", 0)
    service.delete(ROOT, SCOPE, "a.b.c")
    with pytest.raises(KeyConflict):
        service.put(ROOT, SCOPE, "a.b", 0)  # a.b.d is still live
    service.delete(ROOT, SCOPE, "a.b.d")
    assert service.put(ROOT, SCOPE, "a.b", 0).created  # nothing live below any more
    with pytest.raises(KeyConflict):
        service.put(ROOT, SCOPE, "a.b.c", 3)  # and now a.b is live above
    service.rollback(ROOT, SCOPE, "a.b", 1)
    assert [v.key for v in service.store.list_latest(SCOPE, "a")] == ["a.b"]


def test_revisions_are_gap_free_and_the_change_log_matches(target):
    service = node(target)
    for i in range(5):
        service.put(ROOT, SCOPE, f"k{i % 2}", i)
    service.delete(ROOT, SCOPE, "k0")
    changes = service.store.changes_since(0, 100)
    assert [c.revision for c in changes] == list(range(1, 7))
    assert service.store.current_revision() == 6
    assert service.store.oldest_retained_revision() == 1
    assert [c.revision for c in service.store.changes_since(4, 1)] == [5]
    item = target.clients.dynamodb.get_item(TableName=target.table, Key={"PK": {"S": "CHANGES"}, "SK": {"S": pad(1)}})["Item"]
    assert int(item["expires_at"]["N"]) > datetime.now(UTC).timestamp()  # the TTL retention


def test_history_pages_newest_first(target):
    service = node(target)
    for i in range(7):
        service.put(ROOT, SCOPE, "h", i)
    assert [v.version for v in service.store.history(SCOPE, "h", 3, None)] == [7, 6, 5]
    assert [v.version for v in service.store.history(SCOPE, "h", 3, 3)] == [2, 1]


def test_record_cache_is_bounded(target):
    store = target.store(record_cache_entries=3)
    service = ConfigService(store, CachingKeyService(target.kms()))
    for i in range(6):
        service.put(ROOT, SCOPE, f"c{i}", i)
    assert len(store.records) == 3


def test_object_keys_name_their_version():
    scope, key, number = parse_object_key(f"v/ns/prod/database.host/{pad(12)}-0123abcd")  # type: ignore[misc]
    assert (scope, key, number) == (Scope("ns", "prod"), "database.host", 12)
    assert parse_object_key("other/thing") is None


# ---------------------------------------------------------------------- rewrap support
def test_rewrap_swaps_objects_conditionally(target):
    service = node(target)
    service.put(ROOT, SCOPE, "s.one", "v1", secret=True)
    service.put(ROOT, SCOPE, "s.one", "v2")
    service.put(ROOT, SCOPE, "s.two", "w")
    store, keys = service.store, service.keys
    sealed = store.iter_sealed_versions(None, 10)
    assert [(v.key, v.version) for v in sealed] == [("s.one", 1), ("s.one", 2), ("s.two", 1)]
    assert [(v.key, v.version) for v in store.iter_sealed_versions(("default", "default", "s.one", 1), 1)] == [("s.one", 2)]
    for version in sealed:
        new = crypto.rewrap_envelope(keys, keys, version.scope, version.key, version.version, version.envelope)
        assert store.replace_envelope(version, version.envelope, new, crypto.envelope_key_id(new))
        assert not store.replace_envelope(version, version.envelope, new, "again")  # no longer ``old``
    assert sum(store.versions_by_key_id().values()) == 3
    cold = node(target)
    assert cold.get(ROOT, SCOPE, "s.one").value == "v2"
    assert cold.get(ROOT, SCOPE, "s.one", version=1).value == "v1"
    # The replaced objects are orphans now; gc (no grace) removes exactly those.
    report = store.collect_orphans(grace_seconds=0)
    assert report.deleted == 3 and cold.get(ROOT, SCOPE, "s.two").value == "w"


def test_a_rewrap_run_scans_the_table_once_whatever_its_page_size(target):

    service = node(target)
    for i in range(12):
        service.put(ROOT, SCOPE, f"many.k{i}", i)
    store = service.store
    scans_before = store.calls["dynamodb:Scan"]
    seen, after = [], None
    while page := store.iter_sealed_versions(after, 2):  # six pages
        seen.extend((v.key, v.version) for v in page)
        last = page[-1]
        after = (last.scope.namespace, last.scope.env, last.key, last.version)
    assert len(seen) == 12 and seen == sorted(seen)
    assert store.calls["dynamodb:Scan"] - scans_before == 1


def test_a_reader_holding_a_replaced_object_follows_the_version_item(target):
    service = node(target)
    service.put(ROOT, SCOPE, "r", "value")
    store = service.store
    old_record = store.latest(SCOPE, "r")
    [version] = store.iter_sealed_versions(None, 10)
    new = crypto.rewrap_envelope(service.keys, service.keys, SCOPE, "r", 1, version.envelope)
    store.replace_envelope(version, version.envelope, new, crypto.envelope_key_id(new))
    store.collect_orphans(grace_seconds=0)  # the old object is gone
    assert store.load_envelope(old_record) == new


# ---------------------------------------------------------------------- errors never leak botocore
def test_missing_table_is_unavailable_not_a_botocore_error(target):
    store = replace_table(target, "no-such-table")
    with pytest.raises(Unavailable) as raised:
        store.latest(SCOPE, "k")
    assert "dynamodb" in raised.value.message
    with pytest.raises(Unavailable):
        store.commit(_pending("k", 1, action=Action.CREATE))


def replace_table(target, table: str):
    from tessera.core.backends.aws import AwsStore

    return AwsStore(table=table, bucket=target.bucket, dynamodb=target.clients.dynamodb, s3=target.clients.s3)


def test_version_item_layout(target):
    service = node(target)
    service.put(ROOT, SCOPE, "layout.key", "v", secret=True)
    item = target.clients.dynamodb.get_item(
        TableName=target.table, Key={"PK": {"S": version_pk(SCOPE, "layout.key")}, "SK": {"S": pad(1)}}
    )["Item"]
    assert item["sec"] == {"BOOL": True} and item["obj"]["S"].startswith("v/default/default/layout.key/")
    body = target.clients.s3.get_object(Bucket=target.bucket, Key=item["obj"]["S"])["Body"].read()
    assert body.startswith(b"TSE1") and b'"v"' not in body  # sealed, never plaintext


def test_a_change_log_gap_left_by_ttl_is_refused_not_skipped(target):
    """TTL deletes expired entries in no particular order; revisions are gap-free, so a hole means compaction."""
    from tessera.core.errors import RevisionCompacted

    service = node(target)
    for i in range(4):
        service.put(ROOT, SCOPE, "k", i)
    target.clients.dynamodb.delete_item(TableName=target.table, Key={"PK": {"S": "CHANGES"}, "SK": {"S": pad(3)}})
    assert [c.revision for c in service.store.changes_since(3, 10)] == [4]
    for since in (0, 2):
        with pytest.raises(RevisionCompacted) as raised:
            service.store.changes_since(since, 10)
        assert raised.value.extra["current_revision"] == 4


def test_change_log_and_audit_retention_come_from_the_settings(target):
    """ChangeLogRetentionDays / AuditRetentionDays reach the store (TESSERA_*_RETENTION_DAYS, set by the template)."""
    from tessera.core.backends.aws import AwsStore
    from tessera.core.settings import Settings

    env = {**target.env(), "TESSERA_CHANGE_LOG_RETENTION_DAYS": "7", "TESSERA_AUDIT_RETENTION_DAYS": "400"}
    store = AwsStore.from_settings(Settings.from_env(env), target.clients)
    assert store.change_log_ttl.days == 7 and store.audit_retention.days == 400
    store.commit(_pending("ttl.key", 1, action=Action.CREATE))
    change = target.clients.dynamodb.get_item(TableName=target.table, Key={"PK": {"S": "CHANGES"}, "SK": {"S": pad(1)}})["Item"]
    seconds = int(change["expires_at"]["N"]) - datetime.now(UTC).timestamp()
    assert 6.9 * 86400 < seconds <= 7 * 86400
