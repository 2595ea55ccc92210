"""API.md § Reading: GET /config/{key}, ETag/304, ?version=, subtrees and `redacted`, 404s, listing."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import assert_error, make_env, parse_time, uid

pytestmark = pytest.mark.slow

READ_FIELDS = {"key", "value", "version", "secret", "namespace", "env", "resolved_env", "updated_at", "updated_by",
               "revision"}


def test_read_has_every_documented_field(root):
    k = uid()
    put = root.put(f"/config/{k}.database.host", json={"value": "db.internal"}).json()
    body = root.get(f"/config/{k}.database.host").json()
    assert READ_FIELDS <= set(body), body
    assert body["key"] == f"{k}.database.host"
    assert body["value"] == "db.internal"
    assert body["version"] == 1 and isinstance(body["version"], int)
    assert body["secret"] is False
    assert (body["namespace"], body["env"], body["resolved_env"]) == ("default", "default", "default")
    parse_time(body["updated_at"])
    assert body["updated_at"] == put["updated_at"]
    assert body["updated_by"] == "root"
    assert body["revision"] == put["revision"] and isinstance(body["revision"], int)


def test_read_in_child_env_reports_env_and_resolved_env(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "base"})
    body = root.get(f"/config/{k}.a?env={env}").json()
    assert (body["env"], body["resolved_env"], body["value"]) == (env, "default", "base")
    root.put(f"/config/{k}.a?env={env}", json={"value": "over"})
    body = root.get(f"/config/{k}.a?env={env}").json()
    assert (body["env"], body["resolved_env"], body["value"]) == (env, env, "over")


def test_secret_value_is_returned_to_a_reader(root, token_client):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "s3cr3t", "secret": True})
    reader = token_client([{"path": f"{k}.*", "capabilities": ["read"]}])
    body = reader.get(f"/config/{k}.pw").json()
    assert body["value"] == "s3cr3t" and body["secret"] is True


# --- ETag ------------------------------------------------------------------------------------------------------

def test_etag_and_if_none_match(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    first = root.get(f"/config/{k}.a")
    etag = first.headers["etag"]
    assert etag
    not_modified = root.get(f"/config/{k}.a", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert root.get(f"/config/{k}.a", headers={"If-None-Match": '"something-else"'}).status_code == 200
    root.put(f"/config/{k}.a", json={"value": 2})
    changed = root.get(f"/config/{k}.a", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["value"] == 2
    assert changed.headers["etag"] != etag


def test_etag_changes_with_resolved_env(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": 1})
    inherited = root.get(f"/config/{k}.a?env={env}").headers["etag"]
    assert root.get(f"/config/{k}.a?env={env}", headers={"If-None-Match": inherited}).status_code == 304
    root.put(f"/config/{k}.a?env={env}", json={"value": 1})  # version 1 too, but resolved_env differs
    response = root.get(f"/config/{k}.a?env={env}", headers={"If-None-Match": inherited})
    assert response.status_code == 200 and response.json()["resolved_env"] == env
    assert response.headers["etag"] != inherited


def test_etag_differs_between_keys(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.b", json={"value": 1})
    assert root.get(f"/config/{k}.a").headers["etag"] != root.get(f"/config/{k}.b").headers["etag"]


# --- ?version= --------------------------------------------------------------------------------------------------

def test_version_returns_historical_value(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "one"})
    root.put(f"/config/{k}.a", json={"value": "two"})
    body = root.get(f"/config/{k}.a?version=1").json()
    assert body["value"] == "one" and body["version"] == 1
    assert root.get(f"/config/{k}.a?version=2").json()["value"] == "two"
    assert_error(root.get(f"/config/{k}.a?version=3"), 404, "not_found")
    assert_error(root.get(f"/config/{k}.a?version=999"), 404, "not_found")


def test_version_that_is_a_deletion_is_404(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "one"})
    root.delete(f"/config/{k}.a")
    assert_error(root.get(f"/config/{k}.a?version=2"), 404, "not_found")
    assert root.get(f"/config/{k}.a?version=1").json()["value"] == "one"


def test_version_does_not_inherit(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "base"})
    assert root.get(f"/config/{k}.a?env={env}").json()["value"] == "base"
    assert_error(root.get(f"/config/{k}.a?env={env}&version=1"), 404, "not_found")
    root.put(f"/config/{k}.a?env={env}", json={"value": "own"})
    root.put(f"/config/{k}.a", json={"value": "base2"})
    assert root.get(f"/config/{k}.a?env={env}&version=1").json()["value"] == "own"
    assert_error(root.get(f"/config/{k}.a?env={env}&version=2"), 404, "not_found")


def test_secret_historical_version_is_readable_with_read(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "old", "secret": True})
    root.put(f"/config/{k}.pw", json={"value": "new"})
    body = root.get(f"/config/{k}.pw?version=1").json()
    assert body["value"] == "old" and body["secret"] is True


# --- subtrees --------------------------------------------------------------------------------------------------

def test_subtree_assembles_nested_object_without_version(root):
    k = uid()
    root.put(f"/config/{k}.database.host", json={"value": "h"})
    root.put(f"/config/{k}.database.port", json={"value": 5432})
    root.put(f"/config/{k}.database.pool.max", json={"value": 10})
    root.put(f"/config/{k}.database.pool.min", json={"value": 1})
    root.put(f"/config/{k}.other", json={"value": "x"})
    response = root.get(f"/config/{k}.database")
    assert response.status_code == 200
    body = response.json()
    assert body["value"] == {"host": "h", "port": 5432, "pool": {"max": 10, "min": 1}}
    assert "version" not in body
    assert body["key"] == f"{k}.database"
    top = root.get(f"/config/{k}").json()["value"]
    assert top == {"database": {"host": "h", "port": 5432, "pool": {"max": 10, "min": 1}}, "other": "x"}


def test_subtree_leaves_out_deleted_leaves(root):
    k = uid()
    root.put(f"/config/{k}.t.a", json={"value": 1})
    root.put(f"/config/{k}.t.b", json={"value": 2})
    root.delete(f"/config/{k}.t.b")
    assert root.get(f"/config/{k}.t").json()["value"] == {"a": 1}
    root.delete(f"/config/{k}.t.a")
    assert_error(root.get(f"/config/{k}.t"), 404, "not_found")


def test_subtree_is_whole_segment(root):
    k = uid()
    root.put(f"/config/{k}.db.host", json={"value": 1})
    root.put(f"/config/{k}.dbx.host", json={"value": 2})
    assert root.get(f"/config/{k}.db").json()["value"] == {"host": 1}
    assert_error(root.get(f"/config/{k}.d"), 404, "not_found")


def test_subtree_with_version_is_400(root):
    k = uid()
    root.put(f"/config/{k}.t.a", json={"value": 1})
    assert_error(root.get(f"/config/{k}.t?version=1"), 400, "invalid_request")


def test_subtree_resolves_through_env_inheritance(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.t.a", json={"value": "base-a"})
    root.put(f"/config/{k}.t.b", json={"value": "base-b"})
    root.put(f"/config/{k}.t.b?env={env}", json={"value": "env-b"})
    assert root.get(f"/config/{k}.t?env={env}").json()["value"] == {"a": "base-a", "b": "env-b"}


def _redacted_names(body, k, subtree):
    names = set()
    for name in body.get("redacted", []):
        full = name if name.startswith(k + ".") else f"{k}.{subtree}.{name}"
        names.add(full)
    return names


def test_subtree_redacts_list_only_leaves_and_silently_drops_others(root, token_client):
    k = uid()
    root.put(f"/config/{k}.app.name", json={"value": "n"})
    root.put(f"/config/{k}.app.db.password", json={"value": "pw-hidden", "secret": True})
    root.put(f"/config/{k}.app.internal.flag", json={"value": "invisible-value"})
    caller = token_client([
        {"path": f"{k}.app.name", "capabilities": ["read", "list"]},
        {"path": f"{k}.app.db.password", "capabilities": ["list"]},
    ])
    response = caller.get(f"/config/{k}.app")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["value"] == {"name": "n"}
    assert isinstance(body["redacted"], list)
    assert _redacted_names(body, k, "app") == {f"{k}.app.db.password"}
    assert "pw-hidden" not in response.text
    assert "internal" not in response.text and "invisible-value" not in response.text


def test_subtree_redacted_present_and_empty_when_everything_readable(root):
    k = uid()
    root.put(f"/config/{k}.t.a", json={"value": 1})
    body = root.get(f"/config/{k}.t").json()
    assert body.get("redacted", []) == []


def test_subtree_with_nothing_readable_does_not_reveal_existence(root, token_client):
    k = uid()
    root.put(f"/config/{k}.t.a", json={"value": 1})
    caller = token_client([{"path": f"{k}.other", "capabilities": ["read"]}])
    existing = caller.get(f"/config/{k}.t")
    missing = caller.get(f"/config/{k}.nothing")
    assert existing.status_code == missing.status_code and existing.status_code in (403, 404)
    assert existing.json()["error"]["code"] == missing.json()["error"]["code"]


# --- 404s --------------------------------------------------------------------------------------------------------

def test_nothing_there_is_404(root):
    assert_error(root.get(f"/config/{uid()}.nothing"), 404, "not_found")


def test_deleted_key_reads_404_but_old_versions_stay(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "v1"})
    root.delete(f"/config/{k}.a")
    assert_error(root.get(f"/config/{k}.a"), 404, "not_found")
    assert root.get(f"/config/{k}.a?version=1").json()["value"] == "v1"


# --- listing -----------------------------------------------------------------------------------------------------

def test_list_is_metadata_only(root):
    k = uid()
    root.put(f"/config/{k}.database.host", json={"value": "host-value-xyz"})
    root.put(f"/config/{k}.database.password", json={"value": "pw-value-xyz", "secret": True})
    response = root.get(f"/config?prefix={k}.database")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"keys"}
    entries = {e["key"]: e for e in body["keys"]}
    assert set(entries) == {f"{k}.database.host", f"{k}.database.password"}
    for entry in entries.values():
        assert {"key", "version", "secret", "updated_at", "updated_by"} <= set(entry)
        assert "value" not in entry
        parse_time(entry["updated_at"])
    assert entries[f"{k}.database.password"]["secret"] is True
    assert entries[f"{k}.database.host"]["secret"] is False
    assert entries[f"{k}.database.host"]["version"] == 1
    assert "value-xyz" not in response.text


def test_list_without_prefix_lists_everything(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    keys = [e["key"] for e in root.get("/config").json()["keys"]]
    assert f"{k}.a" in keys and "bootcfg.database.host" in keys


def test_list_leaves_out_deleted_keys(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.b", json={"value": 1})
    root.delete(f"/config/{k}.b")
    assert [e["key"] for e in root.get(f"/config?prefix={k}").json()["keys"]] == [f"{k}.a"]


def test_list_in_child_env_includes_inherited_keys(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.b?env={env}", json={"value": 1})
    keys = sorted(e["key"] for e in root.get(f"/config?prefix={k}&env={env}").json()["keys"])
    assert keys == [f"{k}.a", f"{k}.b"]
    assert [e["key"] for e in root.get(f"/config?prefix={k}").json()["keys"]] == [f"{k}.a"]


def test_list_only_shows_keys_the_caller_may_list(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.hidden", json={"value": 1})
    caller = token_client([{"path": f"{k}.a", "capabilities": ["list"]}])
    response = caller.get(f"/config?prefix={k}")
    assert "hidden" not in response.text
    assert response.status_code == 200, response.text
    assert [e["key"] for e in response.json()["keys"]] == [f"{k}.a"]


def test_list_needs_list_not_read(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    reader = token_client([{"path": f"{k}.*", "capabilities": ["read"]}])
    response = reader.get(f"/config?prefix={k}")
    assert response.status_code in (200, 403)
    if response.status_code == 200:
        assert response.json()["keys"] == []
