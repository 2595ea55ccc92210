"""API.md § Import and export."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.acceptance.conftest import assert_error, make_env, uid

pytestmark = pytest.mark.slow

IMPORT_FIELDS = {"created", "updated", "unchanged", "errors"}


def parse_dotenv(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def test_import_nested_and_dotted_values(root):
    k = uid()
    response = root.post("/config/import", json={
        "values": {k: {"database": {"host": "h", "port": 5432}}, f"{k}.flat.key": True, f"{k}.list": [1, 2]},
        "secrets": [f"{k}.database.host"],
    })
    assert response.status_code == 200
    body = response.json()
    assert IMPORT_FIELDS <= set(body)
    assert (body["created"], body["updated"], body["unchanged"], body["errors"]) == (4, 0, 0, [])
    assert root.get(f"/config/{k}.database.port").json()["value"] == 5432
    assert root.get(f"/config/{k}.flat.key").json()["value"] is True
    assert root.get(f"/config/{k}.list").json()["value"] == [1, 2]
    host = root.get(f"/config/{k}.database.host").json()
    assert host["value"] == "h" and host["secret"] is True
    assert root.get(f"/config/{k}.database.port").json()["secret"] is False


def test_reimport_counts_unchanged_and_updated_and_makes_no_version(root):
    k = uid()
    values = {k: {"a": 1, "b": 2}}
    root.post("/config/import", json={"values": values})
    body = root.post("/config/import", json={"values": {k: {"a": 1, "b": 3, "c": 4}}}).json()
    assert (body["created"], body["updated"], body["unchanged"], body["errors"]) == (1, 1, 1, [])
    assert root.get(f"/config/{k}.a").json()["version"] == 1
    assert root.get(f"/config/{k}.b").json()["version"] == 2


def test_import_keeps_existing_secrets_secret(root):
    k = uid()
    root.put(f"/config/{k}.pw", json={"value": "one", "secret": True})
    body = root.post("/config/import", json={"values": {f"{k}.pw": "two"}}).json()
    assert body["updated"] == 1 and body["errors"] == []
    read = root.get(f"/config/{k}.pw").json()
    assert read["value"] == "two" and read["secret"] is True


def test_import_is_not_all_or_nothing(root):
    k = uid()
    root.put(f"/config/{k}.leaf", json={"value": 1})
    body = root.post("/config/import", json={"values": {
        f"{k}.good": 1, f"{k}.bad..key": 2, f"{k}.leaf.child": 3, f"{k}.big": "x" * (70 * 1024),
    }}).json()
    assert body["created"] == 1
    errors = {e["key"]: e for e in body["errors"]}
    for e in body["errors"]:
        assert {"key", "code", "message"} <= set(e)
    assert errors[f"{k}.leaf.child"]["code"] == "key_conflict"
    assert errors[f"{k}.big"]["code"] == "value_too_large"
    assert any(e["code"] == "invalid_key" for e in body["errors"])
    assert root.get(f"/config/{k}.good").json()["value"] == 1


def test_import_into_namespace_and_env(root):
    k, ns = uid(), uid("ns")
    env = make_env(root)
    body = root.post(f"/config/import?env={env}&namespace={ns}", json={"values": {f"{k}.a": "x"}}).json()
    assert body["created"] == 1
    read = root.get(f"/config/{k}.a?env={env}&namespace={ns}").json()
    assert read["value"] == "x" and read["resolved_env"] == env and read["namespace"] == ns
    assert root.get(f"/config/{k}.a").status_code == 404


def test_import_unknown_env_is_404(root):
    assert_error(root.post(f"/config/import?env={uid('nope')}", json={"values": {"a": 1}}), 404, "not_found")


def test_import_format_json(root):
    k = uid()
    content = json.dumps({k: {"a": 1, "b": {"c": "x"}}})
    body = root.post("/config/import", json={"format": "json", "content": content, "secrets": [f"{k}.b.c"]}).json()
    assert body["created"] == 2 and body["errors"] == []
    assert root.get(f"/config/{k}.b.c").json()["secret"] is True


def test_import_format_yaml(root):
    k = uid()
    content = f"{k}:\n  a: 1\n  b:\n    c: x\n  l: [1, 2]\n"
    body = root.post("/config/import", json={"format": "yaml", "content": content}).json()
    assert body["created"] == 3 and body["errors"] == []
    assert root.get(f"/config/{k}.b.c").json()["value"] == "x"
    assert root.get(f"/config/{k}.l").json()["value"] == [1, 2]


def test_import_format_dotenv_lowercases_and_splits_on_double_underscore(root):
    k = uid()
    content = f"{k.upper()}__DATABASE__HOST=db.internal\n{k.upper()}__MAX_CONN=5\n"
    body = root.post("/config/import", json={"format": "dotenv", "content": content,
                                              "secrets": [f"{k}.database.host"]}).json()
    assert body["created"] == 2 and body["errors"] == []
    host = root.get(f"/config/{k}.database.host").json()
    assert host["value"] == "db.internal" and host["secret"] is True
    assert str(root.get(f"/config/{k}.max_conn").json()["value"]) == "5"


@pytest.mark.parametrize("body", [
    {"format": "toml", "content": "a = 1"},
    {"format": "json", "content": "{not json"},
    {"format": "yaml", "content": "a: [unclosed"},
    {"values": "not an object"},
    {"format": "json"},
    {},
])
def test_bad_import_request_is_400(root, body):
    assert_error(root.post("/config/import", json=body), 400, "invalid_request")


def test_startup_config_file_is_imported_into_default(root):
    assert root.get("/config/bootcfg.database.port").json()["value"] == 5432
    assert root.get("/config/bootcfg.flags.dark-mode").json()["value"] is True
    assert root.get("/config/bootcfg").json()["value"] == {
        "database": {"host": "boot-db.internal", "port": 5432}, "flags": {"dark-mode": True}}


# --- export --------------------------------------------------------------------------------------------------------

def test_export_json_and_yaml_resolved_tree(root):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.database.host", json={"value": "base"})
    root.put(f"/config/{k}.database.port", json={"value": 5432})
    root.put(f"/config/{k}.database.host?env={env}", json={"value": "env"})
    root.put(f"/config/{k}.only.env?env={env}", json={"value": [1]})
    expected = {k: {"database": {"host": "env", "port": 5432}, "only": {"env": [1]}}}
    response = root.get(f"/config/export?format=json&prefix={k}&env={env}")
    assert response.status_code == 200
    assert json.loads(response.text) == expected
    response = root.get(f"/config/export?format=yaml&prefix={k}&env={env}")
    assert response.status_code == 200
    assert yaml.safe_load(response.text) == expected
    assert json.loads(root.get(f"/config/export?format=json&prefix={k}").text) == {
        k: {"database": {"host": "base", "port": 5432}}}


def test_export_dotenv_naming(root):
    k = uid()
    root.put(f"/config/{k}.database.host", json={"value": "db.internal"})
    root.put(f"/config/{k}.feature-flags.dark-mode", json={"value": "on"})
    response = root.get(f"/config/export?format=dotenv&prefix={k}")
    assert response.status_code == 200
    parsed = parse_dotenv(response.text)
    assert parsed == {f"{k.upper()}_DATABASE_HOST": "db.internal", f"{k.upper()}_FEATURE_FLAGS_DARK_MODE": "on"}


def test_export_leaves_out_deleted_and_other_namespaces(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": 1})
    root.put(f"/config/{k}.b", json={"value": 2})
    root.delete(f"/config/{k}.b")
    root.put(f"/config/{k}.c?namespace={uid('ns')}", json={"value": 3})
    assert json.loads(root.get(f"/config/export?format=json&prefix={k}").text) == {k: {"a": 1}}


def test_export_includes_secrets_only_where_readable(root, token_client):
    k = uid()
    root.put(f"/config/{k}.plain", json={"value": "visible"})
    root.put(f"/config/{k}.pw", json={"value": "export-hidden-pw", "secret": True})
    root.put(f"/config/{k}.other", json={"value": "not-readable"})
    assert json.loads(root.get(f"/config/export?format=json&prefix={k}").text)[k]["pw"] == "export-hidden-pw"
    caller = token_client([{"path": f"{k}.plain", "capabilities": ["read", "list"]},
                           {"path": f"{k}.pw", "capabilities": ["list"]}])
    response = caller.get(f"/config/export?format=json&prefix={k}")
    assert response.status_code == 200
    assert json.loads(response.text) == {k: {"plain": "visible"}}
    assert "export-hidden-pw" not in response.text and "not-readable" not in response.text
    for fmt in ("yaml", "dotenv"):
        text = caller.get(f"/config/export?format={fmt}&prefix={k}").text
        assert "export-hidden-pw" not in text and "not-readable" not in text and "visible" in text


def test_export_bad_format_is_400(root):
    assert_error(root.get("/config/export?format=xml"), 400, "invalid_request")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_export_then_import_round_trips(root, fmt):
    k, ns = uid(), uid("ns")
    root.put(f"/config/{k}.db.host", json={"value": "line1\nline2 \"q\" $HOME #x"})
    root.put(f"/config/{k}.db.port", json={"value": 5432})
    root.put(f"/config/{k}.flags", json={"value": [True, None, 1.5]})
    exported = root.get(f"/config/export?format={fmt}&prefix={k}").text
    body = root.post(f"/config/import?namespace={ns}", json={"format": fmt, "content": exported}).json()
    assert (body["created"], body["errors"]) == (3, [])
    assert root.get(f"/config/{k}?namespace={ns}").json()["value"] == root.get(f"/config/{k}").json()["value"]


def test_dotenv_export_value_survives_dotenv_import(root):
    k = uid()
    value = "line1\nline2 \"q\" $HOME #x"
    root.put(f"/config/{k}.nl", json={"value": value})
    exported = root.get(f"/config/export?format=dotenv&prefix={k}.nl").text
    renamed = exported.replace(f"{k.upper()}_NL", f"{k.upper()}__COPY")
    assert root.post("/config/import", json={"format": "dotenv", "content": renamed}).json()["created"] == 1
    assert root.get(f"/config/{k}.copy").json()["value"] == value
