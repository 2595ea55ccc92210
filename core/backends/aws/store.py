"""``AwsStore``: the ``VersionStore`` and ``RewrapStore`` of the aws backend (S3 values, DynamoDB state).

Reads are single strongly consistent ``GetItem``/``Query`` calls; the commit writes the S3 object first,
then one ``TransactWriteItems`` (``commit.py``) conditioned on the head's version and on the revision
counter. No botocore exception leaves the module: conflicts become ``VersionConflict``/``KeyConflict``,
anything else that persists after botocore's retries ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from tessera.core.access_model import AuditEntry
from tessera.core.auth import ROOT_HASH_META
from tessera.core.backends.aws import maintenance
from tessera.core.backends.aws.audit import DEFAULT_RETENTION, ShardWriter
from tessera.core.backends.aws.calls import AwsClients, CallCounter, ClientFailure, Table, call_aws, shared_clients
from tessera.core.backends.aws.commit import AUDIT, IDEM, Pending, TransactionPlan, batch_items
from tessera.core.backends.aws.idempotency import mark_item
from tessera.core.backends.aws.items import (
    CHANGES_PK,
    COUNTER_PK,
    COUNTER_SK,
    ENVS_PK,
    META_PK,
    b,
    get_n,
    get_s,
    head_pk,
    is_this_commit,
    item_to_change,
    item_to_version,
    object_key,
    pad,
    s,
    sha256,
    version_pk,
)
from tessera.core.backends.aws.stamp import AuthStamp
from tessera.core.errors import DeadlineExceeded, KeyConflict, RevisionCompacted, TesseraError, Unavailable, VersionConflict
from tessera.core.idempotency import RETENTION, IdempotencyGuard, IdempotencyInProgress, change_of
from tessera.core.model import Change, Environment, Scope, Version, is_under

if TYPE_CHECKING:  # the settings module is light, but keep the adapter's imports obvious
    from tessera.core.settings import Settings

# A commit that keeps losing only the revision counter (other keys committing) retries this often before
# giving up with 503: each loss means someone else made progress, so this bounds latency, not correctness.
COUNTER_ATTEMPTS = 60
DEFAULT_CHANGE_LOG_TTL = timedelta(days=30)
BATCH_GET_KEYS = 100  # DynamoDB's limit per BatchGetItem
UNPROCESSED_ATTEMPTS = 8
# Transactions one import may write: at the ~40-60 ms a 100-item TransactWriteItems takes on DynamoDB, about 20 s,
# leaving the rest of API Gateway's 29 s for the reads, KMS and S3 (docs/aws.md, "Imports"). 10,000 keys of a
# usual tree (a few ancestors shared) take about 300-350.
MAX_IMPORT_TRANSACTIONS = 400
PARALLEL_CALLS = 32  # an import's S3 puts in flight at once (the clients pool 32 connections)
DEFAULT_RECORD_CACHE = 20_000


def by_path(pendings: list[tuple[int, Pending]]) -> list[tuple[int, Pending]]:
    """In key order: siblings share their ancestors' items in one transaction (a tree packs about 30 keys into each
    instead of as few as 19 in document order), so the revisions of one import follow key order."""
    return sorted(pendings, key=lambda entry: (entry[1].version.scope.namespace, entry[1].version.scope.env, entry[1].version.key))


class RecordCache:
    """Bounded LRU of immutable version records by (scope, key, version): a version never changes once
    committed (a rewrap swaps its object, which ``load_envelope`` notices), so entries never go stale.
    cachetools is not thread-safe: every use holds the lock."""

    def __init__(self, max_entries: int = DEFAULT_RECORD_CACHE) -> None:
        self.max_entries = max_entries
        self._entries: LRUCache[tuple[Scope, str, int], Version] = LRUCache(max(max_entries, 0))
        self._lock = threading.Lock()

    def get(self, scope: Scope, key: str, version: int) -> Version | None:
        with self._lock:
            return self._entries.get((scope, key, version))

    def put(self, record: Version) -> None:
        if self.max_entries <= 0:
            return  # no cache (cachetools refuses any entry when its size is 0)
        stored = replace(record, envelope=None)  # envelopes stay in S3; only metadata is cached
        with self._lock:
            self._entries[(record.scope, record.key, record.version)] = stored

    def drop(self, scope: Scope, key: str, version: int) -> None:
        with self._lock:
            self._entries.pop((scope, key, version), None)

    def __len__(self) -> int:
        return len(self._entries)


class AwsStore:
    """``VersionStore`` + ``RewrapStore`` over one S3 bucket and one DynamoDB table.

    >>> # store = AwsStore(table="tessera", bucket="tessera-values", dynamodb=clients.dynamodb, s3=clients.s3)
    >>> # store.latest(Scope(), "database.host")   # → Version(...) or None: one consistent GetItem
    """

    backend_name = "aws"

    def __init__(
        self,
        *,
        table: str,
        bucket: str,
        dynamodb: Any,
        s3: Any,
        calls: CallCounter | None = None,
        change_log_ttl: timedelta = DEFAULT_CHANGE_LOG_TTL,
        audit_retention: timedelta = DEFAULT_RETENTION,
        record_cache_entries: int = DEFAULT_RECORD_CACHE,
        sleep: Callable[[float], None] = time.sleep,
        pinned_meta: Mapping[str, str] | None = None,
    ) -> None:
        self.calls = calls if calls is not None else CallCounter()
        self.table = table
        self.db = Table(table, dynamodb, self.calls)  # the table behind counted, consistent calls
        self.bucket = bucket
        self.dynamodb = dynamodb
        self.s3 = s3
        self.change_log_ttl = change_log_ttl
        self.audit_retention = audit_retention
        self._audit_writer: ShardWriter | None = None
        # Meta (the root token's digest, the active KMS key) is answered from memory while the auth stamp stays put.
        self.auth_stamp = AuthStamp(self.db)
        self._meta = self.auth_stamp.cache()
        # Meta the deployment fixes (the root token's digest on Lambda): answered without a read, never written.
        self.pinned_meta = dict(pinned_meta or {})
        self.records = RecordCache(record_cache_entries)
        self._sealed = maintenance.SealedVersions(self)
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, clients: AwsClients | None = None) -> AwsStore:
        clients = clients or shared_clients(settings.region, settings.endpoint_url)
        if not settings.bucket or not settings.table:
            raise Unavailable("the aws backend needs TESSERA_BUCKET and TESSERA_TABLE")
        return cls(
            table=settings.table,
            bucket=settings.bucket,
            dynamodb=clients.dynamodb,
            s3=clients.s3,
            calls=clients.calls,
            change_log_ttl=timedelta(days=settings.change_log_retention_days),
            audit_retention=timedelta(days=settings.audit_retention_days),
            pinned_meta={ROOT_HASH_META: settings.root_token_sha256} if settings.root_token_sha256 else None,
        )

    def close(self) -> None:
        """Nothing to release: clients are shared and stateless between calls."""

    def audit_writer(self) -> ShardWriter:
        """The writer of this process's audit shard, shared with ``DynamoAccessStore`` (``commit``'s records
        and the other requests' records extend one chain)."""
        if self._audit_writer is None:
            self._audit_writer = ShardWriter(self.db, self.audit_retention)
        return self._audit_writer

    # ------------------------------------------------------------------ S3
    def s3_call(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return call_aws(self.calls, "s3", self.s3, operation, handled, **params)

    def _get_object(self, ref: str) -> bytes:
        response = self.s3_call("GetObject", frozenset({"NoSuchKey", "404"}), Bucket=self.bucket, Key=ref)
        try:
            return response["Body"].read()
        except Exception as exc:  # a connection dropped mid-body is botocore's, urllib3's or the socket's
            raise Unavailable("s3 connection dropped while reading a value") from exc

    def discard_object(self, obj: str | None) -> None:
        """Best effort: an object no commit points at (``tessera aws gc`` removes it later otherwise)."""
        if obj is None:
            return
        try:
            self.s3_call("DeleteObject", Bucket=self.bucket, Key=obj)
        except Unavailable:
            pass

    # ------------------------------------------------------------------ reads
    def latest(self, scope: Scope, key: str) -> Version | None:
        """One strongly consistent GetItem: the head carries the latest version's metadata."""
        item = self.db.get(head_pk(scope), key)
        if item is None or "ver" not in item:
            return None  # no head, or only the live-descendant count of a path that never held a value
        record = item_to_version(item)
        self.records.put(record)
        return record

    def latest_many(self, scope: Scope, keys: list[str]) -> dict[str, Version | None]:
        """``latest`` of many keys of one scope: strongly consistent ``BatchGetItem`` calls of 100 keys (an import
        reads 10,000 heads in 100 calls, not 10,000)."""
        found: dict[str, Version | None] = dict.fromkeys(keys)
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), BATCH_GET_KEYS):
            request = {self.table: {"Keys": [self.db.key(head_pk(scope), key) for key in wanted[start : start + BATCH_GET_KEYS]],
                                    "ConsistentRead": True}}  # fmt: skip
            for attempt in range(UNPROCESSED_ATTEMPTS):
                response = self.db.call("BatchGetItem", RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    if "ver" in item:  # a head with only the live-descendant count is no key
                        record = item_to_version(item)
                        self.records.put(record)
                        found[record.key] = record
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # throttled: back off, ask for the rest
            else:
                raise Unavailable("dynamodb kept refusing to read the heads of this import; nothing was changed")
        return found

    def get_version(self, scope: Scope, key: str, version: int) -> Version | None:
        cached = self.records.get(scope, key, version)
        if cached is not None:
            return cached
        item = self.db.get(version_pk(scope, key), pad(version))
        if item is None:
            return None
        record = item_to_version(item)
        self.records.put(record)
        return record

    def load_envelope(self, version: Version) -> bytes:
        ref = version.envelope_ref
        if ref is None:
            stored = self.get_version(version.scope, version.key, version.version)
            ref = stored.envelope_ref if stored else None
        if ref is None:
            raise Unavailable("the stored value is missing")
        try:
            return self._get_object(ref)
        except ClientFailure:
            # A rewrap may have moved the value to a new object since this record was read: look again.
            self.records.drop(version.scope, version.key, version.version)
            item = self.db.get(version_pk(version.scope, version.key), pad(version.version))
            fresh = get_s(item, "obj") if item else None
            if item is None or fresh is None or fresh == ref:
                raise Unavailable("the stored value is missing") from None
            self.records.put(item_to_version(item))
            try:
                return self._get_object(fresh)
            except ClientFailure:
                raise Unavailable("the stored value is missing") from None

    def history(self, scope: Scope, key: str, limit: int, before: int | None) -> list[Version]:
        condition = "PK = :pk"
        values: dict[str, Any] = {":pk": s(version_pk(scope, key))}
        if before is not None:
            condition += " AND SK < :before"
            values[":before"] = s(pad(before))
        items = self.db.query(
            limit=limit, KeyConditionExpression=condition, ExpressionAttributeValues=values, ScanIndexForward=False
        )
        records = [item_to_version(item) for item in items]
        for record in records:
            self.records.put(record)
        return records

    def list_latest(self, scope: Scope, prefix: str) -> list[Version]:
        values: dict[str, Any] = {":pk": s(head_pk(scope)), ":live": b(True)}
        condition = "PK = :pk"
        if prefix:
            # [prefix, prefix + "/"] holds prefix, prefix.* and (as '-' < '.' < '/') prefix-*: filtered below.
            condition += " AND SK BETWEEN :low AND :high"
            values[":low"] = s(prefix)
            values[":high"] = s(prefix + "/")
        items = self.db.query(KeyConditionExpression=condition, FilterExpression="live = :live", ExpressionAttributeValues=values)
        found = [item_to_version(item) for item in items if is_under(item["SK"]["S"], prefix)]
        return sorted(found, key=lambda record: record.key)

    def current_revision(self) -> int:
        item = self.db.get(COUNTER_PK, COUNTER_SK)
        return (get_n(item, "v") or 0) if item is not None else 0

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        items = self.db.partition(CHANGES_PK, after=pad(max(revision, 0)), limit=limit)
        changes = [item_to_change(item) for item in items]
        # Revisions are gap-free, so a gap means TTL has deleted entries (it deletes in no particular order):
        # refuse rather than let a watcher skip a change silently.
        expected = max(revision, 0) + 1
        for change in changes:
            if change.revision != expected:
                raise RevisionCompacted("changes after this revision are no longer retained; resync", self.current_revision())
            expected += 1
        return changes

    def oldest_retained_revision(self) -> int:
        first = next(self.db.partition(CHANGES_PK, limit=1), None)
        if first is not None:
            return int(first["rev"]["N"])
        return self.current_revision() + 1

    # ------------------------------------------------------------------ the commit
    def commit(self, version: Version, audit: AuditEntry | None = None, guard: IdempotencyGuard | None = None) -> Version:
        """S3 object first, then one ``TransactWriteItems`` (see docs/aws.md, "Commit protocol"); ``audit``,
        the request's record, is written in that same transaction: the change and its record land together, and so
        does the mark of ``guard``'s ``Idempotency-Key`` claim (``aws/idempotency.py``): when the claim is no longer
        the guard's, nothing is committed (``IdempotencyInProgress``)."""
        scope, key = version.scope, version.key
        pending = Pending(version, self._liveness_of(scope, key, version.version - 1))
        if pending.live:
            if version.envelope is None:
                raise Unavailable("a live version needs an envelope")
            obj = object_key(scope, key, version.version)
            pending = replace(pending, obj=obj, sha=sha256(version.envelope))
            self.s3_call("PutObject", Bucket=self.bucket, Key=obj, Body=version.envelope, IfNoneMatch="*",
                         ContentType="application/octet-stream")  # fmt: skip
        try:
            mark = mark_item(self.table, guard, change_of(version), version.updated_at + RETENTION) if guard is not None else None
            revision = self._commit_recorded(pending, audit, mark) if audit is not None else self._commit_transaction(pending, None, mark)
        except (VersionConflict, KeyConflict, IdempotencyInProgress):
            # Definitely not committed: the object is garbage now (gc would find it; this saves it the trouble).
            self.discard_object(pending.obj)
            raise
        committed = replace(version, revision=revision, envelope_ref=pending.obj)
        self.records.put(committed)
        return committed

    def _liveness_of(self, scope: Scope, key: str, version: int) -> bool:
        """Whether ``version`` of ``key`` held a value. Immutable, so the record cache answers it when
        ``latest`` has just read it (the service always reads before it writes); else one read of the head."""
        if version == 0:
            return False
        cached = self.records.get(scope, key, version)
        if cached is not None:
            return not cached.deleted
        head = self.db.get(head_pk(scope), key)
        current = get_n(head, "ver") if head else None
        if head is None or current != version:
            raise VersionConflict("the key changed since it was read", current or 0)
        return bool(head["live"]["BOOL"])

    def _change_expires(self) -> int:
        return int((datetime.now(UTC) + self.change_log_ttl).timestamp())

    def _commit_recorded(self, pending: Pending, audit: AuditEntry, mark: dict[str, Any] | None = None) -> int:
        writer = self.audit_writer()
        with writer.lock:  # the record's place in the chain is held until the transaction's outcome is known
            block = writer.reserve([audit])
            try:
                revision = self._commit_transaction(pending, block.item, mark)
            except (VersionConflict, KeyConflict, IdempotencyInProgress):
                writer.settle(block, False)
                raise
            except BaseException:
                writer.settle(block, None)  # maybe written: the writer looks for its real tail before the next one
                raise
            writer.settle(block, True)
            return revision

    def _commit_transaction(self, pending: Pending, audit_item: dict[str, Any] | None = None, mark: dict[str, Any] | None = None) -> int:
        version = pending.version
        for attempt in range(COUNTER_ATTEMPTS):
            current_revision = self.current_revision()
            revision = current_revision + 1
            plan = TransactionPlan(self.table)
            plan.version(0, pending, revision, self._change_expires())
            plan.counter(current_revision, revision)
            if audit_item is not None:
                plan.put(AUDIT, audit_item)
            if mark is not None:
                plan.add(IDEM, -1, mark)
            try:
                self.db.transact(
                    plan.items,
                    frozenset({"TransactionCanceledException", "TransactionConflictException",
                               "IdempotentParameterMismatchException"}),
                    # Same token across botocore's retries: a retry of a commit that did land is a no-op success.
                    ClientRequestToken=uuid.uuid4().hex,
                )  # fmt: skip
                return revision
            except ClientFailure as failure:
                reasons = failure.response.get("CancellationReasons") or []
                head_now = reasons[0].get("Item") if reasons and reasons[0].get("Code") == "ConditionalCheckFailed" else None
                if head_now is not None and is_this_commit(head_now, version, pending.obj):
                    # A botocore retry of an attempt that had landed (its answer lost) met its own head.
                    return int(head_now["rev"]["N"])
                plan.raise_for_cancellation(reasons, [pending], self._head_item)
            except Unavailable:
                landed = self._landed(version, pending.obj)
                if landed is not None:
                    return landed
                raise
            # Lost the revision counter (another key committed) or a transient conflict: go again.
            self._sleep(random.uniform(0, min(0.25, 0.004 * 2**attempt)))
        raise Unavailable("too much write contention; nothing was changed")

    # ------------------------------------------------------------------ batched commits (imports)
    max_import_transactions = MAX_IMPORT_TRANSACTIONS

    def transactions_for(self, versions: list[Version]) -> int:
        """How many transactions ``commit_batch`` would write for these versions (their previous versions read
        just before, so the record cache answers): what an import checks before it writes anything."""
        pendings = [(index, Pending(version, self._liveness_of(version.scope, version.key, version.version - 1)))
                    for index, version in enumerate(versions)]  # fmt: skip
        return len(batch_items(by_path(pendings), 1))

    def commit_batch(self, versions: list[Version], audits: list[AuditEntry | None], deadline: float | None = None) -> list[Version | TesseraError]:
        """Versions of different keys, each committed on its own terms but many per ``TransactWriteItems`` (up to
        100 items: an import of 10,000 keys in a few hundred transactions, not 10,000). ``audits[i]`` is
        ``versions[i]``'s record, in the same transaction. Returns, per version, the committed version or the error
        that kept it out (``VersionConflict``, ``KeyConflict``; the other versions of its batch commit without it).
        Batches not started by ``deadline`` (``time.monotonic()``) are not written: their slots hold
        ``DeadlineExceeded``, so a caller can say exactly what was left out.

        Objects go to S3 first, in parallel; each batch then commits like ``commit`` (revision counter, retries,
        an ambiguous failure read back), taking consecutive revisions in list order."""
        outcomes: list[Version | TesseraError | None] = [None] * len(versions)
        pendings: list[tuple[int, Pending]] = []
        for index, version in enumerate(versions):
            try:
                pending = Pending(version, self._liveness_of(version.scope, version.key, version.version - 1))
            except VersionConflict as exc:
                outcomes[index] = exc
                continue
            if pending.live:
                if version.envelope is None:
                    raise Unavailable("a live version needs an envelope")
                pending = replace(pending, obj=object_key(version.scope, version.key, version.version), sha=sha256(version.envelope))
            pendings.append((index, pending))
        fixed = 1 + (1 if any(entry is not None for entry in audits) else 0)  # the counter, the audit block

        def put(pending: Pending) -> None:
            self.s3_call("PutObject", Bucket=self.bucket, Key=pending.obj, Body=pending.version.envelope, IfNoneMatch="*",
                         ContentType="application/octet-stream")  # fmt: skip

        # Every object is sent at once (PARALLEL_CALLS in flight); each batch commits as soon as its own are in S3,
        # so the uploads of the next batches overlap this one's transaction.
        with ThreadPoolExecutor(PARALLEL_CALLS, thread_name_prefix="tessera-put") as pool:
            uploads = {index: pool.submit(put, pending) for index, pending in pendings if pending.live}
            for batch in batch_items(by_path(pendings), fixed):
                if deadline is not None and time.monotonic() > deadline:
                    for index, pending in batch:
                        outcomes[index] = DeadlineExceeded("the import ran out of time before this key; it was not written")
                        self._discard_upload(uploads.get(index), pending)
                    continue
                ready: list[tuple[int, Pending]] = []
                for index, pending in batch:
                    try:
                        if index in uploads:
                            uploads[index].result()
                        ready.append((index, pending))
                    except TesseraError as exc:
                        outcomes[index] = exc
                if ready:
                    self._commit_batch(ready, audits, outcomes)
        return [outcome if outcome is not None else Unavailable("not committed") for outcome in outcomes]

    def _discard_upload(self, upload: Future[None] | None, pending: Pending) -> None:
        if upload is not None:
            with contextlib.suppress(TesseraError):
                upload.result()
        self.discard_object(pending.obj)

    def _commit_batch(self, batch: list[tuple[int, Pending]], audits: list[AuditEntry | None], outcomes: list[Version | TesseraError | None]) -> None:
        remaining = list(batch)
        lost = 0
        while remaining and lost < COUNTER_ATTEMPTS:
            pendings = [pending for _, pending in remaining]
            entries = [audits[index] for index, _ in remaining if audits[index] is not None]
            current = self.current_revision()
            plan = TransactionPlan(self.table)
            plan.versions(pendings, current + 1, self._change_expires())
            plan.counter(current, current + len(pendings))
            try:
                failed = self._transact_batch(plan, pendings, [entry for entry in entries if entry is not None])
            except TesseraError as exc:  # unavailable, or the audit log moved: none of these was written
                for index, pending in remaining:
                    outcomes[index] = exc
                    self.discard_object(pending.obj)
                return
            if failed is None:  # committed
                for number, (index, pending) in enumerate(remaining):
                    committed = replace(pending.version, revision=current + 1 + number, envelope_ref=pending.obj)
                    self.records.put(committed)
                    outcomes[index] = committed
                return
            if failed:  # these leave the batch; the others go again at once
                for number in sorted(failed):
                    index, pending = remaining[number]
                    outcomes[index] = failed[number]
                    self.discard_object(pending.obj)
                remaining = [entry for number, entry in enumerate(remaining) if number not in failed]
                continue
            lost += 1  # only the revision counter (another commit first) or a transient conflict
            self._sleep(random.uniform(0, min(0.25, 0.004 * 2**lost)))
        for index, pending in remaining:
            outcomes[index] = Unavailable("too much write contention; nothing was changed for this key")
            self.discard_object(pending.obj)

    def _transact_batch(self, plan: TransactionPlan, pendings: list[Pending], entries: list[AuditEntry]) -> dict[int, TesseraError] | None:
        """One attempt: None when it committed, else the versions that failed their own checks (empty: go again)."""
        first = pendings[0]
        writer = self.audit_writer() if entries else None
        with writer.lock if writer is not None else contextlib.nullcontext():
            block = writer.reserve(entries) if writer is not None else None
            if block is not None:
                plan.put(AUDIT, block.item)
            written: bool | None = False
            try:
                self.db.transact(
                    plan.items,
                    frozenset({"TransactionCanceledException", "TransactionConflictException",
                               "IdempotentParameterMismatchException"}),
                    ClientRequestToken=uuid.uuid4().hex,
                )  # fmt: skip
                written = True
                return None
            except ClientFailure as failure:
                reasons = failure.response.get("CancellationReasons") or []
                head_now = reasons[0].get("Item") if reasons and reasons[0].get("Code") == "ConditionalCheckFailed" else None
                if head_now is not None and is_this_commit(head_now, first.version, first.obj):
                    written = True  # a botocore retry of an attempt that had landed met its own heads
                    return None
                return plan.batch_failures(reasons, pendings, self._head_item)
            except Unavailable:
                written = None
                if self._landed(first.version, first.obj) is not None:
                    written = True
                    return None
                raise
            finally:
                if writer is not None and block is not None:
                    writer.settle(block, written)

    def _head_item(self, version: Version) -> Mapping[str, Any] | None:
        return self.db.get(head_pk(version.scope), version.key)

    def _landed(self, version: Version, obj: str | None) -> int | None:
        """After an ambiguous failure (the transaction may have landed, its answer lost): did it?"""
        try:
            item = self.db.get(version_pk(version.scope, version.key), pad(version.version))
        except Unavailable:
            return None
        if item is not None and is_this_commit(item, version, obj):
            return int(item["rev"]["N"])
        return None

    # ------------------------------------------------------------------ environments and meta
    def list_envs(self) -> list[Environment]:
        return [Environment(item["SK"]["S"], get_s(item, "parent")) for item in self.db.partition(ENVS_PK)]

    def put_env(self, env: Environment) -> bool:
        item: dict[str, Any] = {"PK": s(ENVS_PK), "SK": s(env.name)}
        if env.parent is not None:
            item["parent"] = s(env.parent)
        response = self.db.call("PutItem", TableName=self.db.name, Item=item, ReturnValues="ALL_OLD")
        return "Attributes" not in response

    def get_meta(self, name: str) -> str | None:
        if name in self.pinned_meta:
            return self.pinned_meta[name]

        def load() -> str | None:
            item = self.db.get(META_PK, name)
            return get_s(item, "value") if item else None

        return self._meta.get(name, load)  # type: ignore[no-any-return]

    def put_meta(self, name: str, value: str) -> None:
        """With the auth stamp moved in the same transaction: every node sees a new root digest within a second."""
        if name in self.pinned_meta:
            raise Unavailable(f"'{name}' is fixed by the deployment's settings; change it there")
        item = {"PK": s(META_PK), "SK": s(name), "value": s(value)}
        self.db.transact([{"Put": {"TableName": self.table, "Item": item}}, self.auth_stamp.bump()])
        self.auth_stamp.changed()

    # ------------------------------------------------------------------ key rotation and gc (maintenance.py)
    def iter_sealed_versions(self, after: tuple[str, str, str, int] | None, limit: int) -> list[Version]:
        """Sealed versions in (namespace, env, key, version) order, strictly after ``after`` (one scan per run)."""
        return self._sealed.page(after, limit)

    def replace_envelope(self, version: Version, old: bytes, new: bytes, new_key_id: str) -> bool:
        return maintenance.replace_envelope(self, version, old, new, new_key_id)

    def versions_by_key_id(self) -> dict[str, int]:
        return maintenance.versions_by_key_id(self)

    def collect_orphans(
        self, grace_seconds: float = 3600.0, dry_run: bool = False, now: datetime | None = None
    ) -> maintenance.OrphanReport:
        return maintenance.collect_orphans(self, grace_seconds, dry_run, now)
