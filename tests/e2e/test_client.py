"""One behaviour suite for ``tessera.Client`` and ``tessera.AsyncClient`` against a real ``tessera serve``.

Each test runs twice (``api`` is parametrized): once with the sync client, once with the async one driven from an
event loop in its own thread (``AsyncFacade`` only awaits; every call goes through the real ``AsyncClient``).
Then: base URLs (trailing slash, wrong base path, no scheme) and servers that are not Tessera → clear
``ConfigurationError``, never a default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from tessera import (
    AsyncClient,
    AuditRecord,
    Client,
    ConfigurationError,
    Diff,
    Entry,
    EnvInfo,
    Explanation,
    Forbidden,
    InvalidRequest,
    KeyInfo,
    NotFound,
    Policy,
    TokenInfo,
    Unauthenticated,
    Version,
    VersionConflict,
    WriteResult,
)
from tests.e2e.sdk_fixtures import TOKEN
from tests.netfakes import PlainHTTPServer
from tests.servers import REPO, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("client") / "data", root_token=TOKEN).start()
    yield process
    process.stop()


@pytest.fixture
def api(make, server):
    return make(server.url)


def unique(prefix: str = "k") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------- the behaviour suite (sync and async)
def test_put_get_value_and_typed_results(api):
    key = unique("app.") + ".name"
    written = api.put(key, "demo")
    assert isinstance(written, WriteResult) and written.created and written.version == 1 and written.action == "create"
    entry = api.get(key)
    assert isinstance(entry, Entry)
    assert (entry.key, entry.value, entry.version, entry.secret, entry.stale) == (key, "demo", 1, False, False)
    assert entry.updated_by == "root" and entry.updated_at is not None and entry.revision == written.revision
    assert api.value(key) == "demo"
    assert api.put(key, "demo").version == 1  # an equal value makes no new version
    assert api.put(key, "demo2").created is False


def test_missing_key_is_not_found_and_value_default(api):
    key = unique("missing.")
    with pytest.raises(NotFound) as info:
        api.get(key)
    assert info.value.status == 404 and info.value.code == "not_found" and info.value.request_id
    assert api.value(key, default="fallback") == "fallback"
    assert api.value(key, default=None) is None
    with pytest.raises(NotFound):
        api.value(key)  # no default given: a missing key is an error, not None


def test_compare_and_set(api):
    key = unique("cas.")
    api.put(key, 1, expected_version=0)
    api.put(key, 2, expected_version=1)
    with pytest.raises(VersionConflict) as info:
        api.put(key, 3, expected_version=1)
    assert info.value.current_version == 2 and info.value.status == 409
    assert api.get(key).value == 2


def test_secret_values_never_in_repr_or_history(api):
    key = unique("db.") + ".password"
    assert api.put(key, "pw-secret-123", secret=True).secret is True
    entry = api.get(key)
    assert entry.value == "pw-secret-123" and entry.secret
    assert "pw-secret-123" not in repr(entry)
    (version,) = api.history(key)
    assert isinstance(version, Version) and not version.has_value and "pw-secret" not in repr(version)


def test_history_rollback_delete(api):
    key = unique("h.")
    for value in ("one", "two", "three"):
        api.put(key, value)
    versions = api.history(key)
    assert [v.version for v in versions] == [3, 2, 1] and versions[-1].value == "one"
    assert [v.version for v in api.history(key, limit=2)] == [3, 2]
    rolled = api.rollback(key, 1)
    assert (rolled.version, rolled.rolled_back_from) == (4, 1) and api.get(key).value == "one"
    deleted = api.delete(key)
    assert deleted.version == 5
    with pytest.raises(NotFound):
        api.get(key)
    assert api.get(key, version=2).value == "two"
    with pytest.raises(NotFound):
        api.delete(key)


def test_list_export_import(api):
    prefix = unique("ls")
    result = api.import_values({prefix: {"a": 1, "b": {"c": "x"}}, f"{prefix}.d": True})
    assert (result.created, result.updated, result.unchanged, result.errors) == (3, 0, 0, [])
    listed = api.list(prefix)
    assert all(isinstance(info, KeyInfo) for info in listed)
    assert [info.key for info in listed] == [f"{prefix}.a", f"{prefix}.b.c", f"{prefix}.d"]
    assert [info.key for info in api.list(prefix, page_size=1)] == [info.key for info in listed]
    assert json.loads(api.export("json", prefix)) == {prefix: {"a": 1, "b": {"c": "x"}, "d": True}}
    assert f"{prefix.upper()}_B_C=x" in api.export("dotenv", prefix)
    subtree = api.get(prefix)
    assert subtree.is_subtree and subtree.value == {"a": 1, "b": {"c": "x"}, "d": True}
    dotenv = api.import_values(content=f"{prefix.upper()}__E=5\n", format="dotenv")
    assert dotenv.created == 1 and api.get(f"{prefix}.e").value == "5"  # dotenv values are strings


def test_envs_and_namespaces(api, make, server):
    key = unique("scoped.")
    api.put(key, "base")
    other = make(server.url, namespace="other-team")
    with pytest.raises(NotFound):
        other.get(key)
    other.put(key, "theirs")
    assert api.get(key).value == "base" and other.get(key).value == "theirs"
    assert api.get(key, namespace="other-team").value == "theirs"
    with pytest.raises(NotFound):
        api.get(key, env="no-such-env")


def test_diff_promote_explain_and_envs(api):
    staging, prod, edge = unique("stg"), unique("prd"), unique("edg")
    assert api.put_env(staging).parent == "default"
    assert api.put_env(prod) == EnvInfo(prod, "default")
    assert api.put_env(edge, parent=staging) == EnvInfo(edge, staging)
    assert EnvInfo(edge, staging) in api.envs()
    prefix = unique("dp")
    api.put(f"{prefix}.a", "base")
    api.put(f"{prefix}.a", "in-prod", env=prod)
    api.put(f"{prefix}.s", "pw", secret=True, env=staging)
    diff = api.diff(prod, staging, prefix=prefix)
    assert isinstance(diff, Diff) and diff.keys == [f"{prefix}.a", f"{prefix}.s"]
    changed = diff.changed[0]
    assert (changed.from_value, changed.to_value, changed.to_version) == ("in-prod", "base", 0)
    assert diff.added[0].secret and not diff.added[0].has_values
    assert diff.expected() == {f"{prefix}.a": 0, f"{prefix}.s": 1}
    explained = api.explain(f"{prefix}.s", env=edge)
    assert isinstance(explained, Explanation) and explained.entry is not None and explained.entry.secret
    assert [(layer.env, layer.state) for layer in explained.chain] == [(edge, "absent"), (staging, "value"), ("default", "absent")]
    missing = api.explain(f"{prefix}.none", env=edge)
    assert missing.entry is None and [layer.state for layer in missing.chain] == ["absent", "absent", "absent"]


def test_tokens_policies_and_audit(api):
    name = unique("pol")
    policy = api.put_policy(name, [{"path": f"{name}.*", "capabilities": ["read"]}])
    assert isinstance(policy, Policy) and policy.rules[0]["path"] == f"{name}.*"
    assert api.policy(name).name == name and name in [p.name for p in api.policies()]
    created = api.create_token("svc-" + name, [name], ttl_seconds=600)
    assert isinstance(created, TokenInfo) and created.token and "tsr_" not in repr(created)
    assert created.id in [t.id for t in api.tokens()] and all(t.token is None for t in api.tokens())
    assert api.token_self().service == "root"
    api.revoke_token(created.id)
    api.delete_policy(name)
    with pytest.raises(NotFound):
        api.policy(name)
    records = api.audit(service="root", limit=5)
    assert records and all(isinstance(r, AuditRecord) and r.service == "root" for r in records)
    assert api.health().version


def test_refusals_are_typed(api, make, server):
    with pytest.raises(InvalidRequest) as info:
        api.put("bad key!", 1)
    assert info.value.code == "invalid_key"
    with pytest.raises(Unauthenticated):
        make(server.url, "tsr_not-a-real-token-abcdefghijklmnop").get("anything")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        assert admin.put("/policies/client-suite-read", json={"rules": [{"path": "open.*", "capabilities": ["read"]}]}).status_code in (200, 201)
        reader = admin.post("/auth/tokens", json={"service": "reader", "policies": ["client-suite-read"]}).json()["token"]
    limited = make(server.url, reader)
    with pytest.raises(Forbidden) as forbidden:
        limited.get("closed.key")
    assert forbidden.value.status == 403


def test_token_falls_back_to_tessera_token(make, server, monkeypatch):
    monkeypatch.setenv("TESSERA_TOKEN", TOKEN)
    client = make(server.url, None)
    key = unique("envtoken.")
    client.put(key, 1)
    assert client.value(key) == 1


def test_read_cache_and_single_flight(make, server):
    key = unique("flight.")
    client = make(server.url, cache_ttl=30.0)
    client.put(key, "v1")
    assert client.get(key).value == "v1"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as other:
        other.put(f"/config/{key}", json={"value": "v2"})
    assert client.get(key).value == "v1"  # served from the 30 s read cache
    client.put(key, "v3")  # a write through this client drops its cached read
    assert client.get(key).value == "v3"


# ---------------------------------------------------------------------- base URLs and servers that are not Tessera
def test_trailing_slash_is_normalised(make, server):
    client = make(server.url + "/")
    key = unique("slash.")
    client.put(key, "ok")
    assert client.endpoints == (server.url,) and client.value(key) == "ok"


def test_wrong_base_path_is_a_configuration_error_never_a_default(make, server):
    client = make(server.url + "/tessera")
    with pytest.raises(ConfigurationError) as info:
        client.value("database.host", default="fallback")
    assert info.value.code == "no_route" and "base URL" in str(info.value)


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8200", "localhost", "ftp://127.0.0.1:21", "http://", "http://h:99999",
                                      "http://h:8200?x=1", ""])
def test_malformed_endpoints_fail_at_construction(endpoint):
    with pytest.raises(ConfigurationError):
        Client(endpoint)
    with pytest.raises(ConfigurationError):
        AsyncClient([endpoint])


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b"<html><title>Welcome to nginx!</title></html>", "text/html"),
        (404, b"<html><title>404 Not Found</title></html>", "text/html"),
        (404, b'{"detail": "Not Found"}', "application/json"),  # another JSON service
        (200, b'{"status": "ok"}', "application/json"),  # a 200 without Tessera's fields
        (403, b"Forbidden by policy", "text/plain"),
    ],
    ids=["html-200", "html-404", "other-service-404", "json-200-wrong-shape", "text-403"],
)
def test_a_server_that_is_not_tessera_is_a_configuration_error(make, status, body, content_type):
    with PlainHTTPServer(status, body, content_type) as impostor:
        client = make(impostor.url)
        with pytest.raises(ConfigurationError) as info:
            client.value("database.host", default="fallback")
        assert impostor.url in str(info.value) and "not" in str(info.value)
        with pytest.raises(ConfigurationError):
            client.put("database.host", "x")
        with pytest.raises(ConfigurationError):
            client.list()


def test_a_redirect_is_a_configuration_error(make):
    with PlainHTTPServer(301, b"", "text/plain", headers={"Location": "https://tessera.example/"}) as redirecting:
        client = make(redirecting.url)
        with pytest.raises(ConfigurationError) as info:
            client.get("database.host")
    assert "redirects to https://tessera.example/" in str(info.value)


def test_cli_reports_a_non_tessera_server_in_one_line():
    with PlainHTTPServer() as impostor:
        env = {**os.environ, "TESSERA_URL": impostor.url, "TESSERA_TOKEN": TOKEN}
        result = subprocess.run([sys.executable, "-m", "tessera.client.cli", "get", "database.host"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: configuration:") and "Corporate proxy" in lines[0]
