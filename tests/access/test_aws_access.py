"""Tokens, policies and the audit chain on the aws backend (DynamoDB under in-process moto): the same
tamper cases as on SQLite, per-node chains that never fork, and the mission scenario through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import entry_hash, verify
from tessera.core.backends.aws import pad
from tessera.core.backends.aws_access import AUDIT_HEAD_PK, AUDIT_PREFIX, DynamoAccessStore
from tessera.core.errors import Unavailable
from tessera.core.tokens import hash_token
from tests.access.test_audit_chain import entry

pytestmark = pytest.mark.aws


@pytest.fixture
def target():
    from tests.aws.support import moto_target

    with moto_target() as target:
        yield target


@pytest.fixture
def access(target):
    return DynamoAccessStore(table=target.table, dynamodb=target.clients.dynamodb, chain_name="node-a")


def raw(target):
    return target.clients.dynamodb


def key_of(chain: str, seq: int) -> dict:
    return {"PK": {"S": AUDIT_PREFIX + chain}, "SK": {"S": pad(seq)}}


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


@pytest.fixture
def filled(access):
    for start in range(0, 30, 10):
        access.append("node-a", [entry(i) for i in range(start + 1, start + 11)])
    return access


def test_intact(filled):
    report = verify(filled)
    assert report.ok and report.entries == 30 and report.chains == {"node-a": (30, report.chains["node-a"][1])}


def test_edited(filled, target):
    raw(target).update_item(TableName=target.table, Key=key_of("node-a", 7), UpdateExpression="SET outcome = :o",
                            ExpressionAttributeValues={":o": {"S": "denied"}})  # fmt: skip
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("edited", 7)


def test_removed(filled, target):
    raw(target).delete_item(TableName=target.table, Key=key_of("node-a", 12))
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("removed", 12)


def test_removed_tail(filled, target):
    raw(target).delete_item(TableName=target.table, Key=key_of("node-a", 30))
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("removed", 30)


def test_inserted(filled, target):
    last = filled.chain_entries("node-a", 29, 1)[0]
    forged = AuditEntry(ts=last.ts, request_id="forged", action="config.read", outcome="allowed", status=200,
                        chain="node-a", seq=31, prev_hash=last.hash)  # fmt: skip
    from tessera.core.backends.aws_access import _audit_item

    item = _audit_item(AuditEntry(**{**forged.__dict__, "hash": entry_hash(forged)}))
    raw(target).put_item(TableName=target.table, Item=item)
    problem = verify(filled).problem
    assert (problem.kind, problem.seq) == ("inserted", 31)


def test_per_node_chains_never_fork(target):
    a = DynamoAccessStore(table=target.table, dynamodb=target.clients.dynamodb, chain_name="node-a")
    b = DynamoAccessStore(table=target.table, dynamodb=target.clients.dynamodb, chain_name="node-b")
    for i in range(5):
        a.append("node-a", [entry(i * 2 + 1)])
        b.append("node-b", [entry(i * 2 + 2)])
    assert verify(a).ok and set(verify(a).chains) == {"node-a", "node-b"}
    # A second writer that (wrongly) shares a chain name cannot fork it: its stale head fails the condition.
    a.append("node-b", [entry(100)])
    with pytest.raises(Unavailable):
        b.append("node-b", [entry(101)])
    assert verify(a).ok
    b.append("node-b", [entry(102)])  # it re-reads the head and goes on after the failure
    assert verify(a).ok and verify(a).chains["node-b"][0] == 7
    newest = a.query(key=None, service="auth-svc", since=None, limit=3)
    assert len(newest) == 3 and newest[0].ts >= newest[1].ts >= newest[2].ts
    assert a.query(key="auth.k3", service=None, since=None, limit=10)[0].key == "auth.k3"
    assert raw(target).get_item(TableName=target.table, Key={"PK": {"S": AUDIT_HEAD_PK}, "SK": {"S": "node-a"}})["Item"]


def test_mission_over_the_api_on_aws(target, monkeypatch):
    from tessera.core.crypto import CachingKeyService
    from tessera.core.settings import Settings
    from tessera.handlers.app import create_app
    from tessera.handlers.bootstrap import build

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
            assert entries[0]["id"].startswith("node-")
        report = verify(container.extras["access"].stores)
        assert report.ok and report.entries >= 8
    finally:
        container.close()


def test_real_node_on_moto_server_and_cli_verify(tmp_path):
    """A real ``tessera serve`` on the aws backend (moto_server on 127.0.0.1), then ``tessera audit verify
    --backend aws`` from another process: intact, and after an entry is deleted, the first removed one."""
    import json
    import subprocess
    import sys

    from tests.aws.support import shared_server
    from tests.servers import REPO, ServerProcess

    target = shared_server(serialized=True).target()
    root_token = "tsr_aws-node-root-token-0123456789ab"
    tmp_path.joinpath("node").mkdir()
    node = ServerProcess(tmp_path / "node" / "data", root_token=root_token, env=target.env()).start()
    try:
        with node.client() as root:
            root.put("/config/auth.jwt_secret", json={"value": "k", "secret": True}).raise_for_status()
            assert root.get("/config/auth.jwt_secret").status_code == 200
            assert root.get("/config/nope").status_code == 404
            entries = root.get("/audit").json()["entries"]
            assert [e["status"] for e in entries[:2]] == [404, 200]
    finally:
        node.stop()

    def verify_cli() -> tuple[int, dict]:
        run = subprocess.run([sys.executable, "-m", "tessera.client.cli", "audit", "verify", "--backend", "aws", "--json"],
                             cwd=REPO, env={**__import__("os").environ, **target.env()}, capture_output=True, text=True, timeout=60)  # fmt: skip
        return run.returncode, json.loads(run.stdout)

    code, report = verify_cli()
    assert code == 0 and report["ok"] and report["entries"] >= 4, report
    (chain,) = report["chains"]
    target.clients.dynamodb.delete_item(TableName=target.table, Key=key_of(chain, 2))
    code, report = verify_cli()
    assert code == 1 and report["problem"]["kind"] == "removed" and report["problem"]["id"] == f"{chain}:2"
