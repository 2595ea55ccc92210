"""Work on the whole store that no request does: key rotation's walk and swap, and garbage collection.

Both act through an ``AwsStore`` (its table, bucket and record cache); ``AwsStore`` exposes them as the
``RewrapStore`` methods and ``collect_orphans``. What they need of it is the ``MaintainedStore`` Protocol below,
so this module does not import ``store.py`` (which imports this one).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tessera.core.backends.aws.calls import ClientFailure, Table
from tessera.core.backends.aws.items import (
    OBJECT_PREFIX,
    get_n,
    get_s,
    head_pk,
    item_to_version,
    n,
    object_key,
    pad,
    parse_object_key,
    s,
    sha256,
    version_pk,
)
from tessera.core.model import Scope, Version

SEALED_SNAPSHOT_SECONDS = 600.0  # how long one rewrap run reuses its scan of version ids
VersionId = tuple[str, str, str, int]  # (namespace, env, key, version)


class DroppableRecords(Protocol):
    def drop(self, scope: Scope, key: str, version: int) -> None: ...


class MaintainedStore(Protocol):
    """What maintenance needs of ``AwsStore`` (``store.py``)."""

    @property
    def db(self) -> Table: ...

    @property
    def bucket(self) -> str: ...

    @property
    def records(self) -> DroppableRecords: ...

    def s3_call(self, operation: str, handled: frozenset[str] = ..., **params: Any) -> dict[str, Any]: ...

    def discard_object(self, obj: str | None) -> None: ...

    def load_envelope(self, version: Version) -> bytes: ...


class SealedVersions:
    """``iter_sealed_versions`` of one store: a rewrap run starts with ``after=None``; that call scans the
    table once (consistently) and keeps the sorted list of version ids; the run's later pages bisect into it,
    so a run costs one scan, not one per page (no global index, which every commit would have to write). Each
    returned version is read fresh, so a page never carries an envelope that an earlier page already
    replaced. Versions written after the scan are sealed under the then-active key and need no rewrap;
    ``keys status`` shows any that do."""

    def __init__(self, store: MaintainedStore) -> None:
        self.store = store
        self._snapshot: tuple[float, list[VersionId]] | None = None

    def page(self, after: VersionId | None, limit: int) -> list[Version]:
        store = self.store
        now = time.monotonic()
        snapshot = self._snapshot
        if after is None or snapshot is None or now - snapshot[0] > SEALED_SNAPSHOT_SECONDS:
            ids = sorted(
                (record.scope.namespace, record.scope.env, record.key, record.version)
                for record in map(item_to_version, scan_versions(store))
            )
            snapshot = self._snapshot = (now, ids)
        ids = snapshot[1]
        start = bisect.bisect_right(ids, after) if after is not None else 0
        page: list[Version] = []
        for namespace, env, key, number in ids[start:]:
            item = store.db.get(version_pk(Scope(namespace, env), key), pad(number))
            if item is None or "obj" not in item:
                continue
            record = item_to_version(item)
            page.append(replace(record, envelope=store.load_envelope(record)))
            if len(page) == limit:
                break
        return page


def scan_versions(store: MaintainedStore, projection: str | None = None) -> Any:
    """Every version item that holds a value (consistent scan)."""
    params: dict[str, Any] = {
        "FilterExpression": "begins_with(PK, :v) AND attribute_exists(obj)",
        "ExpressionAttributeValues": {":v": s("V#")},
    }
    if projection:
        params["ProjectionExpression"] = projection
    return store.db.scan(**params)


def replace_envelope(store: MaintainedStore, version: Version, old: bytes, new: bytes, new_key_id: str) -> bool:
    """New object, then the version item (and the head, if it still points at this version) switch to it
    only if the stored envelope is still ``old``. The old object is left for gc (readers may hold it)."""
    scope, key = version.scope, version.key
    obj, old_sha, new_sha = object_key(scope, key, version.version), sha256(old), sha256(new)
    store.s3_call("PutObject", Bucket=store.bucket, Key=obj, Body=new, IfNoneMatch="*", ContentType="application/octet-stream")
    swap: dict[str, Any] = {
        "UpdateExpression": "SET obj = :obj, sha = :new, kid = :kid",
        "ConditionExpression": "sha = :old",
        "ExpressionAttributeValues": {":obj": s(obj), ":new": s(new_sha), ":kid": s(new_key_id), ":old": s(old_sha)},
    }
    table = store.db
    for _ in range(5):
        head = table.get(head_pk(scope), key, projection="ver")
        items = [{"Update": {"TableName": table.name, "Key": table.key(version_pk(scope, key), pad(version.version)), **swap}}]
        if head is not None and get_n(head, "ver") == version.version:
            head_swap = dict(swap, ConditionExpression="sha = :old AND ver = :ver")
            head_swap["ExpressionAttributeValues"] = {**swap["ExpressionAttributeValues"], ":ver": n(version.version)}
            items.append({"Update": {"TableName": table.name, "Key": table.key(head_pk(scope), key), **head_swap}})
        try:
            table.transact(items, frozenset({"TransactionCanceledException"}))
        except ClientFailure as failure:
            codes = failure.cancellation_codes
            if codes and codes[0] == "ConditionalCheckFailed":
                store.discard_object(obj)
                return False  # the stored envelope is no longer ``old``
            continue  # the head moved on meanwhile: look again
        store.records.drop(scope, key, version.version)
        return True
    store.discard_object(obj)
    return False


def versions_by_key_id(store: MaintainedStore) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for item in scan_versions(store, projection="kid"):
        counts[get_s(item, "kid") or ""] += 1
    return dict(counts)


# ---------------------------------------------------------------------- garbage collection
@dataclass(frozen=True)
class OrphanReport:
    scanned: int
    orphans: list[str]
    deleted: int
    dry_run: bool
    grace_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "orphans": self.orphans,
            "deleted": self.deleted,
            "dry_run": self.dry_run,
            "grace_seconds": self.grace_seconds,
        }


def collect_orphans(store: MaintainedStore, grace_seconds: float = 3600.0, dry_run: bool = False, now: datetime | None = None) -> OrphanReport:
    """Delete value objects no version item points at and older than ``grace_seconds``.

    Orphans come from a crash (or an ambiguous failure) between the S3 put and the transaction, and
    from rewraps. The grace period covers commits in flight, whose object exists before their item.
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=grace_seconds)
    scanned, orphans, deleted = 0, [], 0
    params: dict[str, Any] = {"Bucket": store.bucket, "Prefix": OBJECT_PREFIX}
    while True:
        page = store.s3_call("ListObjectsV2", **params)
        for entry in page.get("Contents", []):
            scanned += 1
            if entry["LastModified"] > cutoff:
                continue
            if is_referenced(store, entry["Key"]):
                continue
            orphans.append(entry["Key"])
            if not dry_run:
                store.s3_call("DeleteObject", Bucket=store.bucket, Key=entry["Key"])
                deleted += 1
        if not page.get("IsTruncated"):
            break
        params["ContinuationToken"] = page["NextContinuationToken"]
    return OrphanReport(scanned, orphans, deleted, dry_run, grace_seconds)


def is_referenced(store: MaintainedStore, name: str) -> bool:
    parsed = parse_object_key(name)
    if parsed is None:
        return True  # not ours to judge: leave anything that does not look like a value object
    scope, key, version = parsed
    item = store.db.get(version_pk(scope, key), pad(version), projection="obj")
    if item is not None and get_s(item, "obj") == name:
        return True
    head = store.db.get(head_pk(scope), key, projection="obj")
    return head is not None and get_s(head, "obj") == name
