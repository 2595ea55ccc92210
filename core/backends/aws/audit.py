"""The audit log in DynamoDB: one plain item per record (or per group-committed batch), on a few sharded
partitions, hash-chained per stable shard, expired by TTL, verifiable from retention checkpoints.

Items::

    AUDITLOG#<lane>   <t>#<chain>#<seq>   a block: 1..n consecutive records of ``chain`` (``recs``), ``expires_at``
    AUDITSHARD        <chain>             the shard's lease: holder, until, and its tail (seq, hash, sk) as of
                                          the last renewal; never written per request
    AUDITCKPT         <chain>#<seq>       a retention checkpoint: where a segment of the chain starts (its first
                                          seq and the hash before it) and when its records and the previous
                                          segment's records expire
    AUDIT#<node-…>    <seq>               records of the previous release (one chain per process), read as is
    AUDITHEAD         <node-…>            …and their chain heads

**Why this shape.** On Lambda a container serves one request at a time and freezes after it, so a read's record
is written synchronously, before the response: one ``PutItem`` (1 write unit for a record under 1 KB) on one of
``LANES`` partitions, with no transaction and no item that every request updates. ``<t>`` is the write time in
microseconds (monotonic per writer), so each lane is in time order and ``GET /audit`` reads the newest 100 records
with one ``Query`` per lane (3), whatever the number of containers that ever wrote.

**Chains.** A hash chain needs one writer at a time, so chains are ``SHARDS`` stable shards (``shard-0000`` …),
each living in lane ``number % LANES``. A writer (a Lambda container, a ``tessera serve`` process) leases a
shard for ``LEASE_SECONDS`` with a conditional ``UpdateItem`` of its ``AUDITSHARD`` item, renews the lease while it
writes (at most once a minute), and stops writing ``SAFETY_SECONDS`` before the lease ends. A writer that takes
over a shard finds the chain's tail from the lease item's tail pointer plus one bounded ``Query``: records of
that chain written after the pointer and before the previous lease ended. Two writers never extend one chain at
once; if clocks were off by more than the safety margin and they did, ``verify`` would report the fork.

**Retention.** Every record carries ``expires_at`` and the table's TTL deletes it. A chain is cut into segments
(a new one at each lease and at least every ``SEGMENT_SECONDS``); all records of a segment share one expiry, and
the segment starts with a checkpoint item. ``verify`` starts each chain at its newest checkpoint whose previous
segment has expired, so records deleted by TTL are never read as deletions, while a record deleted before its
time still is.

>>> shard_name(42), lane_of("shard-0042"), block_sk(1_700_000_000_000_000, "shard-0042", 7)
('shard-0042', 0, '1700000000000000#shard-0042#00000000000000000007')
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera.core.access_model import AuditEntry
from tessera.core.audit import GENESIS, RESPONSE, link
from tessera.core.backends.aws.calls import ClientFailure, Table
from tessera.core.backends.aws.items import TTL_ATTRIBUTE, get_n, get_s, n, pad, s
from tessera.core.errors import Unavailable

LANES = 3
SHARDS = 4096
LOG_PREFIX = "AUDITLOG#"
SHARD_PK = "AUDITSHARD"
CHECKPOINT_PK = "AUDITCKPT"
LEGACY_PREFIX, LEGACY_HEAD_PK = "AUDIT#", "AUDITHEAD"
LEASE_SECONDS = 120.0
RENEW_BEFORE_SECONDS = 60.0  # renew when less than this is left: an active writer renews about once a minute
SAFETY_SECONDS = 10.0  # stop writing this long before the lease ends (clock skew between writers)
SEGMENT_SECONDS = 3600.0  # a chain starts a new segment (and checkpoint) at least this often
CHECKPOINT_GRACE_SECONDS = 7 * 86400.0  # a checkpoint outlives its segment's records by this (TTL deletes late)
DEFAULT_RETENTION = timedelta(days=90)
ACQUIRE_ATTEMPTS = 16
MAX_BLOCK_RECORDS = 100
MAX_BLOCK_BYTES = 350_000  # DynamoDB's item limit is 400 KB
QUERY_PAGE_LIMIT = 10  # pages per lane a filtered GET /audit reads at most (bounded, whatever the filter)
SINCE_SLACK_SECONDS = 60  # a record's ts precedes its write time; keep reading a little past ``since``
LEGACY_HEADS_SECONDS = 60.0

# Record attribute names inside a block (short: the item's size is what a write costs).
FIELDS = {
    "request_id": "rid", "service": "svc", "token_id": "tok", "action": "act", "namespace": "ns", "env": "env",
    "key": "key", "outcome": "out", "target": "tgt", "client": "cli", "method": "m", "path": "p",
}  # fmt: skip
LEGACY_FIELDS = ("request_id", "service", "token_id", "action", "namespace", "env", "key", "outcome", "target", "client", "method", "path")


def shard_name(number: int) -> str:
    return f"shard-{number:04d}"


def lane_of(chain: str) -> int:
    """The lane a chain's records live in (shards by number; anything else by a stable digest)."""
    number = chain.rsplit("-", 1)[-1]
    if chain.startswith("shard-") and number.isdigit():
        return int(number) % LANES
    return sum(chain.encode()) % LANES


def lane_pk(lane: int) -> str:
    return f"{LOG_PREFIX}{lane}"


def block_sk(t_us: int, chain: str, first_seq: int) -> str:
    return f"{t_us:016d}#{chain}#{pad(first_seq)}"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------- encoding
def record_value(entry: AuditEntry) -> dict[str, Any]:
    fields: dict[str, Any] = {"ts": s(stamp(entry.ts)), "st": n(entry.status), "seq": n(entry.seq),
                              "prev": s(entry.prev_hash), "h": s(entry.hash)}  # fmt: skip
    for name, short in FIELDS.items():
        value = getattr(entry, name)
        if value is not None:
            fields[short] = s(value)
    if entry.version is not None:
        fields["ver"] = n(entry.version)
    if entry.phase != RESPONSE:
        fields["ph"] = s(entry.phase)
    return {"M": fields}


def record_entry(chain: str, value: Mapping[str, Any]) -> AuditEntry:
    fields = value["M"]
    return AuditEntry(
        ts=datetime.fromisoformat(fields["ts"]["S"]),
        status=int(fields["st"]["N"]),
        version=get_n(fields, "ver"),
        chain=chain,
        seq=int(fields["seq"]["N"]),
        prev_hash=fields["prev"]["S"],
        hash=fields["h"]["S"],
        phase=get_s(fields, "ph") or RESPONSE,
        **{name: get_s(fields, short) for name, short in FIELDS.items()},  # type: ignore[arg-type]
    )


def block_item(lane: int, t_us: int, chain: str, linked: list[AuditEntry], expires_at: int) -> dict[str, Any]:
    return {
        "PK": s(lane_pk(lane)),
        "SK": s(block_sk(t_us, chain, linked[0].seq)),
        "chain": s(chain),
        "recs": {"L": [record_value(entry) for entry in linked]},
        TTL_ATTRIBUTE: n(expires_at),
    }


def block_entries(item: Mapping[str, Any]) -> list[AuditEntry]:
    chain = item["chain"]["S"]
    return [record_entry(chain, value) for value in item["recs"]["L"]]


def legacy_entry(item: Mapping[str, Any]) -> AuditEntry:
    """A record of the previous release (``AUDIT#<chain>`` / ``<seq>``, fields at the top level)."""
    fields: dict[str, Any] = {name: item[name]["S"] if name in item else None for name in LEGACY_FIELDS}
    return AuditEntry(
        ts=datetime.fromisoformat(item["ts"]["S"]),
        status=int(item["status"]["N"]),
        version=int(item["version"]["N"]) if "version" in item else None,
        chain=item["PK"]["S"][len(LEGACY_PREFIX) :],
        seq=int(item["SK"]["S"]),
        prev_hash=item["prev_hash"]["S"],
        hash=item["hash"]["S"],
        phase=item["phase"]["S"] if "phase" in item else RESPONSE,
        **fields,
    )


def approximate_size(item: Mapping[str, Any]) -> int:
    """DynamoDB's item size, near enough: attribute names plus values (what a write is billed on)."""

    def size(value: Any) -> int:
        (kind, inner), = value.items()
        if kind in ("S", "N"):
            return len(str(inner).encode())
        if kind == "BOOL":
            return 1
        if kind == "L":
            return 3 + sum(1 + size(element) for element in inner)
        if kind == "M":
            return 3 + sum(len(name.encode()) + 1 + size(element) for name, element in inner.items())
        return len(inner)

    return sum(len(name.encode()) + size(value) for name, value in item.items())


# ---------------------------------------------------------------------- the writer
@dataclass
class Lease:
    """What a writer knows about the shard it holds: the lease's end, the chain's tail, the current segment."""

    chain: str
    until: float
    seq: int = 0
    hash: str = GENESIS
    sk: str = ""  # sort key of the tail's block (or a floor below every block of this lease)
    last_t_us: int = 0
    segment_start: float | None = None  # None: the next write starts a segment (and writes its checkpoint)
    segment_expires: int = 0  # when the current segment's records expire
    previous_segment_expires: int = 0
    dirty: bool = False  # a write's outcome is unknown: find the real tail before the next one

    @property
    def lane(self) -> int:
        return lane_of(self.chain)


@dataclass
class Block:
    item: dict[str, Any]
    linked: list[AuditEntry]
    t_us: int


class ShardWriter:
    """Appends records to the chain of the shard this process holds (one writer per shard at a time).

    ``append`` writes a block with one ``PutItem``; ``reserve``/``settle`` let the commit put the block in its own
    transaction (a change and its record, durable together). One lock serializes every write of this process.
    """

    def __init__(
        self,
        db: Table,
        retention: timedelta = DEFAULT_RETENTION,
        *,
        clock: Callable[[], float] = time.time,
        shards: int = SHARDS,
    ) -> None:
        self.db = db
        self.retention = retention
        self.clock = clock
        self.shards = shards
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget the lease and make a new holder id: after a SnapStart restore every copy must be a new writer."""
        self.holder = secrets.token_hex(8)
        self._lease: Lease | None = None
        self._random = random.Random(secrets.randbits(64))

    @property
    def chain(self) -> str | None:
        return self._lease.chain if self._lease is not None else None

    # ------------------------------------------------------------------ writing
    def append(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        if not entries:
            return []
        linked: list[AuditEntry] = []
        for start in range(0, len(entries), MAX_BLOCK_RECORDS):
            with self._lock:
                block = self.reserve(entries[start : start + MAX_BLOCK_RECORDS])
                try:
                    self.db.call("PutItem", frozenset({"ConditionalCheckFailedException"}), TableName=self.db.name,
                                 Item=block.item, ConditionExpression="attribute_not_exists(PK)")  # fmt: skip
                except ClientFailure as failure:
                    self.settle(block, False)
                    raise Unavailable("the audit log refused a record; nothing was written") from failure
                except BaseException:
                    self.settle(block, None)
                    raise
                self.settle(block, True)
            linked.extend(block.linked)
        return linked

    def reserve(self, entries: list[AuditEntry]) -> Block:
        """Link ``entries`` to this writer's tail and build their block (the caller holds ``lock``)."""
        lease = self._lease_for_write()
        linked = link(lease.chain, entries, lease.seq, lease.hash)
        t_us = max(int(self.clock() * 1_000_000), lease.last_t_us + 1)
        item = block_item(lease.lane, t_us, lease.chain, linked, lease.segment_expires)
        if approximate_size(item) > MAX_BLOCK_BYTES and len(entries) > 1:
            raise Unavailable("an audit batch is too large for one item")
        return Block(item, linked, t_us)

    def settle(self, block: Block, written: bool | None) -> None:
        """After the block's write: True (it is in the table), False (certainly not), None (unknown)."""
        lease = self._lease
        if lease is None or lease.chain != block.linked[0].chain:
            return
        if written:
            lease.seq, lease.hash = block.linked[-1].seq, block.linked[-1].hash
            lease.last_t_us, lease.sk = block.t_us, block.item["SK"]["S"]
        elif written is None:
            lease.dirty = True

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    # ------------------------------------------------------------------ the lease
    def _lease_for_write(self) -> Lease:
        now = self.clock()
        lease = self._lease
        if lease is None or now >= lease.until - SAFETY_SECONDS:
            lease = self._acquire(lease)
        elif lease.until - now < RENEW_BEFORE_SECONDS and not self._renew(lease, now):
            lease = self._acquire(None)
        if lease.dirty:
            self._find_tail(lease, lease.sk, lease.until)
            lease.dirty = False
        if lease.segment_start is None or now - lease.segment_start >= SEGMENT_SECONDS:
            self._start_segment(lease, now)
        return lease

    def _acquire(self, previous: Lease | None) -> Lease:
        """Take a shard: our previous one again if nobody took it meanwhile, else any free one."""
        candidates = [previous.chain] if previous is not None else []
        candidates += [shard_name(self._random.randrange(self.shards)) for _ in range(ACQUIRE_ATTEMPTS)]
        now = self.clock()
        for chain in candidates:
            until = now + LEASE_SECONDS
            try:
                response = self.db.call(
                    "UpdateItem",
                    frozenset({"ConditionalCheckFailedException"}),
                    TableName=self.db.name,
                    Key=self.db.key(SHARD_PK, chain),
                    UpdateExpression="SET holder = :me, #until = :until, sk = if_not_exists(sk, :floor), "
                    "seq = if_not_exists(seq, :zero), #h = if_not_exists(#h, :genesis)",
                    ConditionExpression="attribute_not_exists(holder) OR holder = :me OR #until < :now",
                    ExpressionAttributeNames={"#until": "until", "#h": "hash"},
                    ExpressionAttributeValues={
                        ":me": s(self.holder), ":until": n(int(until)), ":now": n(int(now)), ":zero": n(0),
                        ":genesis": s(GENESIS), ":floor": s(f"{int(now * 1_000_000):016d}"),
                    },
                    ReturnValues="ALL_OLD",
                )  # fmt: skip
            except ClientFailure:
                continue  # held by a live writer: try another shard
            old = response.get("Attributes")
            lease = Lease(chain, float(int(until)))
            if old is None:
                lease.sk = f"{int(now * 1_000_000):016d}"  # a new chain: nothing before this floor
            elif previous is not None and previous.chain == chain and get_s(old, "holder") == self.holder and not previous.dirty:
                # Nobody wrote to it since our lease ran out: what we know is the tail, and the segment goes on.
                lease.seq, lease.hash, lease.sk = previous.seq, previous.hash, previous.sk
                lease.last_t_us = previous.last_t_us
                lease.segment_start, lease.segment_expires = previous.segment_start, previous.segment_expires
                lease.previous_segment_expires = previous.previous_segment_expires
            else:
                lease.seq, lease.hash = get_n(old, "seq") or 0, get_s(old, "hash") or GENESIS
                lease.sk = get_s(old, "sk") or ""
                lease.previous_segment_expires = get_n(old, "seg_expires") or 0
                self._find_tail(lease, lease.sk, float(get_n(old, "until") or now))
            self._lease = lease
            return lease
        raise Unavailable("no audit shard is free; nothing was written")

    def _find_tail(self, lease: Lease, after_sk: str, until: float) -> None:
        """The chain's real tail: its last block written after ``after_sk`` and before ``until`` (the end of the
        lease that wrote it: no block of this chain is later). One bounded query of the lane."""
        high = f"{int((until + SAFETY_SECONDS) * 1_000_000):016d}~"
        params: dict[str, Any] = {
            "KeyConditionExpression": "PK = :pk AND SK BETWEEN :low AND :high",
            "FilterExpression": "chain = :chain",
            "ExpressionAttributeValues": {":pk": s(lane_pk(lease.lane)), ":low": s(after_sk or "0"), ":high": s(high),
                                          ":chain": s(lease.chain)},  # fmt: skip
        }
        for item in self.db.query(**params):
            if item["SK"]["S"] == after_sk:
                continue
            entries = block_entries(item)
            if entries[-1].seq > lease.seq:
                lease.seq, lease.hash, lease.sk = entries[-1].seq, entries[-1].hash, item["SK"]["S"]
                lease.last_t_us = int(item["SK"]["S"].split("#", 1)[0])
                lease.previous_segment_expires = max(lease.previous_segment_expires, get_n(item, TTL_ATTRIBUTE) or 0)

    def _renew(self, lease: Lease, now: float) -> bool:
        until = now + LEASE_SECONDS
        try:
            self.db.call(
                "UpdateItem",
                frozenset({"ConditionalCheckFailedException"}),
                TableName=self.db.name,
                Key=self.db.key(SHARD_PK, lease.chain),
                UpdateExpression="SET #until = :until, seq = :seq, #h = :hash, sk = :sk, seg_expires = :seg",
                ConditionExpression="holder = :me",
                ExpressionAttributeNames={"#until": "until", "#h": "hash"},
                ExpressionAttributeValues={
                    ":until": n(int(until)), ":seq": n(lease.seq), ":hash": s(lease.hash), ":sk": s(lease.sk or "0"),
                    ":seg": n(lease.segment_expires), ":me": s(self.holder),
                },
            )  # fmt: skip
        except ClientFailure:
            self._lease = None
            return False
        lease.until = float(int(until))
        return True

    def _start_segment(self, lease: Lease, now: float) -> None:
        """A new segment: every record in it expires at one time, and its checkpoint says where it starts."""
        expires = int(now + SEGMENT_SECONDS + self.retention.total_seconds())
        previous = lease.segment_expires or lease.previous_segment_expires
        self.db.call("PutItem", TableName=self.db.name, Item={
            "PK": s(CHECKPOINT_PK),
            "SK": s(f"{lease.chain}#{pad(lease.seq + 1)}"),
            "chain": s(lease.chain),
            "seq": n(lease.seq + 1),
            "prev": s(lease.hash),
            "prev_expires": n(previous),
            "records_expire": n(expires),
            TTL_ATTRIBUTE: n(int(expires + CHECKPOINT_GRACE_SECONDS)),
        })  # fmt: skip
        lease.segment_start, lease.segment_expires = now, expires


# ---------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Checkpoint:
    chain: str
    seq: int  # the segment's first seq
    prev: str  # the hash before it
    prev_expires: int
    records_expire: int


def checkpoint_of(item: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(item["chain"]["S"], int(item["seq"]["N"]), item["prev"]["S"],
                      int(item["prev_expires"]["N"]), int(item["records_expire"]["N"]))  # fmt: skip


class AuditReader:
    """``GET /audit`` and ``tessera audit verify`` over the lanes, the checkpoints and the previous release's chains."""

    def __init__(self, db: Table, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._legacy: tuple[float, list[str]] | None = None
        self._index: dict[str, list[AuditEntry]] | None = None

    # ------------------------------------------------------------------ GET /audit
    def query(self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None) -> list[AuditEntry]:
        """Newest first: one backwards ``Query`` per lane for the newest ``limit`` records (more pages only when
        filters leave too few, at most ``QUERY_PAGE_LIMIT`` per lane), then the previous release's chains
        only if the lanes hold fewer than ``limit`` matches."""

        def wanted(entry: AuditEntry) -> bool:
            return (
                (key is None or entry.key == key)
                and (service is None or entry.service == service)
                and (phase is None or entry.phase == phase)
                and (since is None or entry.ts >= since)
            )

        floor = f"{int((since.timestamp() - SINCE_SLACK_SECONDS) * 1_000_000):016d}" if since is not None else None
        found: list[AuditEntry] = []
        for lane in range(LANES):
            condition = "PK = :pk" + (" AND SK >= :floor" if floor else "")
            values: dict[str, Any] = {":pk": s(lane_pk(lane))}
            if floor:
                values[":floor"] = s(floor)
            params: dict[str, Any] = {"TableName": self.db.name, "ConsistentRead": True, "ScanIndexForward": False,
                      "KeyConditionExpression": condition, "ExpressionAttributeValues": values, "Limit": limit}  # fmt: skip
            kept = 0
            for _ in range(QUERY_PAGE_LIMIT):
                page = self.db.call("Query", **params)
                for item in page.get("Items", []):
                    for entry in reversed(block_entries(item)):
                        if wanted(entry):
                            found.append(entry)
                            kept += 1
                if kept >= limit or "LastEvaluatedKey" not in page:
                    break
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        if len(found) < limit:
            found.extend(self._legacy_query(wanted, limit - len(found), since))
        found.sort(key=lambda e: (e.ts, e.seq), reverse=True)
        return found[:limit]

    def legacy_chains(self) -> list[str]:
        now = time.monotonic()
        if self._legacy is None or now - self._legacy[0] > LEGACY_HEADS_SECONDS:
            self._legacy = (now, [item["SK"]["S"] for item in self.db.partition(LEGACY_HEAD_PK)])
        return self._legacy[1]

    def _legacy_query(self, wanted: Callable[[AuditEntry], bool], limit: int, since: datetime | None) -> Iterator[AuditEntry]:
        for chain in self.legacy_chains():
            kept = 0
            for item in self.db.partition(LEGACY_PREFIX + chain, forward=False):
                entry = legacy_entry(item)
                if since is not None and entry.ts.timestamp() < since.timestamp() - SINCE_SLACK_SECONDS:
                    break
                if wanted(entry):
                    yield entry
                    kept += 1
                    if kept >= limit:
                        break

    # ------------------------------------------------------------------ verify
    def chains(self) -> dict[str, tuple[int, str]]:
        """Each chain's head: the last record found, or the lease's tail pointer if the records end before it (a
        removed tail). Reads the whole retained log once (kept for ``chain_entries`` until the next call)."""
        index = self._build_index()
        heads: dict[str, tuple[int, str]] = {}
        for chain, entries in index.items():
            heads[chain] = (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS)
        for item in self.db.partition(SHARD_PK):
            pointer = (get_n(item, "seq") or 0, get_s(item, "hash") or GENESIS)
            found = heads.get(item["SK"]["S"])
            if pointer[0] > 0 and (found is None or found[0] < pointer[0]):
                heads[item["SK"]["S"]] = pointer
        for item in self.db.partition(LEGACY_HEAD_PK):
            heads[item["SK"]["S"]] = (int(item["seq"]["N"]), item["hash"]["S"])
        return heads

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        if chain.startswith("shard-"):
            index = self._index if self._index is not None else self._build_index()
            entries = index.get(chain, [])
            position = _first_after(entries, after_seq)
            return entries[position : position + limit]
        return [legacy_entry(item) for item in self.db.partition(LEGACY_PREFIX + chain, after=pad(after_seq), limit=limit)]

    def chain_starts(self) -> dict[str, tuple[int, str]]:
        """Where ``verify`` starts each chain: after the newest checkpoint whose previous segment has expired
        (records before it may be gone by TTL); chains without one start at the beginning."""
        now = self.clock()
        starts: dict[str, tuple[int, str]] = {}
        best: dict[str, Checkpoint] = {}
        for item in self.db.partition(CHECKPOINT_PK):
            checkpoint = checkpoint_of(item)
            if checkpoint.prev_expires <= now and (checkpoint.chain not in best or checkpoint.seq > best[checkpoint.chain].seq):
                best[checkpoint.chain] = checkpoint
        for chain, checkpoint in best.items():
            starts[chain] = (checkpoint.seq - 1, checkpoint.prev)
            if checkpoint.records_expire <= now:
                # Even this segment has expired: nothing before the recorded tail has to be there any more.
                tail = self.db.get(SHARD_PK, chain)
                if tail is not None and (get_n(tail, "seq") or 0) >= checkpoint.seq - 1:
                    starts[chain] = (get_n(tail, "seq") or 0, get_s(tail, "hash") or GENESIS)
        return starts

    def _build_index(self) -> dict[str, list[AuditEntry]]:
        index: dict[str, list[AuditEntry]] = {}
        for lane in range(LANES):
            for item in self.db.partition(lane_pk(lane)):
                index.setdefault(item["chain"]["S"], []).extend(block_entries(item))
        for entries in index.values():
            entries.sort(key=lambda entry: entry.seq)
        self._index = index
        return index


def _first_after(entries: list[AuditEntry], seq: int) -> int:
    low, high = 0, len(entries)
    while low < high:
        middle = (low + high) // 2
        if entries[middle].seq <= seq:
            low = middle + 1
        else:
            high = middle
    return low
