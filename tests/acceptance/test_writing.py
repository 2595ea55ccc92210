"""API.md § Writing: PUT/DELETE /config/{key}, secret flag, compare-and-set, tombstones, inheritance."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import assert_error, make_env, parse_time, uid

pytestmark = pytest.mark.slow

WRITE_FIELDS = {"key", "version", "revision", "secret", "updated_at", "updated_by"}


def test_create_is_201_update_is_200_with_documented_fields(root):
    k = uid()
    created = root.put(f"/config/{k}.a", json={"value": "v1"})
    assert created.status_code == 201
    body = created.json()
    assert WRITE_FIELDS <= set(body) and "value" not in body
    assert body["key"] == f"{k}.a" and body["version"] == 1 and body["secret"] is False
    assert body["updated_by"] == "root"
    parse_time(body["updated_at"])
    assert "v1" not in created.text.replace(f"{k}.a", "")
    updated = root.put(f"/config/{k}.a", json={"value": "v2"})
    assert updated.status_code == 200
    assert updated.json()["version"] == 2 and "value" not in updated.json()
    assert updated.json()["revision"] > body["revision"]


def test_write_response_omits_secret_value(root):
    k = uid()
    response = root.put(f"/config/{k}.pw", json={"value": "hunter2-secret", "secret": True})
    assert response.status_code == 201
    assert response.json()["secret"] is True and "hunter2-secret" not in response.text


def test_secret_flag_is_fixed(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "a", "secret": True})
    assert_error(root.put(f"/config/{k}.pw", json={"value": "b", "secret": False}), 409, "secret_flag_immutable")
    assert root.get(f"/config/{k}.pw").json()["value"] == "a"
    kept = root.put(f"/config/{k}.pw", json={"value": "c"})
    assert kept.status_code == 200 and kept.json()["secret"] is True
    assert root.get(f"/config/{k}.pw").json()["secret"] is True
    assert root.put(f"/config/{k}.pw", json={"value": "d", "secret": True}).status_code == 200


def test_plain_key_cannot_become_secret(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "a"})
    assert_error(root.put(f"/config/{k}.a", json={"value": "b", "secret": True}), 409, "secret_flag_immutable")
    assert root.put(f"/config/{k}.a", json={"value": "c", "secret": False}).status_code == 200


def test_secret_flag_survives_deletion(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "a", "secret": True})
    root.delete(f"/config/{k}.pw")
    assert_error(root.put(f"/config/{k}.pw", json={"value": "b", "secret": False}), 409, "secret_flag_immutable")
    again = root.put(f"/config/{k}.pw", json={"value": "b"})
    assert again.status_code == 201 and again.json()["secret"] is True
    root.put(f"/config/{k}.plain", json={"value": "a"})
    root.delete(f"/config/{k}.plain")
    assert_error(root.put(f"/config/{k}.plain", json={"value": "b", "secret": True}), 409, "secret_flag_immutable")


def test_expected_version_compare_and_set(root):
    k = uid()
    assert root.put(f"/config/{k}.a", json={"value": 1, "expected_version": 0}).status_code == 201
    assert root.put(f"/config/{k}.a", json={"value": 2, "expected_version": 1}).status_code == 200
    error = assert_error(root.put(f"/config/{k}.a", json={"value": 3, "expected_version": 1}), 409, "version_conflict")
    assert error["current_version"] == 2
    error = assert_error(root.put(f"/config/{k}.a", json={"value": 3, "expected_version": 0}), 409, "version_conflict")
    assert error["current_version"] == 2
    error = assert_error(root.put(f"/config/{k}.a", json={"value": 3, "expected_version": 7}), 409, "version_conflict")
    assert error["current_version"] == 2
    assert root.get(f"/config/{k}.a").json()["value"] == 2


def test_expected_version_nonzero_on_never_written_key_conflicts(root):
    k = uid()
    error = assert_error(root.put(f"/config/{k}.a", json={"value": 1, "expected_version": 1}), 409, "version_conflict")
    assert "current_version" in error
    assert root.get(f"/config/{k}.a").status_code == 404


def test_expected_version_zero_after_deletion_and_deletions_count(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.delete(f"/config/{k}.a")  # version 2 (tombstone)
    assert_error(root.put(f"/config/{k}.a", json={"value": 2, "expected_version": 1}), 409, "version_conflict")
    recreated = root.put(f"/config/{k}.a", json={"value": 2, "expected_version": 0})
    assert recreated.status_code == 201 and recreated.json()["version"] == 3


def test_writing_after_deletion_is_201_create(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.delete(f"/config/{k}.a")
    response = root.put(f"/config/{k}.a", json={"value": 1})
    assert response.status_code == 201 and response.json()["version"] == 3
    history = root.get(f"/config/history/{k}.a").json()["versions"]
    assert [v["action"] for v in history] == ["create", "delete", "create"]
    if "action" in response.json():
        assert response.json()["action"] == "create"


def test_equal_value_makes_no_new_version(root):
    k = uid()
    first = root.put(f"/config/{k}.a", json={"value": 1}).json()
    again = root.put(f"/config/{k}.a", json={"value": 1})
    assert again.status_code == 200 and again.json()["version"] == first["version"] == 1
    assert len(root.get(f"/config/history/{k}.a").json()["versions"]) == 1


def test_equal_secret_value_makes_no_new_version(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "same", "secret": True})
    again = root.put(f"/config/{k}.pw", json={"value": "same"})
    assert again.status_code == 200 and again.json()["version"] == 1


def test_delete_records_tombstone(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.a", json={"value": 2})
    response = root.delete(f"/config/{k}.a")
    assert response.status_code == 200
    body = response.json()
    assert {"key", "version"} <= set(body)
    assert body["key"] == f"{k}.a" and body["version"] == 3
    assert "value" not in body
    assert_error(root.get(f"/config/{k}.a"), 404, "not_found")
    versions = root.get(f"/config/history/{k}.a").json()["versions"]
    assert versions[0]["version"] == 3 and versions[0]["action"] == "delete"


def test_delete_absent_is_404(root):
    k = uid()
    assert_error(root.delete(f"/config/{k}.never"), 404, "not_found")
    root.put(f"/config/{k}.a", json={"value": 1})
    root.delete(f"/config/{k}.a")
    assert_error(root.delete(f"/config/{k}.a"), 404, "not_found")


def test_delete_in_inheriting_env_falls_through_to_parent(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "parent"})
    root.put(f"/config/{k}.a?env={env}", json={"value": "child"})
    assert root.get(f"/config/{k}.a?env={env}").json()["value"] == "child"
    response = root.delete(f"/config/{k}.a?env={env}")
    assert response.status_code == 200 and response.json()["version"] == 2
    body = root.get(f"/config/{k}.a?env={env}").json()
    assert body["value"] == "parent" and body["resolved_env"] == "default"
    assert root.get(f"/config/{k}.a").json()["value"] == "parent"


def test_write_in_child_env_leaves_parent_alone(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "parent"})
    created = root.put(f"/config/{k}.a?env={env}", json={"value": "child"})
    assert created.status_code == 201 and created.json()["version"] == 1
    assert root.get(f"/config/{k}.a").json()["value"] == "parent"
    assert root.get(f"/config/{k}.a").json()["version"] == 1


def test_missing_value_field_is_400(root):
    response = root.put(f"/config/{uid()}.a", json={"secret": False})
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_value")


def test_delete_of_a_subtree_is_404_and_deletes_nothing(root):
    k = uid()
    root.put(f"/config/{k}.db.host", json={"value": "h"})
    root.put(f"/config/{k}.db.port", json={"value": 1})
    assert_error(root.delete(f"/config/{k}.db"), 404, "not_found")
    assert root.get(f"/config/{k}.db").json()["value"] == {"host": "h", "port": 1}
