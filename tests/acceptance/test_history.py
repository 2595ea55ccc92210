"""API.md § History and rollback."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import assert_error, make_env, parse_time, uid

pytestmark = pytest.mark.slow


def test_history_shape_newest_first_with_values(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "v1"})
    root.put(f"/config/{k}.a", json={"value": "v2"})
    root.delete(f"/config/{k}.a")
    root.put(f"/config/{k}.a", json={"value": "v4"})
    root.post(f"/config/rollback/{k}.a?version=1")
    response = root.get(f"/config/history/{k}.a")
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == f"{k}.a"
    versions = body["versions"]
    assert [v["version"] for v in versions] == [5, 4, 3, 2, 1]
    assert [v["action"] for v in versions] == ["rollback", "create", "delete", "update", "create"]
    for v in versions:
        assert {"version", "action", "updated_at", "updated_by", "secret"} <= set(v)
        parse_time(v["updated_at"])
        assert v["updated_by"] == "root" and v["secret"] is False
    assert versions[0]["rolled_back_from"] == 1
    for v in versions[1:]:
        assert "rolled_back_from" not in v or v["rolled_back_from"] is None
    values = {v["version"]: v.get("value") for v in versions if "value" in v}
    for n, expected in {5: "v1", 4: "v4", 2: "v2", 1: "v1"}.items():
        if n in values:
            assert values[n] == expected
    assert "value" not in versions[2] or versions[2]["value"] is None


def test_secret_history_never_carries_values(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "sekrit-one", "secret": True})
    root.put(f"/config/{k}.pw", json={"value": "sekrit-two"})
    root.delete(f"/config/{k}.pw")
    root.put(f"/config/{k}.pw", json={"value": "sekrit-three"})
    root.post(f"/config/rollback/{k}.pw?version=1")
    response = root.get(f"/config/history/{k}.pw")
    versions = response.json()["versions"]
    assert len(versions) == 5
    for v in versions:
        assert "value" not in v and v["secret"] is True
    assert "sekrit" not in response.text


def test_history_limit_and_before(root):
    k = uid()
    for i in range(1, 8):
        root.put(f"/config/{k}.a", json={"value": i})
    assert [v["version"] for v in root.get(f"/config/history/{k}.a?limit=3").json()["versions"]] == [7, 6, 5]
    assert [v["version"] for v in root.get(f"/config/history/{k}.a?before=5").json()["versions"]] == [4, 3, 2, 1]
    assert [v["version"] for v in root.get(f"/config/history/{k}.a?before=5&limit=2").json()["versions"]] == [4, 3]
    assert root.get(f"/config/history/{k}.a?before=1").json()["versions"] == []
    assert len(root.get(f"/config/history/{k}.a?limit=1000").json()["versions"]) == 7


def test_history_limit_defaults_to_100(root):
    k = uid()
    for i in range(105):
        root.put(f"/config/{k}.a", json={"value": i})
    versions = root.get(f"/config/history/{k}.a").json()["versions"]
    assert len(versions) == 100 and versions[0]["version"] == 105 and versions[-1]["version"] == 6
    assert len(root.get(f"/config/history/{k}.a?limit=1000").json()["versions"]) == 105


def test_history_limit_above_1000_is_refused(root):
    """API.md: ``limit`` is at most 1000. A larger one is a bad query value (``400 invalid_request``), refused
    whatever the key holds, so no client can page more than 1000 versions at once."""
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    for limit in (1001, 5000):
        assert_error(root.get(f"/config/history/{k}.a?limit={limit}"), 400, "invalid_request")
    assert len(root.get(f"/config/history/{k}.a?limit=1000").json()["versions"]) == 1


def test_history_of_unknown_key_is_404(root):
    assert_error(root.get(f"/config/history/{uid()}.never"), 404, "not_found")


def test_history_acts_on_env_alone(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "base"})
    response = root.get(f"/config/history/{k}.a?env={env}")
    assert response.status_code in (200, 404)
    if response.status_code == 200:
        assert response.json()["versions"] == []
    root.put(f"/config/{k}.a?env={env}", json={"value": "own"})
    versions = root.get(f"/config/history/{k}.a?env={env}").json()["versions"]
    assert [(v["version"], v.get("value", "own")) for v in versions] == [(1, "own")]


def test_history_needs_history_capability(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    reader = token_client([{"path": f"{k}.*", "capabilities": ["read", "list"]}])
    assert_error(reader.get(f"/config/history/{k}.a"), 403, "forbidden")
    historian = token_client([{"path": f"{k}.*", "capabilities": ["history"]}])
    assert historian.get(f"/config/history/{k}.a").status_code == 200


# --- rollback ----------------------------------------------------------------------------------------------------

def test_rollback_makes_a_new_version_with_old_value(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "one"})
    root.put(f"/config/{k}.a", json={"value": "two"})
    response = root.post(f"/config/rollback/{k}.a?version=1")
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == f"{k}.a" and body["version"] == 3 and body["rolled_back_from"] == 1
    read = root.get(f"/config/{k}.a").json()
    assert read["value"] == "one" and read["version"] == 3


def test_rollback_to_equal_value_still_makes_a_version(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "one"})
    body = root.post(f"/config/rollback/{k}.a?version=1").json()
    assert body["version"] == 2
    versions = root.get(f"/config/history/{k}.a").json()["versions"]
    assert [v["action"] for v in versions] == ["rollback", "create"]


def test_rollback_unknown_version_is_404_and_deletion_is_409(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "one"})
    root.delete(f"/config/{k}.a")
    assert_error(root.post(f"/config/rollback/{k}.a?version=9"), 404, "not_found")
    assert_error(root.post(f"/config/rollback/{k}.a?version=2"), 409, "invalid_rollback")
    assert_error(root.post(f"/config/rollback/{uid()}.never?version=1"), 404, "not_found")


def test_rollback_of_a_deleted_key_revives_it(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "one"})
    root.delete(f"/config/{k}.a")
    body = root.post(f"/config/rollback/{k}.a?version=1").json()
    assert body["version"] == 3
    assert root.get(f"/config/{k}.a").json()["value"] == "one"


def test_rollback_of_secret_keeps_it_secret(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "old-secret", "secret": True})
    root.put(f"/config/{k}.pw", json={"value": "new-secret"})
    response = root.post(f"/config/rollback/{k}.pw?version=1")
    assert response.status_code == 200 and "old-secret" not in response.text
    read = root.get(f"/config/{k}.pw").json()
    assert read["value"] == "old-secret" and read["secret"] is True


def test_rollback_acts_on_env_alone(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "base1"})
    root.put(f"/config/{k}.a", json={"value": "base2"})
    root.put(f"/config/{k}.a?env={env}", json={"value": "env1"})
    root.put(f"/config/{k}.a?env={env}", json={"value": "env2"})
    assert root.post(f"/config/rollback/{k}.a?env={env}&version=1").json()["version"] == 3
    assert root.get(f"/config/{k}.a?env={env}").json()["value"] == "env1"
    assert root.get(f"/config/{k}.a").json()["value"] == "base2"
    assert root.get(f"/config/{k}.a").json()["version"] == 2


def test_rollback_needs_rollback_capability(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.a", json={"value": 2})
    writer = token_client([{"path": f"{k}.*", "capabilities": ["read", "write", "history"]}])
    assert_error(writer.post(f"/config/rollback/{k}.a?version=1"), 403, "forbidden")
    roller = token_client([{"path": f"{k}.*", "capabilities": ["rollback"]}])
    assert roller.post(f"/config/rollback/{k}.a?version=1").status_code == 200
