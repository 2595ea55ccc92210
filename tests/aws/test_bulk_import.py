"""Imports on the aws backend commit in batches (issue 10 §6): many keys per ``TransactWriteItems`` (≤ 100 items),
heads read 100 per ``BatchGetItem``, each key still on its own terms (a key that fails is reported, the rest commit);
an import that cannot be written within one request is refused before anything is written, and keys a time budget
leaves out are named. Counted call by call under in-process moto through the HTTP app."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.aws import CallCounter
from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.errors import KeyConflict, VersionConflict
from tessera.core.model import ROOT, Action, Scope, Version, utcnow
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.aws.support import shared_server
from tests.aws.test_costs import recording

pytestmark = pytest.mark.aws
ROOT_TOKEN = "tsr_bulk-root-token-0123456789abcdef0"
ROOT_HEADERS = {"Authorization": f"Bearer {ROOT_TOKEN}"}


@pytest.fixture
def target():
    """The project's emulator (``python -m tests.cluster emulator``): plain moto copies a table once per item of a
    transaction, which a 100-item transaction turns into minutes."""
    return shared_server(serialized=True).target()


@pytest.fixture
def node(target):
    # The emulator is far slower than AWS: no time budget in these tests (TESSERA_IMPORT_DEADLINE).
    container = build(Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN, import_deadline=600),
                      store=target.store(CallCounter()), keys=CachingKeyService(target.kms()))  # fmt: skip
    assert container.service.import_seconds == 600
    with TestClient(create_app(container), headers=ROOT_HEADERS) as client:
        yield container, client
    container.close()


def tree(count: int, value: object = 0) -> dict:
    """``count`` leaves under 10 services of 10 groups each: app<i>.g<j>.k<n> (two ancestors per key, shared)."""
    values: dict = {}
    for n in range(count):
        values.setdefault(f"app{n % 10}", {}).setdefault(f"g{n // 10 % 10}", {})[f"k{n}"] = value if value is not None else n
    return values


def operations(calls: Counter) -> Counter:
    out: Counter = Counter()
    for (operation, _), count in calls.items():
        out[operation] += count
    return out


def test_three_hundred_keys_take_a_dozen_transactions_and_a_reimport_none(node, target):
    container, client = node
    with recording(target) as recorder:
        answer = client.post("/config/import", json={"values": tree(300, None)})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"created": 300, "updated": 0, "unchanged": 0, "errors": []}
        first = operations(recorder.take())
        again = client.post("/config/import", json={"values": tree(300, None)})
        assert again.json() == {"created": 0, "updated": 0, "unchanged": 300, "errors": []}
        second = operations(recorder.take())
        changed = client.post("/config/import", json={"values": tree(300, "new")})
        assert changed.json() == {"created": 0, "updated": 300, "unchanged": 0, "errors": []}
        third = operations(recorder.take())
    # New keys: 3 items each plus their ancestors (once per transaction) and the counter; one key at a time made
    # 300 transactions and 600 head and counter reads.
    assert first["BatchGetItem"] == 3 and first["GetItem"] <= first["TransactWriteItems"] + 5, first
    assert math.ceil(300 / 33) <= first["TransactWriteItems"] <= 15, first
    assert first["PutObject"] == 300 and first["GenerateDataKey"] == 300
    assert second["TransactWriteItems"] == 0 and second["PutObject"] == 0 and second["BatchGetItem"] == 3
    assert third["TransactWriteItems"] == math.ceil(300 / 33), third  # updates: 33 keys of 3 items + the counter
    # The store reads as if each key had been put on its own: revisions gap-free, one change per version.
    store = container.store
    assert store.current_revision() == 600
    assert [change.revision for change in store.changes_since(0, 1000)] == list(range(1, 601))
    assert client.get("/config/app3.g7.k273").json()["value"] == "new"
    assert client.get("/config/app3.g7.k273").json()["version"] == 2


def test_each_key_on_its_own_terms_inside_a_batch(node):
    container, client = node
    client.put("/config/db.host", json={"value": "x"}).raise_for_status()
    client.put("/config/plain", json={"value": 1}).raise_for_status()
    answer = client.post("/config/import", json={
        "values": {"db.host.port": 1, "db": {"name": "n"}, "a": 1, "a.b": 2, "ok": {"one": 1, "two": 2}, "bad key": 3,
                   "plain": 2, "deep": [[[1]]]},
        "secrets": ["plain"],
    })  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    codes = {error["key"]: error["code"] for error in body["errors"]}
    assert codes == {"db.host.port": "key_conflict", "a.b": "key_conflict", "bad key": "invalid_key", "plain": "secret_flag_immutable"}
    assert (body["created"], body["updated"]) == (5, 0)  # db.name, a, ok.one, ok.two, deep
    assert client.get("/config/ok").json()["value"] == {"one": 1, "two": 2}
    assert client.get("/config/a").json()["value"] == 1 and client.get("/config/a.b").status_code == 404


def test_a_batch_member_that_lost_a_race_is_reported_and_the_rest_commit(node):
    container, _ = node
    store, scope, now = container.store, Scope(), utcnow()

    def version(key: str, number: int) -> Version:
        return Version(scope=scope, key=key, version=number, action=Action.CREATE if number == 1 else Action.UPDATE,
                       secret=False, updated_at=now, updated_by="root", envelope=b"sealed", key_id="k")  # fmt: skip

    container.service.put(ROOT, scope, "race.b", 1)
    store.latest_many(scope, ["race.a", "race.b", "race.c", "race"])
    outcomes = store.commit_batch([version("race.a", 1), version("race.b", 1), version("race.c", 1)], [None] * 3)
    assert isinstance(outcomes[1], VersionConflict) and outcomes[1].current_version == 1
    assert [outcome.version for outcome in (outcomes[0], outcomes[2])] == [1, 1]
    assert [outcome.revision for outcome in (outcomes[0], outcomes[2])] == [2, 3]
    container.service.put(ROOT, scope, "held", 1)  # a value where the next batch's first two keys would sit below
    store.latest_many(scope, ["held.d", "held.e.f", "free"])
    outcomes = store.commit_batch([version("held.d", 1), version("held.e.f", 1), version("free", 1)], [None] * 3)
    assert [type(outcome) for outcome in outcomes] == [KeyConflict, KeyConflict, Version]
    assert outcomes[2].revision == 5 and store.current_revision() == 5


def test_an_import_that_cannot_fit_is_refused_before_anything_is_written(node, target):
    container, client = node
    container.store.max_import_transactions = 3
    with recording(target) as recorder:
        refused = client.post("/config/import", json={"values": tree(200)})
        calls = operations(recorder.take())
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "payload_too_large"
    assert "transactions" in refused.json()["error"]["message"] and "nothing was written" in refused.json()["error"]["message"]
    assert calls["TransactWriteItems"] == 0 and calls["PutObject"] == 0 and calls["GenerateDataKey"] == 0
    assert container.store.current_revision() == 0
    # Past the time budget: the keys left out are named, none dropped silently.
    container.store.max_import_transactions = 400
    container.service.import_seconds = 0.0
    late = client.post("/config/import", json={"values": tree(50)}).json()
    assert late["created"] == 0 and len(late["errors"]) == 50
    assert {error["code"] for error in late["errors"]} == {"deadline_exceeded"}
    assert container.store.current_revision() == 0
