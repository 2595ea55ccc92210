"""API.md § Conventions: body limits, error shape, request ids, auth, scope names, keys, prefixes, values,
versions, updated_by, key conflicts."""

from __future__ import annotations

import json

import pytest

from tests.acceptance.conftest import ROOT, assert_error, make_env, uid

pytestmark = pytest.mark.slow


# --- JSON in and out, size limits ------------------------------------------------------------------------------

def test_json_in_and_out(root):
    k = uid()
    response = root.put(f"/config/{k}.a", json={"value": "x"})
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    assert root.get(f"/config/{k}.a").headers["content-type"].startswith("application/json")


def test_body_over_1_mib_is_413_payload_too_large(root):
    k = uid()
    big = json.dumps({"value": "x" * (1024 * 1024 + 10)})
    response = root.put(f"/config/{k}.big", content=big, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert root.get(f"/config/{k}.big").status_code == 404


def test_import_body_over_1_mib_is_413_payload_too_large(root):
    k = uid()
    body = json.dumps({"values": {k: {f"k{i}": "y" * 1000 for i in range(1100)}}})
    assert len(body) > 1024 * 1024
    assert_error(root.post("/config/import", content=body, headers={"Content-Type": "application/json"}),
                 413, "payload_too_large")


def test_value_over_64_kib_is_413_value_too_large(root):
    k = uid()
    response = root.put(f"/config/{k}.v", json={"value": "x" * (70 * 1024)})
    assert_error(response, 413, "value_too_large")
    assert root.get(f"/config/{k}.v").status_code == 404


def test_value_at_exactly_64_kib_encoded_is_accepted(root):
    k = uid()
    value = "x" * (64 * 1024 - 2)  # JSON-encoded: 65536 bytes including the quotes
    assert len(json.dumps(value)) == 64 * 1024
    assert root.put(f"/config/{k}.v", json={"value": value}).status_code == 201
    assert_error(root.put(f"/config/{k}.w", json={"value": value + "x"}), 413, "value_too_large")


@pytest.mark.parametrize("body", [b"{bad", b"", b"[1, 2]", b"\"just a string\"", b"\xff\xfe"])
def test_malformed_json_is_400_invalid_request(root, body):
    response = root.put(f"/config/{uid()}.k", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("body", [
    {"value": 1, "secret": "yes"},
    {"value": 1, "secret": 1},
    {"value": 1, "expected_version": "three"},
    {"value": 1, "expected_version": 1.5},
    {"value": 1, "expected_version": True},
])
def test_wrong_field_types_are_400_invalid_request(root, body):
    response = root.put(f"/config/{uid()}.k", json=body)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("body", [
    {"service": 5, "policies": []},
    {"service": "s", "policies": "not-a-list"},
    {"service": "s", "policies": [], "ttl_seconds": "long"},
])
def test_wrong_field_types_on_token_create_are_400(root, body):
    assert_error(root.post("/auth/tokens", json=body), 400, "invalid_request")


def test_wrong_field_types_on_policy_and_env_are_400(root):
    assert_error(root.put(f"/policies/{uid('p')}", json={"rules": "all"}), 400, "invalid_request")
    assert_error(root.put(f"/policies/{uid('p')}", json={"rules": [{"path": "a.*", "capabilities": "read"}]}),
                 400, "invalid_request")
    assert_error(root.put(f"/envs/{uid('e')}", json={"parent": 7}), 400, "invalid_request")


@pytest.mark.parametrize("path", [
    "/config/{k}.a?version=abc",
    "/config/history/{k}.a?limit=abc",
    "/config/history/{k}.a?before=abc",
    "/config/history/{k}.a?limit=-1",
    "/audit?limit=abc",
    "/audit?since=not-a-time",
    "/watch?timeout=abc",
    "/watch?since=abc&timeout=0",
])
def test_bad_query_values_are_400_invalid_request(root, path):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    response = root.get(path.format(k=k))
    assert_error(response, 400, "invalid_request")
    assert response.status_code != 422


def test_rollback_bad_version_query_is_400(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    assert_error(root.post(f"/config/rollback/{k}.a?version=abc"), 400, "invalid_request")
    assert_error(root.post(f"/config/rollback/{k}.a"), 400, "invalid_request")


# --- error shape and request ids -------------------------------------------------------------------------------

def test_error_shape_on_not_found(root):
    error = assert_error(root.get(f"/config/{uid()}.missing"), 404, "not_found")
    assert set(error) >= {"code", "message", "request_id"}


@pytest.mark.parametrize("path", ["/nope", "//config/a.b", "/tessera/config/a.b", "/configs/a.b"])
def test_a_path_that_is_no_route_is_404_no_route(root, anon, path):
    """Never ``not_found``: a client with a wrong base URL must see a configuration error, not "key missing"."""
    for client in (root, anon):
        error = assert_error(client.get(path), 404, "no_route")
        assert "base url" in error["message"].lower()


def test_client_request_id_is_echoed_on_success_and_error(root, anon):
    rid = "acc-" + uid()
    response = root.get("/envs", headers={"X-Request-Id": rid})
    assert response.status_code == 200 and response.headers["x-request-id"] == rid
    rid2 = "acc-" + uid()
    response = root.get(f"/config/{uid()}.missing", headers={"X-Request-Id": rid2})
    assert response.headers["x-request-id"] == rid2
    assert response.json()["error"]["request_id"] == rid2
    rid3 = "acc-" + uid()
    response = anon.get("/config/x", headers={"X-Request-Id": rid3})
    assert response.status_code == 401 and response.headers["x-request-id"] == rid3
    assert response.json()["error"]["request_id"] == rid3


def test_every_response_carries_a_request_id(root, anon):
    k = uid()
    put = root.put(f"/config/{k}.a", json={"value": 1})
    etag = root.get(f"/config/{k}.a").headers["etag"]
    responses = [
        put,
        root.get(f"/config/{k}.a"),
        root.get(f"/config/{k}.a", headers={"If-None-Match": etag}),
        root.get(f"/config?prefix={k}"),
        root.delete(f"/config/{k}.a"),
        anon.get("/health"),
        anon.get("/envs"),
        root.get("/auth/self"),
        root.put(f"/config/{k}.b", content=b"{", headers={"Content-Type": "application/json"}),
    ]
    for response in responses:
        assert response.headers.get("x-request-id"), (response.request.url, response.status_code)
    assert responses[2].status_code == 304


def test_unknown_route_error_has_the_one_shape(root):
    response = root.get("/no-such-route")
    assert response.status_code in (404, 405)
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "request_id"} <= set(body["error"])


def test_wrong_method_error_has_the_one_shape(root):
    response = root.patch(f"/config/{uid()}.a", json={"value": 1})
    assert response.status_code in (404, 405)
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "request_id"} <= set(body["error"])


# --- auth ------------------------------------------------------------------------------------------------------

AUTHED = [
    ("GET", "/config/acc.k"), ("GET", "/config?prefix=acc"), ("PUT", "/config/acc.k"), ("DELETE", "/config/acc.k"),
    ("GET", "/config/history/acc.k"), ("POST", "/config/rollback/acc.k?version=1"), ("POST", "/config/import"),
    ("GET", "/config/export?format=json"), ("GET", "/watch?timeout=0"), ("GET", "/diff?from=default&to=default"),
    ("GET", "/envs"), ("PUT", "/envs/acc-env"), ("POST", "/auth/tokens"), ("GET", "/auth/tokens"),
    ("DELETE", "/auth/tokens/tok_x"), ("GET", "/auth/self"), ("GET", "/policies"), ("PUT", "/policies/accp"),
    ("GET", "/policies/accp"), ("DELETE", "/policies/accp"), ("GET", "/audit"),
]


@pytest.mark.parametrize("method,path", AUTHED)
def test_missing_token_is_401_everywhere(anon, method, path):
    kwargs = {"json": {"value": 1, "parent": "default", "rules": [], "service": "x", "policies": [], "values": {}}} \
        if method in ("PUT", "POST") else {}
    assert_error(anon.request(method, path, **kwargs), 401, "unauthenticated")


@pytest.mark.parametrize("method,path", AUTHED)
def test_unknown_token_is_401_everywhere(anon, method, path):
    headers = {"Authorization": "Bearer tsr_this-token-does-not-exist-anywhere"}
    assert_error(anon.request(method, path, headers=headers), 401, "unauthenticated")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", f"Token {ROOT}", "Bearer", ROOT, "Bearer tsr_" + "0" * 43])
def test_malformed_authorization_header_is_401(anon, header):
    assert_error(anon.get("/envs", headers={"Authorization": header}), 401, "unauthenticated")


def test_valid_token_without_permission_is_403(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    nobody = token_client([])
    assert_error(nobody.get(f"/config/{k}.a"), 403, "forbidden")
    assert_error(nobody.put(f"/config/{k}.a", json={"value": 2}), 403, "forbidden")
    assert_error(nobody.delete(f"/config/{k}.a"), 403, "forbidden")
    assert_error(nobody.get("/audit"), 403, "forbidden")
    assert_error(nobody.get("/auth/tokens"), 403, "forbidden")


def test_forbidden_read_does_not_reveal_existence(root, token_client):
    k = uid()
    root.put(f"/config/{k}.exists", json={"value": "v"})
    root.put(f"/config/{k}.tree.leaf", json={"value": "v"})
    root.put(f"/config/{k}.gone", json={"value": "v"})
    root.delete(f"/config/{k}.gone")
    nobody = token_client([{"path": "unrelated.*", "capabilities": ["read", "list", "history"]}])
    for path in [f"/config/{k}.exists", f"/config/{k}.tree", f"/config/{k}.gone", f"/config/{k}.never",
                 f"/config/{k}.exists?version=1", f"/config/{k}.never?version=1", f"/config/{k}.gone?version=1"]:
        assert_error(nobody.get(path), 403, "forbidden")
    h1 = nobody.get(f"/config/history/{k}.exists")
    h2 = nobody.get(f"/config/history/{k}.never")
    assert (h1.status_code, h1.json()["error"]["code"]) == (h2.status_code, h2.json()["error"]["code"])
    assert h1.status_code == 403


# --- scope: namespace and env ----------------------------------------------------------------------------------

def test_namespace_and_env_default_to_default(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    body = root.get(f"/config/{k}.a").json()
    assert body["namespace"] == "default" and body["env"] == "default" and body["resolved_env"] == "default"
    explicit = root.get(f"/config/{k}.a?namespace=default&env=default").json()
    assert explicit["value"] == 1 and explicit["version"] == body["version"]


def test_namespaces_need_no_creation_and_are_isolated(root):
    k, ns = uid(), uid("ns")
    created = root.put(f"/config/{k}.a?namespace={ns}", json={"value": "in-ns"})
    assert created.status_code == 201
    body = root.get(f"/config/{k}.a?namespace={ns}").json()
    assert body["value"] == "in-ns" and body["namespace"] == ns
    assert_error(root.get(f"/config/{k}.a"), 404, "not_found")
    assert root.put(f"/config/{k}.a", json={"value": "in-default"}).json()["version"] == 1


@pytest.mark.parametrize("name", ["Bad", "-lead", "a_b", "a.b", "a" * 64, "sp ace", "é"])
def test_bad_namespace_name_is_400(root, name):
    response = root.get("/config/x.y", params={"namespace": name})
    assert_error(response, 400, ("invalid_request",))


@pytest.mark.parametrize("name", ["Bad", "-lead", "a_b", "a" * 64])
def test_bad_env_name_is_400(root, name):
    assert_error(root.get("/config/x.y", params={"env": name}), 400, "invalid_request")
    assert_error(root.put(f"/envs/{name}", json={"parent": "default"}), 400, "invalid_request")


def test_63_char_names_are_valid(root):
    ns = "n" + "a" * 62
    env = "e" + uid("x")[:10] + "b" * 52
    assert len(env) == 63
    assert root.put(f"/config/{uid()}.k?namespace={ns}", json={"value": 1}).status_code == 201
    assert root.put(f"/envs/{env}", json={"parent": "default"}).status_code == 201
    assert root.put(f"/config/{uid()}.k?env={env}", json={"value": 1}).status_code == 201


def test_unknown_env_is_404_not_found(root):
    missing = uid("nope")
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    assert_error(root.get(f"/config/{k}.a?env={missing}"), 404, "not_found")
    assert_error(root.put(f"/config/{k}.a?env={missing}", json={"value": 1}), 404, "not_found")
    assert_error(root.get(f"/config?prefix={k}&env={missing}"), 404, "not_found")
    assert_error(root.get(f"/watch?env={missing}&timeout=0"), 404, "not_found")
    assert_error(root.get(f"/diff?from=default&to={missing}"), 404, "not_found")
    assert_error(root.get(f"/diff?from={missing}&to=default"), 404, "not_found")


def test_default_env_always_exists(root, token_client):
    envs = {e["name"]: e for e in root.get("/envs").json()["envs"]}
    assert "default" in envs


# --- keys ------------------------------------------------------------------------------------------------------

BAD_KEYS = [
    "a..b", ".a", "a.", "a%2Fb", "a b", "a%20b", "caf%C3%A9", "a$b", "a:b", "a*b", "a,b", "a+b", "a~b",
    "x" * 65, ".".join(["s"] * 33), "a\tb".replace("\t", "%09"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_400_invalid_key_on_put(root, key):
    assert_error(root.put(f"/config/{key}", json={"value": 1}), 400, "invalid_key")


@pytest.mark.parametrize("key", ["a..b", "caf%C3%A9", "a%20b", "x" * 65])
def test_bad_keys_are_400_invalid_key_on_other_routes(root, key):
    assert_error(root.get(f"/config/{key}"), 400, "invalid_key")
    assert_error(root.delete(f"/config/{key}"), 400, "invalid_key")
    assert_error(root.get(f"/config/history/{key}"), 400, "invalid_key")
    assert_error(root.post(f"/config/rollback/{key}?version=1"), 400, "invalid_key")


def test_key_longer_than_256_chars_is_invalid(root):
    prefix = uid()
    key = prefix + "." + ".".join(["a" * 63] * 3)
    key += "." + "b" * (256 - len(key) - 1)
    assert len(key) == 256
    assert root.put(f"/config/{key}", json={"value": 1}).status_code == 201
    longer = uid() + "." + ".".join(["a" * 63] * 3)
    longer += "." + "b" * (257 - len(longer) - 1)
    assert len(longer) == 257
    assert_error(root.put(f"/config/{longer}", json={"value": 1}), 400, "invalid_key")


def test_32_segments_and_64_char_segments_are_valid(root):
    prefix = uid()
    key32 = ".".join([prefix] + ["s"] * 31)
    assert root.put(f"/config/{key32}", json={"value": 1}).status_code == 201
    key33 = ".".join([uid()] + ["s"] * 32)
    assert_error(root.put(f"/config/{key33}", json={"value": 1}), 400, "invalid_key")
    seg64 = uid() + "." + "A_-9" * 16
    assert root.put(f"/config/{seg64}", json={"value": 1}).status_code == 201
    assert root.get(f"/config/{seg64}").json()["key"] == seg64


@pytest.mark.parametrize("first", ["export", "import", "history", "rollback", "promote"])
def test_reserved_first_segment_is_invalid_key(root, first):
    assert_error(root.put(f"/config/{first}.x", json={"value": 1}), 400, "invalid_key")
    assert_error(root.put(f"/config/{first}.x.y", json={"value": 1}), 400, "invalid_key")


@pytest.mark.parametrize("first", ["promote"])
def test_reserved_single_segment_is_invalid_key(root, first):
    assert_error(root.put(f"/config/{first}", json={"value": 1}), 400, "invalid_key")


def test_reserved_word_is_fine_as_a_later_segment(root):
    k = uid()
    for word in ["export", "import", "history", "rollback", "promote"]:
        assert root.put(f"/config/{k}.{word}", json={"value": word}).status_code == 201
        assert root.get(f"/config/{k}.{word}").json()["value"] == word


def test_reserved_first_segment_in_import_is_an_error_item(root):
    k = uid()
    body = root.post("/config/import", json={"values": {"history.x": 1, f"{k}.ok": 2}}).json()
    assert body["created"] == 1
    assert [(e["key"], e["code"]) for e in body["errors"]] == [("history.x", "invalid_key")]


# --- prefix whole-segment rule ---------------------------------------------------------------------------------

def test_prefix_matches_whole_segments(root):
    k = uid()
    root.put(f"/config/{k}.database.host", json={"value": "h"})
    root.put(f"/config/{k}.database.port", json={"value": 1})
    root.put(f"/config/{k}.databases.x", json={"value": "no"})
    root.put(f"/config/{k}.databasex", json={"value": "no"})
    keys = [e["key"] for e in root.get(f"/config?prefix={k}.database").json()["keys"]]
    assert sorted(keys) == [f"{k}.database.host", f"{k}.database.port"]
    exported = root.get(f"/config/export?format=json&prefix={k}.database").json()
    assert json.dumps(exported).count("no") == 0
    assert "databases" not in json.dumps(exported) and "databasex" not in json.dumps(exported)


# --- values ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["s", "", 0, -1.5, 10**15, True, False, [1, "a", [2]], [], None, "ünïcødé ✓"])
def test_any_json_value_but_an_object_round_trips(root, value):
    k = uid()
    response = root.put(f"/config/{k}.v", json={"value": value})
    assert response.status_code == 201, response.text
    assert root.get(f"/config/{k}.v").json()["value"] == value


@pytest.mark.parametrize("value", [{}, {"a": 1}])
def test_object_value_is_400_invalid_value(root, value):
    k = uid()
    assert_error(root.put(f"/config/{k}.v", json={"value": value}), 400, "invalid_value")
    assert root.get(f"/config/{k}.v").status_code == 404


# --- versions ----------------------------------------------------------------------------------------------------

def test_versions_count_per_namespace_env_key_and_every_change_takes_the_next(root):
    k = uid()
    env = make_env(root)
    assert root.put(f"/config/{k}.a", json={"value": 1}).json()["version"] == 1
    assert root.put(f"/config/{k}.a", json={"value": 2}).json()["version"] == 2
    assert root.delete(f"/config/{k}.a").json()["version"] == 3
    assert root.put(f"/config/{k}.a", json={"value": 3}).json()["version"] == 4
    assert root.post(f"/config/rollback/{k}.a?version=1").json()["version"] == 5
    assert root.put(f"/config/{k}.b", json={"value": 1}).json()["version"] == 1
    assert root.put(f"/config/{k}.a?env={env}", json={"value": 1}).json()["version"] == 1
    assert root.put(f"/config/{k}.a?namespace={uid('ns')}", json={"value": 1}).json()["version"] == 1


# --- updated_by --------------------------------------------------------------------------------------------------

def test_updated_by_is_token_service_or_root(root, token_client):
    k = uid()
    service = uid("svc")
    writer = token_client([{"path": f"{k}.*", "capabilities": ["write", "read", "list", "history", "delete"]}],
                          service=service)
    put = writer.put(f"/config/{k}.a", json={"value": 1}).json()
    assert put["updated_by"] == service
    assert writer.get(f"/config/{k}.a").json()["updated_by"] == service
    assert writer.get(f"/config?prefix={k}").json()["keys"][0]["updated_by"] == service
    assert writer.get(f"/config/history/{k}.a").json()["versions"][0]["updated_by"] == service
    assert root.put(f"/config/{k}.a", json={"value": 2}).json()["updated_by"] == "root"
    assert root.get(f"/config/{k}.a").json()["updated_by"] == "root"


def test_updated_by_config_file(root):
    body = root.get("/config/bootcfg.database.host").json()
    assert body["value"] == "boot-db.internal" and body["updated_by"] == "config-file"
    assert body["namespace"] == "default" and body["env"] == "default"


# --- key conflicts -----------------------------------------------------------------------------------------------

def test_key_cannot_be_prefix_of_another(root):
    k = uid()
    root.put(f"/config/{k}.a.b.c", json={"value": 1})
    assert_error(root.put(f"/config/{k}.a.b", json={"value": 1}), 409, "key_conflict")
    assert_error(root.put(f"/config/{k}.a", json={"value": 1}), 409, "key_conflict")
    root.put(f"/config/{k}.x.y", json={"value": 1})
    assert_error(root.put(f"/config/{k}.x.y.z", json={"value": 1}), 409, "key_conflict")
    assert root.get(f"/config/{k}.x.y").json()["value"] == 1


def test_key_conflict_is_checked_within_one_namespace_and_env(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a.b.c", json={"value": 1})
    assert root.put(f"/config/{k}.a.b?namespace={uid('ns')}", json={"value": 1}).status_code == 201
    assert root.put(f"/config/{k}.a.b?env={env}", json={"value": 1}).status_code == 201


def test_deleted_key_no_longer_conflicts(root):
    k = uid()
    root.put(f"/config/{k}.a.b.c", json={"value": 1})
    root.delete(f"/config/{k}.a.b.c")
    assert root.put(f"/config/{k}.a.b", json={"value": 2}).status_code == 201
