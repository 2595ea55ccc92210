"""API.md § Access control: tokens, policies, capabilities, path semantics."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.acceptance.conftest import ROOT, assert_error, make_env, make_token, parse_time, uid

pytestmark = pytest.mark.slow

ALL = ["read", "list", "history", "write", "delete", "rollback"]


# --- tokens ------------------------------------------------------------------------------------------------------

def test_create_token_201_shape_and_it_works(root, server):
    service = uid("svc")
    policy = uid("p")
    root.put(f"/policies/{policy}", json={"rules": [{"path": "x.*", "capabilities": ["read"]}]})
    before = datetime.now(UTC)
    response = root.post("/auth/tokens", json={"service": service, "policies": [policy], "ttl_seconds": 86400})
    assert response.status_code == 201
    body = response.json()
    assert {"id", "token", "service", "policies", "expires_at"} <= set(body)
    assert body["service"] == service and body["policies"] == [policy]
    assert isinstance(body["token"], str) and len(body["token"]) >= 16
    expires = parse_time(body["expires_at"])
    assert before + timedelta(seconds=86400 - 60) < expires < before + timedelta(seconds=86400 + 60)
    with server.client(body["token"]) as client:
        me = client.get("/auth/self")
        assert me.status_code == 200
        me = me.json()
        assert {"id", "service", "policies", "expires_at"} <= set(me)
        assert me["id"] == body["id"] and me["service"] == service and me["policies"] == [policy]
        assert parse_time(me["expires_at"]) == expires
        assert body["token"] not in me.values()


def test_token_list_never_shows_token_strings(root):
    created = make_token(root, [])
    response = root.get("/auth/tokens")
    assert response.status_code == 200
    tokens = response.json()["tokens"]
    mine = [t for t in tokens if t["id"] == created["id"]]
    assert len(mine) == 1
    assert {"id", "service", "policies", "expires_at"} <= set(mine[0]) and "token" not in mine[0]
    assert created["token"] not in response.text
    assert ROOT not in response.text
    for t in tokens:
        assert "token" not in t


def test_token_id_is_not_a_token(root, server, anon):
    created = make_token(root, [])
    assert_error(anon.get("/auth/self", headers={"Authorization": f"Bearer {created['id']}"}), 401, "unauthenticated")


def test_revoke_token_204_and_401_within_a_second(root, server):
    created = make_token(root, [{"path": "*", "capabilities": ["read"]}])
    with server.client(created["token"]) as client:
        assert client.get("/auth/self").status_code == 200
        response = root.delete(f"/auth/tokens/{created['id']}")
        assert response.status_code == 204 and response.content == b""
        time.sleep(1.0)
        assert_error(client.get("/auth/self"), 401, "unauthenticated")
        assert_error(client.get("/config/bootcfg.database.host"), 401, "unauthenticated")
    ids = [t["id"] for t in root.get("/auth/tokens").json()["tokens"]]
    assert created["id"] not in ids


def test_revoke_unknown_token_is_404(root):
    assert_error(root.delete(f"/auth/tokens/{uid('tok')}"), 404, "not_found")


def test_expired_token_is_401(root, server):
    created = make_token(root, [{"path": "*", "capabilities": ["read"]}], ttl=1)
    with server.client(created["token"]) as client:
        time.sleep(2.1)
        assert_error(client.get("/auth/self"), 401, "unauthenticated")
        assert_error(client.get("/envs"), 401, "unauthenticated")


@pytest.mark.parametrize("body", [
    {"service": "s", "policies": [], "ttl_seconds": -5},
    {"policies": []},
    {"service": "", "policies": []},
])
def test_bad_token_request_is_400(root, body):
    assert_error(root.post("/auth/tokens", json=body), 400, "invalid_request")


def test_token_admin_endpoints_need_admin(root, token_client):
    caller = token_client([{"path": "*", "capabilities": ALL}])
    other = make_token(root, [])
    assert_error(caller.post("/auth/tokens", json={"service": "x", "policies": []}), 403, "forbidden")
    assert_error(caller.get("/auth/tokens"), 403, "forbidden")
    assert_error(caller.delete(f"/auth/tokens/{other['id']}"), 403, "forbidden")
    assert caller.get("/auth/self").status_code == 200


def test_admin_capability_token_can_manage_tokens(root, token_client):
    admin = token_client([{"path": "*", "capabilities": ["admin"]}])
    response = admin.post("/auth/tokens", json={"service": uid("svc"), "policies": [], "ttl_seconds": 60})
    assert response.status_code == 201
    assert admin.get("/auth/tokens").status_code == 200
    assert admin.delete(f"/auth/tokens/{response.json()['id']}").status_code == 204


def test_auth_self_for_root(root):
    body = root.get("/auth/self").json()
    assert {"id", "service", "policies", "expires_at"} <= set(body)
    assert body["service"] == "root"


# --- policies ----------------------------------------------------------------------------------------------------

def test_policy_crud(root):
    name = uid("p")
    rules = [{"path": "auth.*", "capabilities": ["read", "list", "history"], "effect": "allow",
              "namespaces": ["*"], "envs": ["*"]}]
    created = root.put(f"/policies/{name}", json={"rules": rules})
    assert created.status_code == 201
    got = root.get(f"/policies/{name}")
    assert got.status_code == 200
    assert got.json()["name"] == name and got.json()["rules"] == rules
    listed = {p["name"]: p for p in root.get("/policies").json()["policies"]}
    assert listed[name]["rules"] == rules
    replaced = root.put(f"/policies/{name}", json={"rules": [{"path": "x", "capabilities": ["read"]}]})
    assert replaced.status_code == 200
    assert [r["path"] for r in root.get(f"/policies/{name}").json()["rules"]] == ["x"]
    deleted = root.delete(f"/policies/{name}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(root.get(f"/policies/{name}"), 404, "not_found")
    assert name not in {p["name"] for p in root.get("/policies").json()["policies"]}
    assert_error(root.delete(f"/policies/{name}"), 404, "not_found")


def test_rule_defaults(root):
    name = uid("p")
    root.put(f"/policies/{name}", json={"rules": [{"path": "x.*", "capabilities": ["read"]}]})
    rule = root.get(f"/policies/{name}").json()["rules"][0]
    assert rule.get("effect", "allow") == "allow"
    assert rule.get("namespaces", ["*"]) == ["*"] and rule.get("envs", ["*"]) == ["*"]


def test_rule_defaults_allow_in_every_namespace_and_env(root, token_client):
    k, ns = uid(), uid("ns")
    env = make_env(root)
    root.put(f"/config/{k}.a?namespace={ns}&env={env}", json={"value": "v"})
    caller = token_client([{"path": f"{k}.*", "capabilities": ["read"]}])
    assert caller.get(f"/config/{k}.a?namespace={ns}&env={env}").json()["value"] == "v"


def test_policies_need_admin(root, token_client):
    caller = token_client([{"path": "*", "capabilities": ALL}])
    assert_error(caller.put(f"/policies/{uid('p')}", json={"rules": []}), 403, "forbidden")
    assert_error(caller.get("/policies"), 403, "forbidden")
    assert_error(caller.delete(f"/policies/{uid('p')}"), 403, "forbidden")


@pytest.mark.parametrize("rule", [
    {"path": "a.*", "capabilities": ["fly"]},
    {"path": "a.*", "capabilities": ["read"], "effect": "maybe"},
    {"path": "a..b", "capabilities": ["read"]},
    {"capabilities": ["read"]},
])
def test_bad_policy_is_400(root, rule):
    assert_error(root.put(f"/policies/{uid('p')}", json={"rules": [rule]}), 400, "invalid_request")


def test_replaced_policy_applies_to_existing_tokens(root, server):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    name = uid("p")
    root.put(f"/policies/{name}", json={"rules": [{"path": "other", "capabilities": ["read"]}]})
    created = make_token(root, None, policies=[name])
    with server.client(created["token"]) as client:
        assert client.get(f"/config/{k}.a").status_code == 403
        root.put(f"/policies/{name}", json={"rules": [{"path": f"{k}.*", "capabilities": ["read"]}]})
        time.sleep(1.0)
        assert client.get(f"/config/{k}.a").status_code == 200


# --- capabilities --------------------------------------------------------------------------------------------------

def test_each_capability_gates_its_operation(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.a", json={"value": 2})
    rule = lambda caps: [{"path": f"{k}.*", "capabilities": caps}]  # noqa: E731
    ops = {
        "read": lambda c: c.get(f"/config/{k}.a"),
        "list": lambda c: c.get(f"/config?prefix={k}"),
        "history": lambda c: c.get(f"/config/history/{k}.a"),
        "write": lambda c: c.put(f"/config/{k}.w{uid()}", json={"value": 1}),
        "rollback": lambda c: c.post(f"/config/rollback/{k}.a?version=1"),
    }
    for cap, op in ops.items():
        allowed = token_client(rule([cap]))
        assert op(allowed).status_code in (200, 201), cap
        others = token_client(rule([c for c in ALL if c != cap]))
        response = op(others)
        if cap == "list" and response.status_code == 200:
            assert response.json()["keys"] == []
        else:
            assert_error(response, 403, "forbidden")
    root.put(f"/config/{k}.d1", json={"value": 1})
    without_delete = token_client(rule([c for c in ALL if c != "delete"]))
    assert_error(without_delete.delete(f"/config/{k}.d1"), 403, "forbidden")
    assert token_client(rule(["delete"])).delete(f"/config/{k}.d1").status_code == 200


def test_admin_gates_audit_envs_tokens_policies(root, token_client):
    admin = token_client([{"path": "*", "capabilities": ["admin"]}])
    assert admin.get("/audit?limit=1").status_code == 200
    assert admin.get("/policies").status_code == 200
    assert admin.get("/auth/tokens").status_code == 200
    assert admin.put(f"/envs/{uid('e')}", json={"parent": "default"}).status_code == 201
    plain = token_client([{"path": "*", "capabilities": ALL}])
    assert_error(plain.get("/audit"), 403, "forbidden")


def test_root_may_do_everything(root):
    k = uid()
    assert root.put(f"/config/{k}.a", json={"value": 1}).status_code == 201
    for path in ["/audit?limit=1", "/policies", "/auth/tokens", f"/config/history/{k}.a", f"/config?prefix={k}"]:
        assert root.get(path).status_code == 200, path


# --- path semantics ---------------------------------------------------------------------------------------------

def seed(root, k, keys):
    for key in keys:
        assert root.put(f"/config/{k}.{key}", json={"value": key}).status_code == 201, key


def test_exact_path(root, token_client):
    k = uid()
    seed(root, k, ["a.b", "a.bc", "a.c"])
    caller = token_client([{"path": f"{k}.a.b", "capabilities": ["read"]}])
    assert caller.get(f"/config/{k}.a.b").status_code == 200
    assert_error(caller.get(f"/config/{k}.a.bc"), 403, "forbidden")
    assert_error(caller.get(f"/config/{k}.a.c"), 403, "forbidden")


def test_prefix_star_matches_any_depth_but_not_prefix_itself_or_sibling_names(root, token_client):
    k = uid()
    seed(root, k, ["p.x", "p.y.z.w", "prefixes.x", "q"])
    root.put(f"/config/{k}.pp", json={"value": "pp"})
    caller = token_client([{"path": f"{k}.p.*", "capabilities": ["read", "write"]}])
    assert caller.get(f"/config/{k}.p.x").status_code == 200
    assert caller.get(f"/config/{k}.p.y.z.w").status_code == 200
    assert_error(caller.get(f"/config/{k}.prefixes.x"), 403, "forbidden")
    assert_error(caller.get(f"/config/{k}.pp"), 403, "forbidden")
    # `prefix.*` does not match `prefix` itself
    other = uid()
    writer = token_client([{"path": f"{other}.leaf.*", "capabilities": ["write", "read"]}])
    assert_error(writer.put(f"/config/{other}.leaf", json={"value": 1}), 403, "forbidden")
    assert writer.put(f"/config/{other}.leaf.x", json={"value": 1}).status_code == 201
    root.put(f"/config/{other}.solo", json={"value": 1})
    solo_reader = token_client([{"path": f"{other}.solo.*", "capabilities": ["read"]}])
    assert_error(solo_reader.get(f"/config/{other}.solo"), 403, "forbidden")


def test_star_alone_matches_every_key(root, token_client):
    k = uid()
    seed(root, k, ["a", "b.c.d"])
    caller = token_client([{"path": "*", "capabilities": ["read"]}])
    assert caller.get(f"/config/{k}.a").status_code == 200
    assert caller.get(f"/config/{k}.b.c.d").status_code == 200
    assert caller.get("/config/bootcfg.database.host").status_code == 200


def test_middle_star_matches_exactly_one_segment(root, token_client):
    k = uid()
    seed(root, k, ["services.a.password", "services.b.password", "services.a.b.password", "services.password.x",
                   "services.a.user"])
    caller = token_client([{"path": f"{k}.services.*.password", "capabilities": ["read"]}])
    assert caller.get(f"/config/{k}.services.a.password").status_code == 200
    assert caller.get(f"/config/{k}.services.b.password").status_code == 200
    assert_error(caller.get(f"/config/{k}.services.a.b.password"), 403, "forbidden")
    assert_error(caller.get(f"/config/{k}.services.a.user"), 403, "forbidden")
    assert_error(caller.get(f"/config/{k}.services.password.x"), 403, "forbidden")


def test_no_rule_is_denied(root, token_client):
    k = uid()
    seed(root, k, ["a"])
    caller = token_client([])
    assert_error(caller.get(f"/config/{k}.a"), 403, "forbidden")
    caller2 = token_client(None)
    assert_error(caller2.get(f"/config/{k}.a"), 403, "forbidden")


def test_deny_beats_allow(root, token_client, server):
    k = uid()
    seed(root, k, ["app.name", "app.password"])
    caller = token_client([
        {"path": f"{k}.app.*", "capabilities": ["read", "list"]},
        {"path": f"{k}.app.password", "capabilities": ["read"], "effect": "deny"},
    ])
    assert caller.get(f"/config/{k}.app.name").status_code == 200
    assert_error(caller.get(f"/config/{k}.app.password"), 403, "forbidden")
    body = caller.get(f"/config/{k}.app").json()
    assert body["value"] == {"name": "app.name"}
    # deny in a second policy still beats allow in the first
    deny_policy = uid("p")
    root.put(f"/policies/{deny_policy}", json={"rules": [{"path": "*", "capabilities": ["read"], "effect": "deny"}]})
    created = make_token(root, [{"path": f"{k}.*", "capabilities": ["read"]}], policies=[deny_policy])
    with server.client(created["token"]) as c2:
        assert_error(c2.get(f"/config/{k}.app.name"), 403, "forbidden")


def test_rule_namespaces_and_envs(root, token_client):
    k, ns = uid(), uid("ns")
    env = make_env(root)
    root.put(f"/config/{k}.a?namespace={ns}", json={"value": 1})
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.a?env={env}", json={"value": 2})
    by_ns = token_client([{"path": f"{k}.*", "capabilities": ["read"], "namespaces": [ns]}])
    assert by_ns.get(f"/config/{k}.a?namespace={ns}").status_code == 200
    assert_error(by_ns.get(f"/config/{k}.a"), 403, "forbidden")
    by_env = token_client([{"path": f"{k}.*", "capabilities": ["read"], "envs": [env]}])
    assert by_env.get(f"/config/{k}.a?env={env}").status_code == 200
    assert_error(by_env.get(f"/config/{k}.a"), 403, "forbidden")


def test_read_includes_secrets(root, token_client):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "cap-secret", "secret": True})
    assert token_client([{"path": f"{k}.pw", "capabilities": ["read"]}]).get(f"/config/{k}.pw").json()["value"] == \
        "cap-secret"
