"""API.md § Environments and namespaces, incl. /diff."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import assert_error, make_env, uid

pytestmark = pytest.mark.slow


def test_put_env_creates_201_then_reparents_200(root):
    a, b = make_env(root), make_env(root)
    name = uid("e")
    created = root.put(f"/envs/{name}", json={"parent": "default"})
    assert created.status_code == 201
    updated = root.put(f"/envs/{name}", json={"parent": a})
    assert updated.status_code == 200
    envs = {e["name"]: e for e in root.get("/envs").json()["envs"]}
    assert envs[name]["parent"] == a and envs[b]["parent"] == "default"


def test_get_envs_any_valid_token(root, token_client):
    name = make_env(root)
    nobody = token_client([])
    response = nobody.get("/envs")
    assert response.status_code == 200
    envs = response.json()["envs"]
    for e in envs:
        assert {"name", "parent"} <= set(e) or (e["name"] == "default" and "name" in e)
    by_name = {e["name"]: e for e in envs}
    assert by_name[name]["parent"] == "default"
    assert by_name["default"].get("parent") is None


def test_put_env_needs_admin(root, token_client):
    writer = token_client([{"path": "*", "capabilities": ["read", "write", "list", "history", "delete", "rollback"]}])
    name = uid("e")
    assert_error(writer.put(f"/envs/{name}", json={"parent": "default"}), 403, "forbidden")
    assert name not in {e["name"] for e in root.get("/envs").json()["envs"]}
    admin = token_client([{"path": "*", "capabilities": ["admin"]}])
    assert admin.put(f"/envs/{name}", json={"parent": "default"}).status_code == 201


def test_env_cycle_is_400(root):
    a = make_env(root)
    b = make_env(root, parent=a)
    c = make_env(root, parent=b)
    assert_error(root.put(f"/envs/{a}", json={"parent": c}), 400, "invalid_request")
    assert_error(root.put(f"/envs/{a}", json={"parent": a}), 400, "invalid_request")
    envs = {e["name"]: e["parent"] for e in root.get("/envs").json()["envs"]}
    assert envs[a] == "default"


def test_env_with_unknown_parent_is_404(root):
    assert_error(root.put(f"/envs/{uid('e')}", json={"parent": uid("nope")}), 404, "not_found")


def test_default_has_no_parent(root):
    other = make_env(root)
    response = root.put("/envs/default", json={"parent": other})
    assert_error(response, 400, "invalid_request")
    envs = {e["name"]: e for e in root.get("/envs").json()["envs"]}
    assert envs["default"].get("parent") is None


def test_read_walks_the_whole_ancestry(root):
    k = uid()
    staging = make_env(root)
    prod = make_env(root, parent=staging)
    root.put(f"/config/{k}.a", json={"value": "default-a"})
    root.put(f"/config/{k}.b", json={"value": "default-b"})
    root.put(f"/config/{k}.b?env={staging}", json={"value": "staging-b"})
    a = root.get(f"/config/{k}.a?env={prod}").json()
    b = root.get(f"/config/{k}.b?env={prod}").json()
    assert (a["value"], a["resolved_env"], a["env"]) == ("default-a", "default", prod)
    assert (b["value"], b["resolved_env"]) == ("staging-b", staging)


def test_reparent_changes_resolution(root):
    k = uid()
    p1, p2 = make_env(root), make_env(root)
    child = make_env(root, parent=p1)
    root.put(f"/config/{k}.a?env={p1}", json={"value": "p1"})
    root.put(f"/config/{k}.a?env={p2}", json={"value": "p2"})
    assert root.get(f"/config/{k}.a?env={child}").json()["value"] == "p1"
    root.put(f"/envs/{child}", json={"parent": p2})
    assert root.get(f"/config/{k}.a?env={child}").json()["value"] == "p2"


def test_envs_are_shared_by_namespaces(root):
    k, ns = uid(), uid("ns")
    env = make_env(root)
    root.put(f"/config/{k}.a?namespace={ns}", json={"value": "ns-default"})
    body = root.get(f"/config/{k}.a?namespace={ns}&env={env}").json()
    assert body["value"] == "ns-default" and body["resolved_env"] == "default" and body["namespace"] == ns


# --- diff --------------------------------------------------------------------------------------------------------

def test_diff_added_removed_changed(root):
    k = uid()
    a, b = make_env(root), make_env(root)
    root.put(f"/config/{k}.same?env={a}", json={"value": 1})
    root.put(f"/config/{k}.same?env={b}", json={"value": 1})
    root.put(f"/config/{k}.changed?env={a}", json={"value": "from-v"})
    root.put(f"/config/{k}.changed?env={b}", json={"value": "to-v"})
    root.put(f"/config/{k}.only-from?env={a}", json={"value": "f"})
    root.put(f"/config/{k}.only-to?env={b}", json={"value": "t"})
    response = root.get(f"/diff?from={a}&to={b}&prefix={k}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"added", "removed", "changed"}
    assert body["added"] == [{"key": f"{k}.only-to", "secret": False, "value": "t", "to_version": 1}]
    assert body["removed"] == [{"key": f"{k}.only-from", "secret": False, "value": "f", "to_version": 0}]
    assert body["changed"] == [{"key": f"{k}.changed", "secret": False, "from": "from-v", "to": "to-v", "to_version": 1}]


def test_diff_over_resolved_values(root):
    k = uid()
    staging = make_env(root)
    prod = make_env(root)
    root.put(f"/config/{k}.inherited", json={"value": "same"})
    root.put(f"/config/{k}.over", json={"value": "base"})
    root.put(f"/config/{k}.over?env={prod}", json={"value": "prod"})
    body = root.get(f"/diff?from={staging}&to={prod}&prefix={k}").json()
    assert body["added"] == [] and body["removed"] == []
    assert body["changed"] == [{"key": f"{k}.over", "secret": False, "from": "base", "to": "prod", "to_version": 1}]


def test_diff_secrets_have_no_values(root):
    k = uid()
    a, b = make_env(root), make_env(root)
    root.put(f"/config/{k}.pw?env={a}", json={"value": "diff-secret-a", "secret": True})
    root.put(f"/config/{k}.pw?env={b}", json={"value": "diff-secret-b", "secret": True})
    root.put(f"/config/{k}.same?env={a}", json={"value": "diff-secret-same", "secret": True})
    root.put(f"/config/{k}.same?env={b}", json={"value": "diff-secret-same", "secret": True})
    root.put(f"/config/{k}.added?env={b}", json={"value": "diff-secret-added", "secret": True})
    root.put(f"/config/{k}.removed?env={a}", json={"value": "diff-secret-removed", "secret": True})
    response = root.get(f"/diff?from={a}&to={b}&prefix={k}")
    body = response.json()
    assert "diff-secret" not in response.text
    assert body["changed"] == [{"key": f"{k}.pw", "secret": True, "to_version": 1}]
    assert body["added"] == [{"key": f"{k}.added", "secret": True, "to_version": 1}]
    assert body["removed"] == [{"key": f"{k}.removed", "secret": True, "to_version": 0}]


def test_diff_prefix_is_whole_segment_and_namespace_scoped(root):
    k, ns = uid(), uid("ns")
    a, b = make_env(root), make_env(root)
    root.put(f"/config/{k}.db.x?env={b}", json={"value": 1})
    root.put(f"/config/{k}.dbs.x?env={b}", json={"value": 1})
    root.put(f"/config/{k}.db.y?env={b}&namespace={ns}", json={"value": 2})
    body = root.get(f"/diff?from={a}&to={b}&prefix={k}.db").json()
    assert [e["key"] for e in body["added"]] == [f"{k}.db.x"]
    body = root.get(f"/diff?from={a}&to={b}&prefix={k}.db&namespace={ns}").json()
    assert [e["key"] for e in body["added"]] == [f"{k}.db.y"]


def test_diff_unknown_env_is_404(root):
    assert_error(root.get(f"/diff?from=default&to={uid('nope')}"), 404, "not_found")
