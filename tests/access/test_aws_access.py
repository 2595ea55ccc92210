"""Tokens, policies and the audit log on the aws backend (DynamoDB under in-process moto): the same tamper cases
as on SQLite, sharded chains under leases that never fork, one plain write per record, GET /audit in three
queries whatever the container churn, retention checkpoints, the previous release's chains, and the mission
scenario through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import GENESIS, entry_hash, link, verify
from tessera.core.backends.aws import CallCounter, pad
from tessera.core.backends.aws import audit as aws_audit
from tessera.core.backends.aws_access import DynamoAccessStore
from tessera.core.errors import Unavailable
from tessera.core.tokens import hash_token
from tests.access.test_audit_chain import entry

pytestmark = pytest.mark.aws


@pytest.fixture
def target():
    from tests.aws.support import moto_target

    with moto_target() as target:
        yield target


class Clock:
    """Wall-clock seconds a test moves by hand (leases, segments and retention all read it)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def node(target, calls: CallCounter | None = None, clock: Clock | None = None, **kwargs) -> DynamoAccessStore:
    """One writer (a Lambda container, a `tessera serve` process): its own lease on one shard."""
    extra = {"clock": clock} if clock is not None else {}
    return DynamoAccessStore(table=target.table, dynamodb=target.clients.dynamodb, calls=calls, **extra, **kwargs)


@pytest.fixture
def access(target):
    return node(target)


def raw(target):
    return target.clients.dynamodb


def blocks(target, chain: str | None = None) -> list[dict]:
    """Every audit block item, in lane order then time order."""
    items = []
    for lane in range(aws_audit.LANES):
        page = raw(target).query(TableName=target.table, KeyConditionExpression="PK = :pk",
                                 ExpressionAttributeValues={":pk": {"S": aws_audit.lane_pk(lane)}})  # fmt: skip
        items += [item for item in page["Items"] if chain is None or item["chain"]["S"] == chain]
    return items


def block_holding(target, chain: str, seq: int) -> dict:
    for item in blocks(target, chain):
        if any(int(record["M"]["seq"]["N"]) == seq for record in item["recs"]["L"]):
            return item
    raise AssertionError(f"no block holds {chain}:{seq}")


def item_key(item: dict) -> dict:
    return {"PK": item["PK"], "SK": item["SK"]}


def test_tokens_and_policies(access):
    now = datetime.now(UTC)
    record = TokenRecord("tok_1", "auth-svc", ("auth-read",), hash_token("tsr_x"), now, now + timedelta(hours=1))
    access.create_token(record)
    assert access.token_by_hash(hash_token("tsr_x")).id == "tok_1"
    assert access.get_token("tok_1").policies == ("auth-read",)
    assert [t.id for t in access.list_tokens()] == ["tok_1"]
    assert access.revoke_token("tok_1", now) is True
    assert access.token_by_hash(hash_token("tsr_x")).revoked_at is not None
    assert access.list_tokens() == [] and access.revoke_token("tok_1", now) is False
    first = access.put_policy("p", (Rule("auth.*", ("read",)),), now)
    second = access.put_policy("p", (Rule("*", ("list",)),), now)
    assert second.version > first.version
    assert [p.rules for p in access.list_policies()] == [(Rule("*", ("list",)),)]
    assert isinstance(access.get_policy("p"), PolicyDoc)
    assert access.delete_policy("p") and not access.delete_policy("p") and access.get_policy("p") is None


# ---------------------------------------------------------------------- the chain and its tamper cases
@pytest.fixture
def filled(access):
    for start in range(0, 30, 10):
        access.append(None, [entry(i) for i in range(start + 1, start + 11)])
    return access


def test_intact_and_one_block_per_batch(filled, target):
    report = verify(filled)
    (chain,) = report.chains
    assert report.ok and report.entries == 30 and report.chains[chain][0] == 30
    assert chain.startswith("shard-") and len(blocks(target)) == 3  # a group-committed batch is one item


def test_edited(filled, target):
    chain = filled.writer.chain
    item = block_holding(target, chain, 17)
    position = [int(r["M"]["seq"]["N"]) for r in item["recs"]["L"]].index(17)
    raw(target).update_item(TableName=target.table, Key=item_key(item), UpdateExpression=f"SET recs[{position}].#o = :o",
                            ExpressionAttributeNames={"#o": "out"}, ExpressionAttributeValues={":o": {"S": "denied"}})  # fmt: skip
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("edited", 17)


def test_removed_block(filled, target):
    raw(target).delete_item(TableName=target.table, Key=item_key(block_holding(target, filled.writer.chain, 12)))
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("removed", 11)


def test_removed_tail_is_caught_by_the_lease_pointer(target):
    clock = Clock()
    access = node(target, clock=clock)
    for i in range(1, 4):
        access.append(None, [entry(i)])
    clock.advance(aws_audit.LEASE_SECONDS - aws_audit.RENEW_BEFORE_SECONDS + 1)
    access.append(None, [entry(4)])  # renews the lease, recording the tail (seq 3) it had before this write
    raw(target).delete_item(TableName=target.table, Key=item_key(block_holding(target, access.writer.chain, 4)))
    raw(target).delete_item(TableName=target.table, Key=item_key(block_holding(target, access.writer.chain, 3)))
    problem = verify(access).problem
    assert (problem.kind, problem.seq) == ("removed", 3)


def test_inserted(filled, target):
    chain = filled.writer.chain
    last = filled.chain_entries(chain, 29, 1)[0]
    forged = link(chain, [entry(99, request_id="forged")], last.seq, last.hash)
    item = aws_audit.block_item(aws_audit.lane_of(chain), 9_999_999_999_999_999, chain, forged, 0)
    raw(target).put_item(TableName=target.table, Item=item)
    assert entry_hash(forged[0]) == forged[0].hash  # well formed: at the tail it looks like the next record...
    filled.append(None, [entry(31)])  # ...until the shard's writer appends its own 31st: a fork
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("inserted", 31)


# ---------------------------------------------------------------------- cost and shape of the read path
def test_a_read_record_is_one_plain_put_after_the_first(target):
    calls = CallCounter()
    access = node(target, calls)
    access.append(None, [entry(1)])
    assert calls == {"dynamodb:UpdateItem": 1, "dynamodb:PutItem": 2}  # lease, checkpoint, record
    calls.clear()
    for i in range(2, 6):
        access.append(None, [entry(i)])
    assert calls == {"dynamodb:PutItem": 4}  # no transaction, no head item: one write each
    record = blocks(target)[-1]
    assert aws_audit.approximate_size(record) < 1024  # one write unit (1 KB) for a typical read's record
    assert int(record["expires_at"]["N"]) > datetime.now(UTC).timestamp() + 89 * 86400  # TTL: retention


def test_get_audit_reads_three_lanes_whatever_the_container_churn(target):
    writers = [node(target) for _ in range(40)]  # 40 containers, each its own lease and chain
    for number, writer in enumerate(writers):
        for i in range(3):
            writer.append(None, [entry(number * 3 + i + 1)])
    assert len({writer.writer.chain for writer in writers}) == 40
    calls = CallCounter()
    reader = node(target, calls)
    newest = reader.query(key=None, service=None, since=None, limit=100)
    assert calls == {"dynamodb:Query": aws_audit.LANES} == {"dynamodb:Query": 3}
    assert len(newest) == 100 and [e.ts for e in newest] == sorted((e.ts for e in newest), reverse=True)
    reader.chains()  # reads the log once for the walks below
    everything = sorted((e for w in writers for e in reader.chain_entries(w.writer.chain, 0, 10)), key=lambda e: e.ts, reverse=True)
    assert [e.id for e in newest] == [e.id for e in everything[:100]]
    assert verify(reader).ok and len(verify(reader).chains) == 40


def test_filtered_queries_are_bounded(target):
    access = node(target)
    access.append(None, [entry(i, service="a" if i % 10 else "b") for i in range(1, 51)])
    assert {e.service for e in access.query(key=None, service="b", since=None, limit=10)} == {"b"}
    assert len(access.query(key=None, service="b", since=None, limit=10)) == 5
    assert access.query(key="auth.k7", service=None, since=None, limit=10)[0].key == "auth.k7"
    now = datetime.now(UTC)
    access.append(None, [entry(i, ts=now + timedelta(milliseconds=i)) for i in range(1, 51)])
    since = now + timedelta(milliseconds=40)
    assert [e.request_id for e in access.query(key=None, service=None, since=since, limit=100)] == [f"r{i}" for i in range(50, 39, -1)]


# ---------------------------------------------------------------------- leases: stable shards, never forked
def test_a_held_shard_is_not_taken_and_an_expired_one_continues_its_chain(target):
    clock = Clock()
    first = node(target, clock=clock, shards=1)  # one shard: every writer wants the same one
    first.append(None, [entry(1)])
    second = node(target, clock=clock, shards=1)
    with pytest.raises(Unavailable):
        second.append(None, [entry(2)])  # held by a live writer
    first.append(None, [entry(3)])
    clock.advance(aws_audit.LEASE_SECONDS + 1)  # the first writer froze (a Lambda container) or died
    taken = second.append(None, [entry(4)])
    assert taken[0].chain == first.writer.chain and taken[0].seq == 3  # found the tail the pointer did not know
    with pytest.raises(Unavailable):
        first.append(None, [entry(5)])  # its lease is gone and the shard is held again
    report = verify(first)
    assert report.ok and report.entries == 3


def test_a_write_with_an_unknown_outcome_is_never_forked(target):
    access = node(target)
    access.append(None, [entry(1)])
    original = access.db.call

    def lost_answer(operation, *args, **params):  # the put lands, its answer is lost
        result = original(operation, *args, **params)
        if operation == "PutItem" and params["Item"]["PK"]["S"].startswith(aws_audit.LOG_PREFIX):
            raise Unavailable("dynamodb cannot be reached")
        return result

    access.db.call = lost_answer
    with pytest.raises(Unavailable):
        access.append(None, [entry(2)])
    access.db.call = original
    assert access.append(None, [entry(3)])[0].seq == 3  # the writer found seq 2 before linking
    assert verify(access).ok


def test_snapstart_restore_makes_a_new_writer(target):
    access = node(target)
    access.append(None, [entry(1)])
    holder, chain = access.writer.holder, access.writer.chain
    access.writer.reset()  # what the SnapStart after-restore hook does
    assert access.writer.holder != holder and access.writer.chain is None
    assert access.append(None, [entry(2)])[0].chain != chain  # the old lease is still live: another shard
    assert verify(access).ok


# ---------------------------------------------------------------------- retention
def test_records_gone_by_ttl_are_not_deletions_but_early_deletions_are(target):
    clock = Clock()
    access = node(target, clock=clock, retention=timedelta(days=1))
    for hour in range(30):  # a segment (and a checkpoint) an hour: the first segments pass the retention
        access.append(None, [entry(hour * 2 + 1)])
        access.append(None, [entry(hour * 2 + 2)])
        clock.advance(aws_audit.SEGMENT_SECONDS + 1)
    now = clock.now
    expired = [item for item in blocks(target) if int(item["expires_at"]["N"]) <= now]
    assert expired and len(expired) < len(blocks(target))
    for item in expired:  # what the table's TTL does, in no particular order
        raw(target).delete_item(TableName=target.table, Key=item_key(item))
    report = verify(access)
    assert report.ok, report.problem
    starts = access.chain_starts()
    assert starts[access.writer.chain][0] > 0  # verify started at a checkpoint, not at the genesis
    keep = [item for item in blocks(target) if int(item["expires_at"]["N"]) > now]
    raw(target).delete_item(TableName=target.table, Key=item_key(keep[len(keep) // 2]))  # not expired: tampering
    assert verify(access).problem.kind == "removed"


# ---------------------------------------------------------------------- the previous release's chains
def legacy_item(chain: str, linked: AuditEntry) -> dict:
    item = {"PK": {"S": f"AUDIT#{chain}"}, "SK": {"S": pad(linked.seq)}, "ts": {"S": aws_audit.stamp(linked.ts)},
            "status": {"N": str(linked.status)}, "prev_hash": {"S": linked.prev_hash}, "hash": {"S": linked.hash}}  # fmt: skip
    for name in aws_audit.LEGACY_FIELDS:
        if getattr(linked, name) is not None:
            item[name] = {"S": getattr(linked, name)}
    if linked.version is not None:
        item["version"] = {"N": str(linked.version)}
    return item


def test_chains_of_the_previous_release_keep_working(target):
    """A table written by the previous release (one chain per process, AUDIT#node-… and AUDITHEAD): verify
    walks those chains beside the new ones, and GET /audit still finds their records."""
    old = link("node-0a1b2c", [entry(i, key="old.key") for i in range(1, 6)], 0, GENESIS)
    for linked in old:
        raw(target).put_item(TableName=target.table, Item=legacy_item("node-0a1b2c", linked))
    raw(target).put_item(TableName=target.table, Item={"PK": {"S": "AUDITHEAD"}, "SK": {"S": "node-0a1b2c"},
                                                         "seq": {"N": "5"}, "hash": {"S": old[-1].hash}})  # fmt: skip
    access = node(target)
    access.append(None, [entry(10, key="new.key")])
    report = verify(access)
    assert report.ok and report.entries == 6 and set(report.chains) == {"node-0a1b2c", access.writer.chain}
    assert [e.key for e in access.query(key=None, service=None, since=None, limit=3)] == ["new.key", "old.key", "old.key"]
    assert [e.id for e in access.query(key="old.key", service=None, since=None, limit=2)] == ["node-0a1b2c:5", "node-0a1b2c:4"]
    raw(target).delete_item(TableName=target.table, Key={"PK": {"S": "AUDIT#node-0a1b2c"}, "SK": {"S": pad(3)}})
    problem = verify(access).problem
    assert (problem.chain, problem.kind, problem.seq) == ("node-0a1b2c", "removed", 3)


# ---------------------------------------------------------------------- a change and its record, together
def test_a_commit_writes_its_audit_record_in_its_own_transaction(target):
    from tessera.core.model import Action, Scope, Version

    calls = CallCounter()
    store = target.store(calls)
    access = DynamoAccessStore.for_store(store)
    access.append(None, [entry(1)])
    pending = Version(Scope(), "k", 1, Action.CREATE, False, datetime.now(UTC), "svc", envelope=b"x" * 40, key_id="kid")
    calls.clear()
    store.commit(pending, audit=entry(2, action="config.write", key="k", status=201))
    assert calls == {"dynamodb:GetItem": 1, "dynamodb:TransactWriteItems": 1, "s3:PutObject": 1}
    (record,) = access.query(key="k", service=None, since=None, limit=5)
    assert (record.seq, record.action, record.chain) == (2, "config.write", access.writer.chain)
    from tessera.core.errors import VersionConflict

    with pytest.raises(VersionConflict):
        store.commit(pending, audit=entry(3, action="config.write", key="k", status=201))  # stale: nothing written
    assert access.append(None, [entry(4)])[0].seq == 3 and verify(access).ok


def test_the_aws_backend_refuses_to_start_without_its_access_stores(target, monkeypatch):
    import sys

    from tessera.core.backends.factory import build_access_stores
    from tessera.core.settings import Settings

    monkeypatch.setitem(sys.modules, "tessera.core.backends.aws_access", None)  # importing it raises ImportError
    settings = Settings(backend="aws", bucket=target.bucket, table=target.table)
    with pytest.raises(Unavailable) as raised:
        build_access_stores(settings, target.store())
    assert "cannot load its token, policy and audit stores" in raised.value.message and "\n" not in raised.value.message
    with pytest.raises(Unavailable):  # an aws store handed over with settings that name another backend: still refused
        build_access_stores(Settings(), target.store())


def test_an_aws_store_gets_the_table_backed_access_stores_whatever_the_settings_say(target):
    from tessera.core.backends.factory import build_access_stores
    from tessera.core.settings import Settings

    assert isinstance(build_access_stores(Settings(), target.store()), DynamoAccessStore)  # never the memory ones


# ---------------------------------------------------------------------- through the API
def test_mission_over_the_api_on_aws(target):
    from tessera.core.backends.factory import build
    from tessera.core.crypto import CachingKeyService
    from tessera.core.settings import Settings
    from tessera.handlers.app import create_app

    root_token = "tsr_aws-root-token-0123456789abcdef"
    settings = Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=root_token)
    container = build(settings, store=target.store(), keys=CachingKeyService(target.kms()))
    root = {"Authorization": f"Bearer {root_token}"}
    try:
        with TestClient(create_app(container)) as client:
            client.put("/config/auth.jwt_secret", json={"value": "jwt-key", "secret": True}, headers=root).raise_for_status()
            client.put("/config/billing.stripe_key", json={"value": "sk_live", "secret": True}, headers=root).raise_for_status()
            client.put("/policies/auth-read", json={"rules": [{"path": "auth.*", "capabilities": ["read"]}]}, headers=root).raise_for_status()
            token = client.post("/auth/tokens", json={"service": "auth-svc", "policies": ["auth-read"]}, headers=root).json()["token"]
            svc = {"Authorization": f"Bearer {token}"}
            assert client.get("/config/auth.jwt_secret", headers=svc).json()["value"] == "jwt-key"
            assert client.get("/config/billing.stripe_key", headers=svc).status_code == 403
            assert client.get("/config/billing.missing", headers=svc).status_code == 403
            entries = client.get("/audit?service=auth-svc", headers=root).json()["entries"]
            assert {(e["key"], e["status"]) for e in entries} >= {("auth.jwt_secret", 200), ("billing.stripe_key", 403)}
            assert entries[0]["id"].startswith("shard-")
        report = verify(container.access.stores)
        assert report.ok and report.entries >= 8
    finally:
        container.close()


def test_real_node_on_moto_server_and_cli_verify(tmp_path):
    """A real ``tessera serve`` on the aws backend (moto_server on 127.0.0.1), then ``tessera audit verify
    --backend aws`` from another process: intact, and after a record is deleted, the first removed one."""
    import json
    import os
    import subprocess
    import sys

    from tests.aws.support import shared_server
    from tests.servers import REPO, ServerProcess

    target = shared_server(serialized=True).target()
    root_token = "tsr_aws-node-root-token-0123456789ab"
    tmp_path.joinpath("node").mkdir()
    node_process = ServerProcess(tmp_path / "node" / "data", root_token=root_token, env=target.env()).start()
    try:
        with node_process.client() as root:
            root.put("/config/auth.jwt_secret", json={"value": "k", "secret": True}).raise_for_status()
            assert root.get("/config/auth.jwt_secret").status_code == 200
            assert root.get("/config/nope").status_code == 404
            entries = root.get("/audit").json()["entries"]
            assert [e["status"] for e in entries[:2]] == [404, 200]
    finally:
        node_process.stop()

    def verify_cli() -> tuple[int, dict]:
        run = subprocess.run([sys.executable, "-m", "tessera.client.cli", "audit", "verify", "--backend", "aws", "--json"],
                             cwd=REPO, env={**os.environ, **target.env()}, capture_output=True, text=True, timeout=60)  # fmt: skip
        return run.returncode, json.loads(run.stdout)

    code, report = verify_cli()
    assert code == 0 and report["ok"] and report["entries"] >= 4, report
    (chain,) = report["chains"]
    raw(target).delete_item(TableName=target.table, Key=item_key(block_holding(target, chain, 2)))
    code, report = verify_cli()
    assert code == 7 and report["problem"]["kind"] == "removed" and report["problem"]["id"] == f"{chain}:2"
