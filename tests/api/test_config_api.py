"""Every /config endpoint, status code and error code of the contract, over the real ASGI app."""

from __future__ import annotations

import json

import pytest

from tessera import __version__


def error_of(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


def test_health_is_open(anon):
    response = anon.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "backend": "local", "revision": 0, "version": __version__}


def test_everything_else_needs_the_root_token(anon):
    for method, path in [("GET", "/config/a"), ("PUT", "/config/a"), ("GET", "/config"), ("DELETE", "/config/a"),
                         ("GET", "/config/history/a"), ("POST", "/config/rollback/a?version=1"),
                         ("GET", "/config/export"), ("POST", "/config/import"), ("GET", "/envs")]:
        error_of(anon.request(method, path), 401, "unauthenticated")
    error_of(anon.get("/config/a", headers={"Authorization": "Bearer wrong-token"}), 401, "unauthenticated")
    error_of(anon.get("/config/a", headers={"Authorization": "Basic abc"}), 401, "unauthenticated")


def test_write_read_leaf_and_subtree(client):
    created = client.put("/config/database.host", json={"value": "db.internal"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) >= {"key", "version", "revision", "secret", "updated_at", "updated_by"}
    assert "value" not in body and body["version"] == 1 and body["updated_by"] == "root"
    assert client.put("/config/database.port", json={"value": 5432}).status_code == 201
    updated = client.put("/config/database.port", json={"value": 5433})
    assert updated.status_code == 200 and updated.json()["version"] == 2

    leaf = client.get("/config/database.host")
    assert leaf.status_code == 200
    assert leaf.json() == {
        "key": "database.host", "value": "db.internal", "version": 1, "secret": False, "namespace": "default",
        "env": "default", "resolved_env": "default", "updated_at": body["updated_at"], "updated_by": "root",
        "revision": body["revision"],
    }
    assert body["updated_at"].endswith("Z")
    tree = client.get("/config/database")
    assert tree.status_code == 200
    assert tree.json()["value"] == {"host": "db.internal", "port": 5433}
    assert "version" not in tree.json()
    error_of(client.get("/config/database?version=1"), 400, "invalid_request")


def test_not_found_and_versions(client):
    error_of(client.get("/config/missing.key"), 404, "not_found")
    client.put("/config/k", json={"value": "one"})
    client.put("/config/k", json={"value": "two"})
    assert client.get("/config/k?version=1").json()["value"] == "one"
    assert client.get("/config/k?version=2").json()["version"] == 2
    error_of(client.get("/config/k?version=3"), 404, "not_found")
    for bad in ("-1", "0", "abc", "1.5", "99999999999999999999999"):
        error_of(client.get(f"/config/k?version={bad}"), 400, "invalid_request")
    assert client.get("/config/k?unknown=param&version=1").status_code == 200


def test_etag_and_if_none_match(client):
    client.put("/config/e", json={"value": 1})
    first = client.get("/config/e")
    etag = first.headers["etag"]
    cached = client.get("/config/e", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.headers["etag"] == etag
    client.put("/config/e", json={"value": 2})
    fresh = client.get("/config/e", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert client.get("/config/e", headers={"If-None-Match": f'"other", {fresh.headers["etag"]}'}).status_code == 304
    assert client.get("/config/e", headers={"If-None-Match": "*"}).status_code == 304
    assert client.get("/config/missing", headers={"If-None-Match": "*"}).status_code == 404


def test_request_id_is_echoed_or_made(client):
    assert client.get("/health", headers={"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/health").headers["x-request-id"]) >= 16
    error = error_of(client.get("/config/nothing", headers={"X-Request-Id": "req-42"}), 404, "not_found")
    assert error["request_id"] == "req-42"


def test_compare_and_set_over_http(client):
    assert client.put("/config/c", json={"value": "a", "expected_version": 0}).status_code == 201
    error = error_of(client.put("/config/c", json={"value": "b", "expected_version": 0}), 409, "version_conflict")
    assert error["current_version"] == 1
    assert client.put("/config/c", json={"value": "b", "expected_version": 1}).status_code == 200


def test_equal_value_write_makes_no_version(client):
    first = client.put("/config/same", json={"value": [1, 2]}).json()
    again = client.put("/config/same", json={"value": [1, 2]})
    assert again.status_code == 200
    assert again.json()["version"] == first["version"] == 1
    assert again.json()["revision"] == first["revision"]


def test_delete_then_read_then_history_and_rewrite(client):
    client.put("/config/f.flag", json={"value": True})
    deleted = client.delete("/config/f.flag")
    assert deleted.status_code == 200 and deleted.json()["key"] == "f.flag" and deleted.json()["version"] == 2
    error_of(client.get("/config/f.flag"), 404, "not_found")
    assert client.get("/config/f.flag?version=1").json()["value"] is True
    error_of(client.get("/config/f.flag?version=2"), 404, "not_found")
    error_of(client.delete("/config/f.flag"), 404, "not_found")
    history = client.get("/config/history/f.flag").json()
    assert [v["action"] for v in history["versions"]] == ["delete", "create"]
    assert "value" not in history["versions"][0] and history["versions"][1]["value"] is True
    rewrite = client.put("/config/f.flag", json={"value": False})
    assert rewrite.status_code == 201 and rewrite.json()["action"] == "create"


def test_history_paging_and_errors(client):
    for i in range(5):
        client.put("/config/h", json={"value": i})
    history = client.get("/config/history/h?limit=2").json()
    assert history["key"] == "h" and [v["version"] for v in history["versions"]] == [5, 4]
    assert [v["version"] for v in client.get("/config/history/h?limit=10&before=3").json()["versions"]] == [2, 1]
    entry = history["versions"][0]
    assert {"version", "action", "updated_at", "updated_by", "secret"} <= set(entry)
    for bad in ("limit=0", "limit=1001", "limit=x", "before=-2"):
        error_of(client.get(f"/config/history/h?{bad}"), 400, "invalid_request")
    error_of(client.get("/config/history/nothing"), 404, "not_found")
    error_of(client.get("/config/history/a..b"), 400, "invalid_key")


def test_rollback_over_http(client):
    client.put("/config/r", json={"value": "one"})
    client.put("/config/r", json={"value": "two"})
    rolled = client.post("/config/rollback/r?version=1")
    assert rolled.status_code == 200
    assert rolled.json()["key"] == "r" and rolled.json()["version"] == 3 and rolled.json()["rolled_back_from"] == 1
    assert client.get("/config/r").json()["value"] == "one"
    history = client.get("/config/history/r").json()["versions"]
    assert history[0]["action"] == "rollback" and history[0]["rolled_back_from"] == 1
    error_of(client.post("/config/rollback/r?version=42"), 404, "not_found")
    error_of(client.post("/config/rollback/r"), 400, "invalid_request")
    error_of(client.post("/config/rollback/r?version=abc"), 400, "invalid_request")
    client.delete("/config/r")
    error_of(client.post("/config/rollback/r?version=4"), 409, "invalid_rollback")


def test_key_conflict_and_secret_flag(client):
    client.put("/config/a.b", json={"value": 1})
    error_of(client.put("/config/a.b.c", json={"value": 1}), 409, "key_conflict")
    error_of(client.put("/config/a", json={"value": 1}), 409, "key_conflict")
    client.put("/config/s", json={"value": "x", "secret": True})
    error_of(client.put("/config/s", json={"value": "y", "secret": False}), 409, "secret_flag_immutable")
    assert client.put("/config/s", json={"value": "y"}).json()["secret"] is True


def test_list_is_metadata_only(client):
    client.put("/config/database.host", json={"value": "db"})
    client.put("/config/database.password", json={"value": "pw", "secret": True})
    client.put("/config/databases.x", json={"value": 1})
    listing = client.get("/config?prefix=database")
    assert listing.status_code == 200
    keys = listing.json()["keys"]
    assert [k["key"] for k in keys] == ["database.host", "database.password"]
    for item in keys:
        assert {"key", "version", "secret", "updated_at", "updated_by"} <= set(item) and "value" not in item
    assert len(client.get("/config").json()["keys"]) == 3
    error_of(client.get("/config?prefix=a..b"), 400, "invalid_key")


@pytest.mark.parametrize(
    "path",
    ["a..b", "..%2Fetc", "a%2Fb", "x" * 300, "%C3%BCn%C3%AFcode", "a%20b", "export.x", "rollback", ".a", "a."],
)
def test_invalid_keys_over_http(client, path):
    error_of(client.put(f"/config/{path}", json={"value": 1}), 400, "invalid_key")
    assert client.get("/health").json()["revision"] == 0


def test_bad_bodies_write_nothing(client):
    cases = [
        (b'{"value": ', 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'"just a string"', 400, "invalid_request"),
        (b"{}", 400, "invalid_request"),
        (b'{"value": {"nested": 1}}', 400, "invalid_value"),
        (b'{"value": 1, "secret": "yes"}', 400, "invalid_request"),
        (b'{"value": 1, "expected_version": "3"}', 400, "invalid_request"),
        (b'{"value": 1, "expected_version": -1}', 400, "invalid_request"),
        (b'{"value": 1, "expected_version": true}', 400, "invalid_request"),
        (b'{"value": 1, "expected_version": 1e400}', 400, "invalid_request"),
        (b'\xff\xfe', 400, "invalid_request"),
        (b'{"value": NaN}', 400, "invalid_request"),
        (b'{"value": Infinity}', 400, "invalid_request"),
        (json.dumps({"value": "x" * (65 * 1024)}).encode(), 413, "value_too_large"),
        (json.dumps({"value": "x" * (2 * 1024 * 1024)}).encode(), 413, "payload_too_large"),
    ]
    for raw, status, code in cases:
        error_of(client.put("/config/k", content=raw, headers={"Content-Type": "application/json"}), status, code)
    assert client.get("/health").json()["revision"] == 0
    error_of(client.get("/config/k"), 404, "not_found")


def test_unknown_route_and_method_use_the_error_shape(client):
    error_of(client.get("/nothing/here"), 404, "no_route")
    assert client.post("/config/k").json()["error"]["code"] in {"method_not_allowed"}


def test_import_values_and_content(client):
    result = client.post("/config/import", json={"values": {"database": {"host": "db"}, "app.name": "x"}, "secrets": ["database.host"]})
    assert result.status_code == 200
    assert result.json() == {"created": 2, "updated": 0, "unchanged": 0, "errors": []}
    assert client.get("/config/database.host").json()["secret"] is True
    yaml_body = "database:\n  host: db\n  port: 5432\napp:\n  name: y\n"
    result = client.post("/config/import", json={"format": "yaml", "content": yaml_body}).json()
    assert (result["created"], result["updated"], result["unchanged"]) == (1, 1, 1)
    dotenv = "DATABASE__PORT=6543\nNEW__KEY='quoted value'\n# comment\n"
    result = client.post("/config/import?env=default", json={"format": "dotenv", "content": dotenv}).json()
    assert (result["created"], result["updated"]) == (1, 1)
    assert client.get("/config/database.port").json()["value"] == "6543"
    assert client.get("/config/new.key").json()["value"] == "quoted value"
    partial = client.post("/config/import", json={"values": {"ok": 1, "bad..key": 2, "database": {"host": {"deep": 1}}}}).json()
    assert partial["created"] == 1
    assert {(e["key"], e["code"]) for e in partial["errors"]} == {("bad..key", "invalid_key"), ("database.host.deep", "key_conflict")}
    error_of(client.post("/config/import", json={"format": "json", "content": "[1]"}), 400, "invalid_request")
    error_of(client.post("/config/import", json={"format": "toml", "content": "a=1"}), 400, "invalid_request")
    error_of(client.post("/config/import", json={"format": "yaml", "content": "a: [unclosed"}), 400, "invalid_request")
    error_of(client.post("/config/import", json={"values": [1]}), 400, "invalid_request")
    error_of(client.post("/config/import", json={"nothing": 1}), 400, "invalid_request")


def test_export_formats(client):
    client.post("/config/import", json={"values": {"database": {"host": "db", "port": 5432}, "api-key": "k"}})
    as_json = client.get("/config/export?format=json")
    assert as_json.status_code == 200 and as_json.json() == {"api-key": "k", "database": {"host": "db", "port": 5432}}
    as_yaml = client.get("/config/export?format=yaml&prefix=database")
    assert "host: db" in as_yaml.text and "api-key" not in as_yaml.text
    as_dotenv = client.get("/config/export?format=dotenv").text
    assert as_dotenv.splitlines() == ["API_KEY=k", "DATABASE_HOST=db", "DATABASE_PORT=5432"]
    assert client.get("/config/export").json()["database"]["port"] == 5432
    error_of(client.get("/config/export?format=xml"), 400, "invalid_request")


def test_environments_over_http(client):
    error_of(client.get("/config/k?env=prod"), 404, "not_found")
    assert client.put("/envs/staging", json={"parent": "default"}).status_code == 201
    assert client.put("/envs/prod", json={"parent": "staging"}).status_code == 201
    assert client.put("/envs/prod", json={"parent": "staging"}).status_code == 200
    error_of(client.put("/envs/staging", json={"parent": "prod"}), 400, "invalid_request")
    error_of(client.put("/envs/Bad_Name", json={}), 400, "invalid_request")
    error_of(client.put("/envs/x", json={"parent": "missing"}), 404, "not_found")
    assert client.put("/envs/default", json={}).status_code == 200
    assert client.put("/envs/qa", json={}).json() == {"name": "qa", "parent": "default"}
    error_of(client.put("/envs/default", json={"parent": "prod"}), 400, "invalid_request")
    envs = client.get("/envs").json()["envs"]
    assert {"name": "default", "parent": None} in envs and {"name": "prod", "parent": "staging"} in envs
    client.put("/config/db.host", json={"value": "base"})
    assert client.get("/config/db.host?env=prod").json()["resolved_env"] == "default"
    client.put("/config/db.host?env=prod", json={"value": "prod-db"})
    read = client.get("/config/db.host?env=prod").json()
    assert (read["value"], read["env"], read["resolved_env"]) == ("prod-db", "prod", "prod")
    client.delete("/config/db.host?env=prod")
    assert client.get("/config/db.host?env=prod").json()["value"] == "base"
    error_of(client.get("/config/db.host?namespace=Bad!"), 400, "invalid_request")
    diff = client.get("/diff?from=default&to=prod").json()
    assert diff == {"added": [], "removed": [], "changed": []}
    error_of(client.get("/diff?from=default"), 400, "invalid_request")
    error_of(client.get("/diff?from=default&to=nope"), 404, "not_found")


def test_audit_phases(client):
    """A config write's record is written inside its commit (no request-phase record needed); a change the
    store cannot record in its commit (a policy) gets a durable request-phase record before it runs."""
    client.put("/config/audited.k", json={"value": 1})
    client.get("/config/audited.k")
    responses = client.get("/audit?key=audited.k").json()["entries"]
    assert [(e["action"], e["status"], e["version"]) for e in responses] == [("config.read", 200, 1), ("config.write", 201, 1)]
    assert client.get("/audit?key=audited.k&phase=request").json()["entries"] == []
    assert len(client.get("/audit?key=audited.k&phase=all").json()["entries"]) == 2
    client.put("/policies/audited-p", json={"rules": [{"path": "a.*", "capabilities": ["read"]}]})
    everything = client.get("/audit?phase=all&limit=3").json()["entries"]
    assert [(e["action"], e["phase"], e["target"]) for e in everything[:2]] == [
        ("policy.write", "response", "audited-p"), ("policy.write", "request", "audited-p")
    ]
    error_of(client.get("/audit?phase=sometimes"), 400, "invalid_request")
