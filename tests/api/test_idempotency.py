"""``Idempotency-Key`` (API.md, Conventions) on every backend (``tests/backends.py``: the embedded store, the aws
store under moto in-process and behind a moto_server process): replays, refusals, and the commit that marks its
claim in the same transaction (a claim taken over by a retry cannot commit any more)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tessera.core.backends.factory import build
from tessera.core.idempotency import IdempotencyGuard, IdempotencyInProgress
from tessera.core.model import Action, Scope, Version, utcnow
from tessera.core.settings import Settings
from tests.api.conftest import ROOT_TOKEN


@pytest.fixture
def container(backend, tmp_path):
    """The app's container over each registered backend (overrides tests/api/conftest.py's embedded one)."""
    store, keys = backend
    if store.backend_name == "aws":
        settings = Settings(backend="aws", bucket=store.bucket, table=store.table, root_token=ROOT_TOKEN)
    else:
        settings = Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN)
    container = build(settings, store=store, keys=keys)
    assert container.idempotency is not None
    yield container
    container.close()


def put(client, key, value, idem, **extra):
    return client.put(f"/config/{key}", json={"value": value, **extra}, headers={"Idempotency-Key": idem})


def test_a_retry_gets_the_first_response_and_changes_nothing(client):
    first = put(client, "idem.a", 1, "k-1")
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = put(client, "idem.a", 1, "k-1")
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert [v["version"] for v in client.get("/config/history/idem.a").json()["versions"]] == [1]
    other = put(client, "idem.a", 2, "k-1")  # same key, different request
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert client.get("/config/idem.a").json()["value"] == 1
    assert put(client, "idem.a", 2, "k-2").status_code == 200  # a new key is a new request


def test_refusals_are_replayed_too_and_errors_release_the_key(client):
    client.put("/config/idem.b", json={"value": 1})
    conflict = put(client, "idem.b", 5, "k-3", expected_version=7)
    assert conflict.status_code == 409 and conflict.json()["error"]["current_version"] == 1
    assert put(client, "idem.b", 5, "k-3", expected_version=7).json() == conflict.json()
    bad = client.put("/config/idem.c", json={"value": 1}, headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_delete_rollback_and_tokens_replay_without_the_token_string(client):
    client.put("/config/idem.d", json={"value": 1})
    client.put("/config/idem.d", json={"value": 2})
    for _ in range(2):
        rolled = client.post("/config/rollback/idem.d?version=1", headers={"Idempotency-Key": "k-4"})
        assert rolled.status_code == 200 and rolled.json()["version"] == 3
        deleted = client.delete("/config/idem.d", headers={"Idempotency-Key": "k-5"})
        assert deleted.status_code == 200 and deleted.json()["version"] == 4
    created = client.post("/auth/tokens", json={"service": "idem", "policies": []}, headers={"Idempotency-Key": "k-6"})
    replayed = client.post("/auth/tokens", json={"service": "idem", "policies": []}, headers={"Idempotency-Key": "k-6"})
    assert created.status_code == replayed.status_code == 201 and "token" in created.json()
    assert "token" not in replayed.json() and replayed.json()["id"] == created.json()["id"]
    assert len([t for t in client.get("/auth/tokens").json()["tokens"] if t["service"] == "idem"]) == 1


def test_keys_are_per_token(client):
    assert put(client, "idem.e", 1, "shared").status_code == 201
    created = client.post("/auth/tokens", json={"service": "other", "policies": []}).json()
    other = client.put("/config/idem.e", json={"value": 9}, headers={"Idempotency-Key": "shared", "Authorization": f"Bearer {created['token']}"})
    assert other.status_code == 403 and "idempotent-replayed" not in other.headers  # its own request, refused


def test_a_claim_taken_over_cannot_commit(container):
    """A paused node's commit after its lease ran out and a retry took the claim: nothing is applied."""
    store = container.idempotency
    from tessera.core.idempotency import IdempotencyRecord

    now = utcnow()
    mine = IdempotencyRecord("tok", "k", "fp", "owner-a", "running", now + timedelta(seconds=60), "config.write")
    assert store.claim(mine, now).ours
    assert not store.claim(IdempotencyRecord("tok", "k", "fp", "owner-b", "running", now + timedelta(seconds=60)), now).ours
    later = now + timedelta(seconds=61)  # the lease ran out: a retry takes it over
    assert store.claim(IdempotencyRecord("tok", "k", "fp", "owner-b", "running", later + timedelta(seconds=60)), later).ours
    version = Version(scope=Scope(), key="idem.f", version=1, action=Action.CREATE, secret=False, updated_at=now,
                      updated_by="root", envelope=b"x", key_id="k")  # fmt: skip
    with pytest.raises(IdempotencyInProgress):
        container.store.commit(version, guard=IdempotencyGuard("tok", "k", "owner-a"))
    assert container.store.latest(Scope(), "idem.f") is None
    container.store.commit(version, guard=IdempotencyGuard("tok", "k", "owner-b"))
    assert container.store.latest(Scope(), "idem.f").version == 1


def test_a_committed_claim_whose_response_was_never_kept_is_rebuilt(client, container):
    """The node died between the commit (which marked the claim) and keeping the response: a retry gets the
    response rebuilt from what the claim says was committed, and nothing is applied again."""
    store = container.idempotency
    original_finish = store.finish
    store.finish = lambda *args, **kwargs: None  # the crash: the response is never kept
    first = put(client, "idem.g", 1, "k-7")
    token = client.post("/auth/tokens", json={"service": "idem-g", "policies": []}, headers={"Idempotency-Key": "k-8"})
    store.finish = original_finish
    again = put(client, "idem.g", 1, "k-7")
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert {k: again.json()[k] for k in ("key", "version", "revision")} == {k: first.json()[k] for k in ("key", "version", "revision")}
    replayed = client.post("/auth/tokens", json={"service": "idem-g", "policies": []}, headers={"Idempotency-Key": "k-8"})
    assert replayed.status_code == 201 and replayed.json()["id"] == token.json()["id"] and "token" not in replayed.json()
    assert len([t for t in client.get("/auth/tokens").json()["tokens"] if t["service"] == "idem-g"]) == 1


def test_a_path_that_is_no_route_claims_nothing(client, container):
    """On AWS an unmatched path reaches the read function, whose role may not write claims: it must answer 404."""
    for _ in range(2):
        missing = client.post("/no/such/route", json={}, headers={"Idempotency-Key": "k-9"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_route"
        assert "idempotent-replayed" not in missing.headers
