"""``POST /config/promote``, ``GET /config/{key}?explain=true`` and ``to_version`` in ``/diff``, over the real ASGI app."""

from __future__ import annotations

import pytest

from tessera.core.errors import KeyConflict, VersionConflict
from tessera.core.model import Action, Scope, Version, utcnow
from tests.api.test_config_api import error_of


def envs(client, *pairs: tuple[str, str]) -> None:
    for name, parent in pairs:
        assert client.put(f"/envs/{name}", json={"parent": parent}).status_code == 201


def expected_from(diff: dict) -> dict[str, int]:
    return {item["key"]: item["to_version"] for part in ("added", "removed", "changed") for item in diff[part]}


@pytest.fixture
def staged(client):
    """staging and prod, both children of default; staging ahead of prod on four keys."""
    envs(client, ("staging", "default"), ("prod", "default"))
    client.put("/config/db.host", json={"value": "base"})
    client.put("/config/db.host?env=staging", json={"value": "stg-db"})  # prod inherits "base": changed, to_version 0
    client.put("/config/db.port?env=staging", json={"value": 6432})
    client.put("/config/db.port?env=prod", json={"value": 5432})  # changed, to_version 1
    client.put("/config/db.password?env=staging", json={"value": "stg-pw", "secret": True})  # removed (only in from)
    client.put("/config/db.pool?env=staging", json={"value": 10})
    client.put("/config/db.pool?env=prod", json={"value": 10})  # equal: unchanged
    client.put("/config/only.prod?env=prod", json={"value": "p"})  # added (only in to): left alone by promote
    return client


def test_diff_items_carry_the_version_in_to_itself(staged):
    diff = staged.get("/diff?from=staging&to=prod").json()
    assert diff["added"] == [{"key": "only.prod", "secret": False, "value": "p", "to_version": 1}]
    assert diff["removed"] == [{"key": "db.password", "secret": True, "to_version": 0}]
    assert diff["changed"] == [
        {"key": "db.host", "secret": False, "from": "stg-db", "to": "base", "to_version": 0},  # prod inherits it
        {"key": "db.port", "secret": False, "from": 6432, "to": 5432, "to_version": 1},
    ]
    staged.delete("/config/db.port?env=prod")  # a tombstone is "no value of its own"
    assert {i["key"]: i["to_version"] for i in staged.get("/diff?from=staging&to=prod").json()["removed"]}["db.port"] == 0


def test_promote_copies_what_differs_all_at_once(staged):
    expected = expected_from(staged.get("/diff?from=staging&to=prod").json())
    response = staged.post("/config/promote?from=staging&to=prod", json={"expected": expected})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(p["key"], p["version"]) for p in body["promoted"]] == [("db.host", 1), ("db.password", 1), ("db.port", 2)]
    assert body["unchanged"] == 1
    revisions = [p["revision"] for p in body["promoted"]]
    assert revisions == sorted(revisions) and len(set(revisions)) == 3
    assert staged.get("/config/db.host?env=prod").json()["resolved_env"] == "prod"
    secret = staged.get("/config/db.password?env=prod").json()
    assert (secret["value"], secret["secret"]) == ("stg-pw", True)  # still secret
    assert staged.get("/config/only.prod?env=prod").json()["value"] == "p"  # keys only in `to` are left alone
    after = staged.get("/diff?from=staging&to=prod").json()
    assert after["changed"] == [] and after["removed"] == [] and len(after["added"]) == 1
    history = staged.get("/config/history/db.port?env=prod").json()["versions"]
    assert (history[0]["action"], history[0]["updated_by"]) == ("update", "root")
    # Each key's commit recorded its own audit entry; the request has its own, too.
    entries = staged.get("/audit?limit=20&phase=all").json()["entries"]
    per_key = {e["key"] for e in entries if e["action"] == "config.promote" and e["key"]}
    assert per_key == {"db.host", "db.password", "db.port"}
    again = staged.post("/config/promote?from=staging&to=prod", json={"expected": expected_from(after)})
    assert again.json() == {"promoted": [], "unchanged": 4}


def test_a_key_that_moved_refuses_the_whole_promotion(staged):
    expected = expected_from(staged.get("/diff?from=staging&to=prod").json())
    assert staged.put("/config/db.port?env=prod", json={"value": 5433}).status_code == 200  # someone else, meanwhile
    before = staged.get("/config/export?env=prod&format=json").json()
    error = error_of(staged.post("/config/promote?from=staging&to=prod", json={"expected": expected}), 409, "version_conflict")
    assert error["keys"] == ["db.port"] and error["current_versions"] == {"db.port": 2}
    assert staged.get("/config/export?env=prod&format=json").json() == before  # nothing half-promoted
    # A key to copy that is missing from `expected` is a conflict too, named the same way.
    del expected["db.host"]
    expected["db.port"] = 2
    error = error_of(staged.post("/config/promote?from=staging&to=prod", json={"expected": expected}), 409, "version_conflict")
    assert error["keys"] == ["db.host"]
    assert staged.get("/config/db.host?env=prod").json()["resolved_env"] == "default"


def test_keys_and_prefix_narrow_a_promotion(staged):
    expected = expected_from(staged.get("/diff?from=staging&to=prod").json())
    only = staged.post("/config/promote?from=staging&to=prod", json={"keys": ["db.port"], "expected": {"db.port": 1}})
    assert [p["key"] for p in only.json()["promoted"]] == ["db.port"]
    error_of(staged.post("/config/promote?from=staging&to=prod", json={"keys": ["no.such"], "expected": {}}), 404, "not_found")
    narrowed = staged.post("/config/promote?from=staging&to=prod&prefix=db.host", json={"expected": {"db.host": expected["db.host"]}})
    assert [p["key"] for p in narrowed.json()["promoted"]] == ["db.host"]
    assert staged.get("/config/db.password?env=prod").status_code == 404  # outside the prefix: not promoted


def test_a_secret_flag_that_differs_refuses_the_promotion(client):
    envs(client, ("staging", "default"), ("prod", "default"))
    client.put("/config/api.key?env=staging", json={"value": "k1", "secret": True})
    client.put("/config/api.key?env=prod", json={"value": "k0", "secret": False})
    client.put("/config/api.url?env=staging", json={"value": "u1"})
    error = error_of(
        client.post("/config/promote?from=staging&to=prod", json={"expected": {"api.key": 1, "api.url": 0}}), 409, "secret_flag_immutable"
    )
    assert "k1" not in str(error)
    assert client.get("/config/api.url?env=prod").status_code == 404  # nothing promoted


def test_promote_checks_its_input_and_permissions(client):
    envs(client, ("staging", "default"), ("prod", "default"))
    client.put("/config/app.a?env=staging", json={"value": 1})
    for params, body in [
        ("from=staging", {"expected": {}}),
        ("from=staging&to=prod", {"expected": {"app.a": "1"}}),
        ("from=staging&to=prod", {"expected": {"app.a": -1}}),
        ("from=staging&to=prod", {"expected": []}),
        ("from=staging&to=prod", {"keys": "app.a", "expected": {}}),
        ("from=Bad!&to=prod", {"expected": {}}),
    ]:
        error_of(client.post(f"/config/promote?{params}", json=body), 400, "invalid_request")
    error_of(client.post("/config/promote?from=staging&to=prod", json={"expected": {"bad..key": 0}}), 400, "invalid_key")
    error_of(client.post("/config/promote?from=staging&to=nope", json={"expected": {}}), 404, "not_found")
    client.put("/policies/stg-read", json={"rules": [{"path": "*", "capabilities": ["read"]}]})
    token = client.post("/auth/tokens", json={"service": "reader", "policies": ["stg-read"]}).json()["token"]
    refused = client.post("/config/promote?from=staging&to=prod", json={"expected": {"app.a": 0}},
                          headers={"Authorization": f"Bearer {token}"})
    error_of(refused, 403, "forbidden")
    assert client.get("/config/app.a?env=prod").status_code == 404


def test_explain_over_a_three_level_chain(client):
    envs(client, ("staging", "default"), ("prod", "staging"))
    client.put("/config/db.host", json={"value": "base"})
    client.put("/config/db.host?env=staging", json={"value": "stg"})
    client.delete("/config/db.host?env=staging")
    plain = client.get("/config/db.host?env=prod")
    explained = client.get("/config/db.host?env=prod&explain=true")
    assert explained.status_code == 200
    body = explained.json()
    assert {k: v for k, v in body.items() if k != "explain"} == plain.json()
    chain = body["explain"]["chain"]
    assert [(layer["env"], layer["state"], layer.get("version")) for layer in chain] == [
        ("prod", "absent", None), ("staging", "deleted", 2), ("default", "value", 1)
    ]
    assert chain[2]["value"] == "base" and "value" not in chain[1]
    assert "etag" not in explained.headers
    assert client.get("/config/db.host?env=prod&explain=false").json() == plain.json()


def test_explain_never_shows_secret_values_or_hidden_layers(client):
    envs(client, ("prod", "default"))
    client.put("/config/db.pw", json={"value": "base-secret-value", "secret": True})
    client.put("/config/db.pw?env=prod", json={"value": "prod-secret-value"})  # inherits the flag: secret
    explained = client.get("/config/db.pw?env=prod&explain=true")
    assert explained.json()["value"] == "prod-secret-value"  # the read itself, as without explain
    assert "secret-value" not in str(explained.json()["explain"])
    assert [layer["state"] for layer in explained.json()["explain"]["chain"]] == ["value", "value"]
    client.put("/policies/prod-only", json={"rules": [{"path": "db.*", "capabilities": ["read"], "envs": ["prod"]}]})
    token = client.post("/auth/tokens", json={"service": "svc", "policies": ["prod-only"]}).json()["token"]
    limited = client.get("/config/db.pw?env=prod&explain=true", headers={"Authorization": f"Bearer {token}"}).json()
    assert [layer["state"] for layer in limited["explain"]["chain"]] == ["value", "hidden"]
    assert set(limited["explain"]["chain"][1]) == {"env", "state"}


def test_explain_on_a_missing_key_says_why_and_refusals_say_nothing(client):
    envs(client, ("prod", "default"))
    client.put("/config/gone", json={"value": 1})
    client.delete("/config/gone")
    error = error_of(client.get("/config/gone?env=prod&explain=true"), 404, "not_found")
    assert [(layer["env"], layer["state"]) for layer in error["explain"]["chain"]] == [("prod", "absent"), ("default", "deleted")]
    assert "explain" not in error_of(client.get("/config/gone?env=nope&explain=true"), 404, "not_found")
    error_of(client.get("/config/gone?explain=maybe"), 400, "invalid_request")
    error_of(client.get("/config/gone?explain=true&version=1"), 400, "invalid_request")
    token = client.post("/auth/tokens", json={"service": "nobody", "policies": []}).json()["token"]
    refused = error_of(client.get("/config/gone?explain=true", headers={"Authorization": f"Bearer {token}"}), 403, "forbidden")
    assert "explain" not in refused


def test_commit_many_is_all_or_nothing(container):
    store = container.store
    scope = Scope()

    def version(key: str, number: int) -> Version:
        return Version(scope=scope, key=key, version=number, action=Action.CREATE if number == 1 else Action.UPDATE,
                       secret=False, updated_at=utcnow(), updated_by="test", envelope=b"x", key_id="k")

    store.commit(version("b", 1))
    revision = store.current_revision()
    with pytest.raises(VersionConflict):
        store.commit_many([version("a", 1), version("b", 1)])  # b is at 1 already
    with pytest.raises(KeyConflict):
        store.commit_many([version("c", 1), version("c.d", 1)])  # the second conflicts with the first
    assert store.current_revision() == revision
    assert store.latest(scope, "a") is None and store.latest(scope, "c") is None
    done = store.commit_many([version("a", 1), version("b", 2)])
    assert [v.revision for v in done] == [revision + 1, revision + 2]
