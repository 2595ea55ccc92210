"""The aws backend: immutable value objects in S3, heads/versions/revisions/change log in one DynamoDB table,
data keys from KMS. Layout and commit protocol: ``docs/aws.md``.

Table items (``PK``/``SK`` are strings; ``<v>`` and ``<r>`` are zero-padded to 20 digits so they sort)::

    H#<ns>#<env>      <key>          head: latest version's metadata (+ ``below``: live keys under this path)
    V#<ns>#<env>#<key> <v>           version: immutable metadata, ``obj`` names its S3 object
    COUNTER           revision       the store-wide revision (``#v``)
    CHANGES           <r>            change-log entry, expires by TTL (``expires_at``)
    ENVS              <name>         environment and its parent
    META              <name>         small settings (the root token's digest)

A commit writes the S3 object first, then one ``TransactWriteItems`` conditioned on the head's version
and on the revision counter. No botocore exception leaves this module: conflicts become
``VersionConflict``/``KeyConflict``, anything else that persists after botocore's retries ``Unavailable``.

Adapters take their clients as arguments and do no I/O at import (``AwsClients.create`` builds them).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import random
import secrets
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tessera.core.errors import IntegrityError, KeyConflict, RevisionCompacted, Unavailable, VersionConflict
from tessera.core.model import Action, Change, Environment, Scope, Version, ancestors, is_under
from tessera.core.ports import DataKey

if TYPE_CHECKING:  # the settings module is light, but keep the adapter's imports obvious
    from tessera.core.settings import Settings

PAD = 20
COUNTER_PK, COUNTER_SK = "COUNTER", "revision"
CHANGES_PK = "CHANGES"
ENVS_PK = "ENVS"
META_PK = "META"
OBJECT_PREFIX = "v/"
# A commit that keeps losing only the revision counter (other keys committing) retries this often before
# giving up with 503: each loss means someone else made progress, so this bounds latency, not correctness.
COUNTER_ATTEMPTS = 60
SEALED_SNAPSHOT_SECONDS = 600.0  # how long one rewrap run reuses its scan of version ids
DEFAULT_CHANGE_LOG_TTL = timedelta(days=30)
DEFAULT_RECORD_CACHE = 20_000
# Error codes that mean "try later": botocore already retried them with backoff before we see them.
RETRYABLE_ITEM_CODES = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})


def pad(number: int) -> str:
    return f"{number:0{PAD}d}"


def head_pk(scope: Scope) -> str:
    return f"H#{scope.namespace}#{scope.env}"


def version_pk(scope: Scope, key: str) -> str:
    return f"V#{scope.namespace}#{scope.env}#{key}"


def object_key(scope: Scope, key: str, version: int) -> str:
    """Unique per write attempt: an object is never overwritten, and a retried write never collides."""
    return f"{OBJECT_PREFIX}{scope.namespace}/{scope.env}/{key}/{pad(version)}-{secrets.token_hex(8)}"


def parse_object_key(name: str) -> tuple[Scope, str, int] | None:
    """``v/<ns>/<env>/<key>/<v>-<random>`` → (scope, key, version); None for anything else."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] + "/" != OBJECT_PREFIX:
        return None
    number = parts[4].split("-", 1)[0]
    if not number.isdigit():
        return None
    return Scope(parts[1], parts[2]), parts[3], int(number)


# ---------------------------------------------------------------------- attribute values
def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _b(value: bool) -> dict[str, bool]:
    return {"BOOL": value}


def _get_s(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value["S"] if value is not None else None


def _get_n(item: Mapping[str, Any], name: str) -> int | None:
    value = item.get(name)
    return int(value["N"]) if value is not None else None


def _version_attributes(version: Version, revision: int, obj: str | None, sha: str | None) -> dict[str, Any]:
    """The metadata a head and a version item share."""
    attributes: dict[str, Any] = {
        "ns": _s(version.scope.namespace),
        "env": _s(version.scope.env),
        "key": _s(version.key),
        "ver": _n(version.version),
        "act": _s(version.action.value),
        "sec": _b(version.secret),
        "at": _s(version.updated_at.isoformat()),
        "by": _s(version.updated_by),
        "rev": _n(revision),
    }
    if version.rolled_back_from is not None:
        attributes["rb"] = _n(version.rolled_back_from)
    if version.key_id is not None:
        attributes["kid"] = _s(version.key_id)
    if obj is not None:
        attributes["obj"] = _s(obj)
        attributes["sha"] = _s(sha or "")
    return attributes


def _item_to_version(item: Mapping[str, Any]) -> Version:
    return Version(
        scope=Scope(item["ns"]["S"], item["env"]["S"]),
        key=item["key"]["S"],
        version=int(item["ver"]["N"]),
        action=Action(item["act"]["S"]),
        secret=bool(item["sec"]["BOOL"]),
        updated_at=datetime.fromisoformat(item["at"]["S"]),
        updated_by=item["by"]["S"],
        revision=int(item["rev"]["N"]),
        rolled_back_from=_get_n(item, "rb"),
        envelope=None,
        envelope_ref=_get_s(item, "obj"),
        key_id=_get_s(item, "kid"),
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_this_commit(item: Mapping[str, Any], version: Version, obj: str | None) -> bool:
    """Whether a head or version item was written by this very commit: a live write by its unique object
    key, a deletion (no object) by its version, author and timestamp."""
    if _get_n(item, "ver") != version.version:
        return False
    if obj is not None:
        return _get_s(item, "obj") == obj
    return _get_s(item, "obj") is None and _get_s(item, "by") == version.updated_by \
        and _get_s(item, "at") == version.updated_at.isoformat()


# ---------------------------------------------------------------------- clients, calls, errors
class CallCounter(Counter):
    """AWS calls made, by ``"<service>:<Operation>"`` (one per logical call; botocore's retries are not counted)."""

    def by_service(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for name, count in self.items():
            totals[name.split(":", 1)[0]] += count
        return dict(totals)

    def service(self, name: str) -> int:
        return sum(count for key, count in self.items() if key.startswith(name + ":"))


@dataclass
class AwsClients:
    """The three boto3 clients the backend uses, sharing one call counter."""

    s3: Any
    dynamodb: Any
    kms: Any
    calls: CallCounter = field(default_factory=CallCounter)

    @classmethod
    def create(
        cls,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 5,
        session: Any = None,
    ) -> AwsClients:
        """Clients with botocore's ``standard`` retry mode (exponential backoff with jitter on throttling,
        5xx and connection errors) and short timeouts, so a dead endpoint becomes ``503`` in seconds."""
        import boto3
        from botocore.config import Config

        session = session or boto3.session.Session(region_name=region)
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=3,
            read_timeout=10,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        kwargs: dict[str, Any] = {"config": config, "region_name": region or session.region_name or "us-east-1"}
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        return cls(
            s3=session.client("s3", **kwargs),
            dynamodb=session.client("dynamodb", **kwargs),
            kms=session.client("kms", **kwargs),
        )


_shared_clients: dict[tuple[str | None, str | None], AwsClients] = {}
_shared_lock = threading.Lock()


def shared_clients(region: str | None, endpoint_url: str | None) -> AwsClients:
    """One set of clients per (region, endpoint) per process: the store and the key service share it
    (and its call counter), and a Lambda container reuses it across invocations."""
    with _shared_lock:
        clients = _shared_clients.get((region, endpoint_url))
        if clients is None:
            from botocore.exceptions import BotoCoreError

            try:
                clients = AwsClients.create(region, endpoint_url)
            except BotoCoreError as exc:  # a bad profile or endpoint: say so, without botocore's trace
                raise Unavailable(f"cannot configure the AWS clients ({type(exc).__name__})") from exc
            _shared_clients[(region, endpoint_url)] = clients
        return clients


class _ClientFailure(Exception):
    """An AWS error code the caller handles itself (a failed condition, a cancelled transaction, …)."""

    def __init__(self, code: str, response: Mapping[str, Any]) -> None:
        super().__init__(code)
        self.code = code
        self.response = response


def call_aws(
    calls: CallCounter,
    service: str,
    client: Any,
    operation: str,
    handled: frozenset[str] = frozenset(),
    **params: Any,
) -> dict[str, Any]:
    """Make one AWS call, counted; codes in ``handled`` come back as ``_ClientFailure``, every other
    botocore error as ``Unavailable`` (botocore's own retries have run by then). Nothing else escapes."""
    from botocore.exceptions import BotoCoreError, ClientError

    calls[f"{service}:{operation}"] += 1
    method: Callable[..., dict[str, Any]] = getattr(client, _snake(operation))
    try:
        return method(**params)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code in handled:
            raise _ClientFailure(code, exc.response) from exc
        raise Unavailable(f"{service} is unavailable ({code}); nothing was changed") from exc
    except BotoCoreError as exc:
        raise Unavailable(f"{service} cannot be reached ({type(exc).__name__}); nothing was changed") from exc


def _snake(operation: str) -> str:
    out = []
    for index, char in enumerate(operation):
        if char.isupper() and index:
            out.append("_")
        out.append(char.lower())
    return "".join(out)


class RecordCache:
    """Bounded LRU of immutable version records by (scope, key, version): a version never changes once
    committed (a rewrap swaps its object, which ``load_envelope`` notices), so entries never go stale."""

    def __init__(self, max_entries: int = DEFAULT_RECORD_CACHE) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Scope, str, int], Version] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, scope: Scope, key: str, version: int) -> Version | None:
        with self._lock:
            hit = self._entries.get((scope, key, version))
            if hit is not None:
                self._entries.move_to_end((scope, key, version))
            return hit

    def put(self, record: Version) -> None:
        stored = replace(record, envelope=None)  # envelopes stay in S3; only metadata is cached
        with self._lock:
            self._entries[(record.scope, record.key, record.version)] = stored
            self._entries.move_to_end((record.scope, record.key, record.version))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, scope: Scope, key: str, version: int) -> None:
        with self._lock:
            self._entries.pop((scope, key, version), None)

    def __len__(self) -> int:
        return len(self._entries)


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


# ---------------------------------------------------------------------- the store

def query_items(query: Callable[..., dict[str, Any]], params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    """Items of a DynamoDB ``Query``, following ``LastEvaluatedKey`` pages until ``limit`` items (or all)."""
    params = dict(params)
    returned = 0
    while True:
        if limit is not None:
            params["Limit"] = limit - returned
        page = query(**params)
        for item in page.get("Items", []):
            yield item
            returned += 1
        if "LastEvaluatedKey" not in page or (limit is not None and returned >= limit):
            return
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class AwsStore:
    """``VersionStore`` + ``RewrapStore`` over one S3 bucket and one DynamoDB table."""

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
        record_cache_entries: int = DEFAULT_RECORD_CACHE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        self.bucket = bucket
        self.dynamodb = dynamodb
        self.s3 = s3
        self.calls = calls if calls is not None else CallCounter()
        self.change_log_ttl = change_log_ttl
        self.records = RecordCache(record_cache_entries)
        self._sealed_snapshot: tuple[float, list[tuple[str, str, str, int]]] | None = None
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, clients: AwsClients | None = None) -> AwsStore:
        clients = clients or shared_clients(settings.region, settings.endpoint_url)
        if not settings.bucket or not settings.table:
            raise Unavailable("the aws backend needs TESSERA_BUCKET and TESSERA_TABLE")
        return cls(table=settings.table, bucket=settings.bucket, dynamodb=clients.dynamodb, s3=clients.s3, calls=clients.calls)

    def close(self) -> None:
        """Nothing to release: clients are shared and stateless between calls."""

    # ------------------------------------------------------------------ call helpers
    def _ddb(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return call_aws(self.calls, "dynamodb", self.dynamodb, operation, handled, **params)

    def _s3(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return call_aws(self.calls, "s3", self.s3, operation, handled, **params)

    def _get_item(self, pk: str, sk: str, projection: str | None = None) -> dict[str, Any] | None:
        params: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"PK": _s(pk), "SK": _s(sk)},
            "ConsistentRead": True,  # see docs/aws.md: a read after a write on another node must see it
        }
        if projection:
            params["ProjectionExpression"] = projection
        return self._ddb("GetItem", **params).get("Item")

    def _query(self, limit: int | None = None, **params: Any) -> Iterator[dict[str, Any]]:
        """All items of a query (strongly consistent), following pages until ``limit`` items."""
        query = functools.partial(self._ddb, "Query")
        return query_items(query, {"TableName": self.table, "ConsistentRead": True, **params}, limit)

    def _scan_versions(self, projection: str | None = None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(PK, :v) AND attribute_exists(obj)",
            "ExpressionAttributeValues": {":v": _s("V#")},
        }
        if projection:
            params["ProjectionExpression"] = projection
        while True:
            page = self._ddb("Scan", **params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # ------------------------------------------------------------------ reads
    def latest(self, scope: Scope, key: str) -> Version | None:
        """One strongly consistent GetItem: the head carries the latest version's metadata."""
        item = self._get_item(head_pk(scope), key)
        if item is None or "ver" not in item:
            return None  # no head, or only the live-descendant count of a path that never held a value
        record = _item_to_version(item)
        self.records.put(record)
        return record

    def get_version(self, scope: Scope, key: str, version: int) -> Version | None:
        cached = self.records.get(scope, key, version)
        if cached is not None:
            return cached
        item = self._get_item(version_pk(scope, key), pad(version))
        if item is None:
            return None
        record = _item_to_version(item)
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
        except _ClientFailure:
            # A rewrap may have moved the value to a new object since this record was read: look again.
            self.records.drop(version.scope, version.key, version.version)
            item = self._get_item(version_pk(version.scope, version.key), pad(version.version))
            fresh = _get_s(item, "obj") if item else None
            if fresh is None or fresh == ref:
                raise Unavailable("the stored value is missing") from None
            self.records.put(_item_to_version(item))  # type: ignore[arg-type]
            try:
                return self._get_object(fresh)
            except _ClientFailure:
                raise Unavailable("the stored value is missing") from None

    def _get_object(self, ref: str) -> bytes:
        response = self._s3("GetObject", frozenset({"NoSuchKey", "404"}), Bucket=self.bucket, Key=ref)
        try:
            return response["Body"].read()
        except Exception as exc:  # a connection dropped mid-body is botocore's, urllib3's or the socket's
            raise Unavailable("s3 connection dropped while reading a value") from exc

    def history(self, scope: Scope, key: str, limit: int, before: int | None) -> list[Version]:
        condition = "PK = :pk"
        values: dict[str, Any] = {":pk": _s(version_pk(scope, key))}
        if before is not None:
            condition += " AND SK < :before"
            values[":before"] = _s(pad(before))
        items = self._query(
            limit=limit,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ScanIndexForward=False,
        )
        records = [_item_to_version(item) for item in items]
        for record in records:
            self.records.put(record)
        return records

    def list_latest(self, scope: Scope, prefix: str) -> list[Version]:
        values: dict[str, Any] = {":pk": _s(head_pk(scope)), ":live": _b(True)}
        condition = "PK = :pk"
        if prefix:
            # [prefix, prefix + "/"] holds prefix, prefix.* and (as '-' < '.' < '/') prefix-*: filtered below.
            condition += " AND SK BETWEEN :low AND :high"
            values[":low"] = _s(prefix)
            values[":high"] = _s(prefix + "/")
        items = self._query(
            KeyConditionExpression=condition,
            FilterExpression="live = :live",
            ExpressionAttributeValues=values,
        )
        found = [_item_to_version(item) for item in items if is_under(item["SK"]["S"], prefix)]
        return sorted(found, key=lambda record: record.key)

    def current_revision(self) -> int:
        item = self._get_item(COUNTER_PK, COUNTER_SK)
        return (_get_n(item, "v") or 0) if item is not None else 0

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        items = self._query(
            limit=limit,
            KeyConditionExpression="PK = :pk AND SK > :after",
            ExpressionAttributeValues={":pk": _s(CHANGES_PK), ":after": _s(pad(max(revision, 0)))},
        )
        changes = [
            Change(
                revision=int(item["rev"]["N"]),
                scope=Scope(item["ns"]["S"], item["env"]["S"]),
                key=item["key"]["S"],
                version=int(item["ver"]["N"]),
                action=Action(item["act"]["S"]),
                secret=bool(item["sec"]["BOOL"]),
            )
            for item in items
        ]
        # Revisions are gap-free, so a gap means TTL has deleted entries (it deletes in no particular order):
        # refuse rather than let a watcher skip a change silently.
        expected = max(revision, 0) + 1
        for change in changes:
            if change.revision != expected:
                raise RevisionCompacted(
                    "changes after this revision are no longer retained; resync", self.current_revision()
                )
            expected += 1
        return changes

    def oldest_retained_revision(self) -> int:
        first = next(
            self._query(limit=1, KeyConditionExpression="PK = :pk", ExpressionAttributeValues={":pk": _s(CHANGES_PK)}),
            None,
        )
        if first is not None:
            return int(first["rev"]["N"])
        return self.current_revision() + 1

    # ------------------------------------------------------------------ the commit
    def commit(self, version: Version) -> Version:
        """S3 object first, then one ``TransactWriteItems`` (see docs/aws.md, "Commit protocol")."""
        scope, key = version.scope, version.key
        previous = version.version - 1
        previous_live = self._liveness_of(scope, key, previous)
        live = not version.deleted
        obj = sha = None
        if live:
            if version.envelope is None:
                raise Unavailable("a live version needs an envelope")
            obj, sha = object_key(scope, key, version.version), _sha256(version.envelope)
            self._s3("PutObject", Bucket=self.bucket, Key=obj, Body=version.envelope, IfNoneMatch="*",
                     ContentType="application/octet-stream")
        try:
            revision = self._commit_transaction(version, previous, previous_live, obj, sha)
        except (VersionConflict, KeyConflict):
            # Definitely not committed: the object is garbage now (gc would find it; this saves it the trouble).
            self._discard_object(obj)
            raise
        committed = replace(version, revision=revision, envelope_ref=obj)
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
        head = self._get_item(head_pk(scope), key)
        current = _get_n(head, "ver") if head else None
        if current != version:
            raise VersionConflict("the key changed since it was read", current or 0)
        return bool(head["live"]["BOOL"])  # type: ignore[index]

    def _commit_transaction(
        self, version: Version, previous: int, previous_live: bool, obj: str | None, sha: str | None
    ) -> int:
        scope, key = version.scope, version.key
        live = not version.deleted
        ancestor_keys = ancestors(key)
        for attempt in range(COUNTER_ATTEMPTS):
            current_revision = self.current_revision()
            revision = current_revision + 1
            items = self._transaction_items(version, previous, previous_live, revision, current_revision, obj, sha)
            try:
                self._ddb(
                    "TransactWriteItems",
                    frozenset({"TransactionCanceledException", "TransactionConflictException",
                               "IdempotentParameterMismatchException"}),
                    TransactItems=items,
                    # Same token across botocore's retries: a retry of a commit that did land is a no-op success.
                    ClientRequestToken=uuid.uuid4().hex,
                )
                return revision
            except _ClientFailure as failure:
                reasons = failure.response.get("CancellationReasons") or []
                head_now = reasons[0].get("Item") if reasons and reasons[0].get("Code") == "ConditionalCheckFailed" else None
                if head_now is not None and _is_this_commit(head_now, version, obj):
                    # A botocore retry of an attempt that had landed (its answer lost) met its own head.
                    return int(head_now["rev"]["N"])
                self._raise_for_conflict(reasons, scope, key, previous, ancestor_keys, live and not previous_live)
            except Unavailable:
                landed = self._landed(version, obj)
                if landed is not None:
                    return landed
                raise
            # Lost the revision counter (another key committed) or a transient conflict: go again.
            self._sleep(random.uniform(0, min(0.25, 0.004 * 2**attempt)))
        raise Unavailable("too much write contention; nothing was changed")

    def _transaction_items(
        self,
        version: Version,
        previous: int,
        previous_live: bool,
        revision: int,
        current_revision: int,
        obj: str | None,
        sha: str | None,
    ) -> list[dict[str, Any]]:
        scope, key = version.scope, version.key
        live = not version.deleted
        becomes_live = live and not previous_live
        attributes = _version_attributes(version, revision, obj, sha)

        # 1. head: compare-and-set on its version; a key turning live must have no live key below it.
        names: dict[str, str] = {}
        values: dict[str, Any] = {":live": _b(live)}
        sets = ["live = :live"]
        for name, value in attributes.items():
            names[f"#{name}"] = name
            values[f":{name}"] = value
            sets.append(f"#{name} = :{name}")
        removes = [f"#{name}" for name in ("rb", "kid", "obj", "sha") if name not in attributes]
        names.update({f"#{name}": name for name in ("rb", "kid", "obj", "sha") if name not in attributes})
        if previous == 0:
            condition = "attribute_not_exists(#ver)"
        else:
            condition = "#ver = :previous"
            values[":previous"] = _n(previous)
        if becomes_live:
            condition += " AND (attribute_not_exists(below) OR below = :zero)"
            values[":zero"] = _n(0)
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        head = {
            "Update": {
                "TableName": self.table,
                "Key": {"PK": _s(head_pk(scope)), "SK": _s(key)},
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

        # 2. the revision counter: exactly one commit can move it from ``current_revision``.
        counter_condition = "attribute_not_exists(#v)" if current_revision == 0 else "#v = :current"
        counter_values: dict[str, Any] = {":next": _n(revision)}
        if current_revision:
            counter_values[":current"] = _n(current_revision)
        counter = {
            "Update": {
                "TableName": self.table,
                "Key": {"PK": _s(COUNTER_PK), "SK": _s(COUNTER_SK)},
                "UpdateExpression": "SET #v = :next",
                "ConditionExpression": counter_condition,
                "ExpressionAttributeNames": {"#v": "v"},
                "ExpressionAttributeValues": counter_values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

        # 3. the immutable version item, and 4. the change-log entry (which expires by TTL).
        version_item = {
            "Put": {
                "TableName": self.table,
                "Item": {"PK": _s(version_pk(scope, key)), "SK": _s(pad(version.version)), **attributes},
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }
        expires = int((datetime.now(UTC) + self.change_log_ttl).timestamp())
        change_item = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    "PK": _s(CHANGES_PK),
                    "SK": _s(pad(revision)),
                    "rev": _n(revision),
                    "ns": _s(scope.namespace),
                    "env": _s(scope.env),
                    "key": _s(key),
                    "ver": _n(version.version),
                    "act": _s(version.action.value),
                    "sec": _b(version.secret),
                    "expires_at": _n(expires),
                },
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }
        items = [head, counter, version_item, change_item]

        # 5. ancestors: a key turning live needs every ancestor not live, and counts itself below each;
        #    a live key going away uncounts itself. (Updates of a live key change neither.)
        if becomes_live or (previous_live and not live):
            delta = 1 if becomes_live else -1
            for ancestor in ancestors(key):
                update: dict[str, Any] = {
                    "TableName": self.table,
                    "Key": {"PK": _s(head_pk(scope)), "SK": _s(ancestor)},
                    "UpdateExpression": "ADD below :delta",
                    "ExpressionAttributeValues": {":delta": _n(delta)},
                }
                if becomes_live:
                    update["ConditionExpression"] = "attribute_not_exists(live) OR live = :false"
                    update["ExpressionAttributeValues"][":false"] = _b(False)
                    update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
                items.append({"Update": update})
        return items

    def _raise_for_conflict(
        self,
        reasons: list[dict[str, Any]],
        scope: Scope,
        key: str,
        previous: int,
        ancestor_keys: list[str],
        checked_ancestors: bool,
    ) -> None:
        """Turn a cancelled transaction into the domain error, or return when it is worth retrying."""
        codes = [reason.get("Code", "None") for reason in reasons]
        if codes and codes[0] == "ConditionalCheckFailed":
            old = reasons[0].get("Item")
            if old is None:
                old = self._get_item(head_pk(scope), key) or {}
            current = _get_n(old, "ver") or 0
            if current != previous:
                raise VersionConflict("the key changed since it was read", current)
            raise KeyConflict("keys exist below this key, so it cannot hold a value")
        if checked_ancestors:
            for index, ancestor in enumerate(ancestor_keys, start=4):
                if index < len(codes) and codes[index] == "ConditionalCheckFailed":
                    raise KeyConflict(f"'{ancestor}' holds a value, so no key can be below it")
        retryable = {"ConditionalCheckFailed", "None", *RETRYABLE_ITEM_CODES}
        unexpected = [code for code in codes if code not in retryable]
        if unexpected:
            raise Unavailable(f"dynamodb refused the commit ({unexpected[0]}); nothing was changed")

    def _landed(self, version: Version, obj: str | None) -> int | None:
        """After an ambiguous failure (the transaction may have landed, its answer lost): did it?"""
        try:
            item = self._get_item(version_pk(version.scope, version.key), pad(version.version))
        except Unavailable:
            return None
        if item is not None and _is_this_commit(item, version, obj):
            return int(item["rev"]["N"])
        return None

    def _discard_object(self, obj: str | None) -> None:
        if obj is None:
            return
        try:
            self._s3("DeleteObject", Bucket=self.bucket, Key=obj)
        except Unavailable:
            pass  # best effort: `tessera aws gc` removes it later

    # ------------------------------------------------------------------ environments and meta
    def list_envs(self) -> list[Environment]:
        items = self._query(KeyConditionExpression="PK = :pk", ExpressionAttributeValues={":pk": _s(ENVS_PK)})
        return [Environment(item["SK"]["S"], _get_s(item, "parent")) for item in items]

    def put_env(self, env: Environment) -> bool:
        item: dict[str, Any] = {"PK": _s(ENVS_PK), "SK": _s(env.name)}
        if env.parent is not None:
            item["parent"] = _s(env.parent)
        response = self._ddb("PutItem", TableName=self.table, Item=item, ReturnValues="ALL_OLD")
        return "Attributes" not in response

    def get_meta(self, name: str) -> str | None:
        item = self._get_item(META_PK, name)
        return _get_s(item, "value") if item else None

    def put_meta(self, name: str, value: str) -> None:
        self._ddb("PutItem", TableName=self.table, Item={"PK": _s(META_PK), "SK": _s(name), "value": _s(value)})

    # ------------------------------------------------------------------ key rotation support
    def iter_sealed_versions(self, after: tuple[str, str, str, int] | None, limit: int) -> list[Version]:
        """Sealed versions in (namespace, env, key, version) order, strictly after ``after``.

        A rewrap run starts with ``after=None``: that call scans the table once (consistently) and keeps the
        sorted list of version ids; the run's later pages bisect into it, so a run costs one scan, not one per
        page (no global index, which every commit would have to write). Each returned version is read fresh,
        so a page never carries an envelope that an earlier page already replaced. Versions written after the
        scan are sealed under the then-active key and need no rewrap; ``keys status`` shows any that do.
        """
        now = time.monotonic()
        snapshot = self._sealed_snapshot
        if after is None or snapshot is None or now - snapshot[0] > SEALED_SNAPSHOT_SECONDS:
            ids = sorted(
                (record.scope.namespace, record.scope.env, record.key, record.version)
                for record in map(_item_to_version, self._scan_versions())
            )
            snapshot = self._sealed_snapshot = (now, ids)
        ids = snapshot[1]
        start = bisect.bisect_right(ids, after) if after is not None else 0
        page: list[Version] = []
        for namespace, env, key, number in ids[start:]:
            item = self._get_item(version_pk(Scope(namespace, env), key), pad(number))
            if item is None or "obj" not in item:
                continue
            record = _item_to_version(item)
            page.append(replace(record, envelope=self.load_envelope(record)))
            if len(page) == limit:
                break
        return page

    def replace_envelope(self, version: Version, old: bytes, new: bytes, new_key_id: str) -> bool:
        """New object, then the version item (and the head, if it still points at this version) switch to it
        only if the stored envelope is still ``old``. The old object is left for gc (readers may hold it)."""
        scope, key = version.scope, version.key
        obj, old_sha, new_sha = object_key(scope, key, version.version), _sha256(old), _sha256(new)
        self._s3("PutObject", Bucket=self.bucket, Key=obj, Body=new, IfNoneMatch="*",
                 ContentType="application/octet-stream")
        swap: dict[str, Any] = {
            "UpdateExpression": "SET obj = :obj, sha = :new, kid = :kid",
            "ConditionExpression": "sha = :old",
            "ExpressionAttributeValues": {":obj": _s(obj), ":new": _s(new_sha), ":kid": _s(new_key_id), ":old": _s(old_sha)},
        }
        for _ in range(5):
            head = self._get_item(head_pk(scope), key, projection="ver")
            items = [{"Update": {"TableName": self.table, "Key": {"PK": _s(version_pk(scope, key)), "SK": _s(pad(version.version))}, **swap}}]
            if head is not None and _get_n(head, "ver") == version.version:
                head_swap = dict(swap, ConditionExpression="sha = :old AND ver = :ver")
                head_swap["ExpressionAttributeValues"] = {**swap["ExpressionAttributeValues"], ":ver": _n(version.version)}
                items.append({"Update": {"TableName": self.table, "Key": {"PK": _s(head_pk(scope)), "SK": _s(key)}, **head_swap}})
            try:
                self._ddb("TransactWriteItems", frozenset({"TransactionCanceledException"}), TransactItems=items)
            except _ClientFailure as failure:
                codes = [r.get("Code") for r in failure.response.get("CancellationReasons") or []]
                if codes and codes[0] == "ConditionalCheckFailed":
                    self._discard_object(obj)
                    return False  # the stored envelope is no longer ``old``
                continue  # the head moved on meanwhile: look again
            self.records.drop(scope, key, version.version)
            return True
        self._discard_object(obj)
        return False

    def versions_by_key_id(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for item in self._scan_versions(projection="kid"):
            counts[_get_s(item, "kid") or ""] += 1
        return dict(counts)

    # ------------------------------------------------------------------ garbage collection
    def collect_orphans(self, grace_seconds: float = 3600.0, dry_run: bool = False, now: datetime | None = None) -> OrphanReport:
        """Delete value objects no version item points at and older than ``grace_seconds``.

        Orphans come from a crash (or an ambiguous failure) between the S3 put and the transaction, and
        from rewraps. The grace period covers commits in flight, whose object exists before their item.
        """
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=grace_seconds)
        scanned, orphans, deleted = 0, [], 0
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": OBJECT_PREFIX}
        while True:
            page = self._s3("ListObjectsV2", **params)
            for entry in page.get("Contents", []):
                scanned += 1
                if entry["LastModified"] > cutoff:
                    continue
                if self._is_referenced(entry["Key"]):
                    continue
                orphans.append(entry["Key"])
                if not dry_run:
                    self._s3("DeleteObject", Bucket=self.bucket, Key=entry["Key"])
                    deleted += 1
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        return OrphanReport(scanned, orphans, deleted, dry_run, grace_seconds)

    def _is_referenced(self, name: str) -> bool:
        parsed = parse_object_key(name)
        if parsed is None:
            return True  # not ours to judge: leave anything that does not look like a value object
        scope, key, version = parsed
        item = self._get_item(version_pk(scope, key), pad(version), projection="obj")
        if item is not None and _get_s(item, "obj") == name:
            return True
        head = self._get_item(head_pk(scope), key, projection="obj")
        return head is not None and _get_s(head, "obj") == name


# ---------------------------------------------------------------------- KMS
class KmsKeyService:
    """``KeyService`` on AWS KMS: a fresh data key per write (``GenerateDataKey``), bound to the value's
    (namespace, env, key, version) by the encryption context; ``wrap_data_key`` re-wraps for key rotation.

    Which KMS key new writes use: ``active_key_source()`` when given (the composition root passes one that
    reads the store's meta ``active_kms_key_id``, set by ``tessera keys rotate --kms-key-id``), re-read every
    ``refresh_seconds`` so every node and Lambda follows a rotation; otherwise the configured ``key_id``.
    Decrypt always names the key recorded in the envelope, so older keys keep working until retired.
    """

    def __init__(
        self,
        kms: Any,
        key_id: str = "alias/tessera",
        calls: CallCounter | None = None,
        active_key_source: Callable[[], str | None] | None = None,
        refresh_seconds: float = 10.0,
    ) -> None:
        self.kms = kms
        self.key_id = key_id
        self.calls = calls if calls is not None else CallCounter()
        self.active_key_source = active_key_source
        self.refresh_seconds = refresh_seconds
        self._active: tuple[float, str] | None = None  # (re-read after, key id) from active_key_source
        self._arns: dict[str, str] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, clients: AwsClients | None = None, active_key_source: Callable[[], str | None] | None = None
    ) -> KmsKeyService:
        clients = clients or shared_clients(settings.region, settings.endpoint_url)
        return cls(clients.kms, settings.kms_key_id, clients.calls, active_key_source)

    def current_key_id(self) -> str:
        """The key (as configured or named by ``tessera keys rotate``: ARN, id or alias) new writes use."""
        if self.active_key_source is None:
            return self.key_id
        now = time.monotonic()
        cached = self._active
        if cached is None or cached[0] <= now:
            cached = (now + self.refresh_seconds, self.active_key_source() or self.key_id)
            self._active = cached
        return cached[1]

    @property
    def active_key_id(self) -> str:
        """The active key's ARN, as KMS reports it on every data key (and so as envelopes and status name it)."""
        return self.resolve_key_arn(self.current_key_id())

    def resolve_key_arn(self, key_id: str) -> str:
        if key_id not in self._arns:
            self._arns[key_id] = self._kms("DescribeKey", KeyId=key_id)["KeyMetadata"]["Arn"]
        return self._arns[key_id]

    def _kms(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return call_aws(self.calls, "kms", self.kms, operation, handled, **params)

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        response = self._kms("GenerateDataKey", KeyId=self.current_key_id(), KeySpec="AES_256", EncryptionContext=dict(context))
        return DataKey(response["KeyId"], response["Plaintext"], response["CiphertextBlob"])

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        try:
            response = self._kms(
                "Decrypt",
                # NotFoundException: the envelope names a KMS key that does not exist — a damaged or forged key id.
                frozenset({"InvalidCiphertextException", "IncorrectKeyException", "NotFoundException"}),
                KeyId=key_id,
                CiphertextBlob=wrapped,
                EncryptionContext=dict(context),
            )
        except _ClientFailure as failure:
            raise IntegrityError("stored data key failed its integrity check") from failure
        return response["Plaintext"]

    def wrap_data_key(self, plaintext_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        response = self._kms("Encrypt", KeyId=self.current_key_id(), Plaintext=plaintext_key, EncryptionContext=dict(context))
        return response["KeyId"], response["CiphertextBlob"]

    def rewrap_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        """Re-wrap under the active key inside KMS (``ReEncrypt``): the plaintext data key is never sent back
        to KMS, and KMS checks the source encryption context on the way. Used by ``tessera keys rewrap``."""
        try:
            response = self._kms(
                "ReEncrypt",
                frozenset({"InvalidCiphertextException", "IncorrectKeyException"}),
                CiphertextBlob=wrapped,
                SourceKeyId=key_id,
                SourceEncryptionContext=dict(context),
                DestinationKeyId=self.current_key_id(),
                DestinationEncryptionContext=dict(context),
            )
        except _ClientFailure as failure:
            raise IntegrityError("stored data key failed its integrity check") from failure
        return response["KeyId"], response["CiphertextBlob"]


__all__ = [
    "AwsClients",
    "AwsStore",
    "CallCounter",
    "KmsKeyService",
    "OrphanReport",
    "parse_object_key",
    "shared_clients",
]
