"""The two requests that could stop the service (issue 8), and every read path over the deepest values.

- A YAML alias bomb, from a token with no policies (the original report) or from a writer: refused whole (413)
  before anything expands it. The service keeps answering.
- A value nested past the contract's 64 levels: refused (400) on every write path. A value at 64 levels, and
  one far deeper stored by an older release, render on every read path: read, subtree, history, watch, /ws,
  export (json, yaml, dotenv), diff.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from tessera.core import crypto
from tessera.core.backends.factory import build
from tessera.core.model import Action, Scope, Version, utcnow
from tessera.core.service import encode_value
from tessera.core.settings import Settings
from tessera.handlers.app import create_app

ROOT_TOKEN = "tsr_readpath-root-token-0123456789abc"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


def alias_bomb(levels: int = 9) -> str:
    text = "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
    for index in range(1, levels + 1):
        name, previous = f"l{index}", "a" if index == 1 else f"l{index - 1}"
        text += f"{name}: &{name} [" + ",".join(f"*{previous}" for _ in range(10)) + "]\n"
    return text


@pytest.fixture
def container(tmp_path):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    yield container
    container.close()


@pytest.fixture
def client(container):
    with TestClient(create_app(container), headers=ROOT) as client:
        yield client


def token_for(client: TestClient, service: str, rules: list[dict]) -> dict[str, str]:
    policies = []
    if rules:
        client.put(f"/policies/{service}", json={"rules": rules}).raise_for_status()
        policies = [service]
    created = client.post("/auth/tokens", json={"service": service, "policies": policies})
    return {"Authorization": f"Bearer {created.json()['token']}"}


def test_an_alias_bomb_is_refused_before_it_expands(client):
    bomb = {"format": "yaml", "content": alias_bomb()}  # 10^10 leaves once expanded
    nobody = token_for(client, "nobody", [])  # the token of the original report: no policies at all
    response = client.post("/config/import", json=bomb, headers=nobody)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    writer = token_for(client, "writer", [{"path": "*", "capabilities": ["write"]}])
    started = time.perf_counter()
    response = client.post("/config/import", json=bomb, headers=writer)
    refused_in = time.perf_counter() - started
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert "alias" in response.json()["error"]["message"]
    # The refusal costs about what a small request costs (a ratio in the same run, never an absolute time).
    started = time.perf_counter()
    assert client.post("/config/import", json={"format": "yaml", "content": "small: 1\n"}, headers=writer).status_code == 200
    small_in = time.perf_counter() - started
    assert refused_in < 20 * small_in + 0.05
    recursive = client.post("/config/import", json={"format": "yaml", "content": "a: &a [*a]\n"}, headers=writer)
    assert recursive.status_code == 400 and recursive.json()["error"]["code"] == "invalid_request"
    assert client.get("/config/small").json()["value"] == 1  # still serving


def test_values_past_64_levels_are_refused_on_every_write_path(client):
    deep = nested(65)
    response = client.put("/config/deep.k", json={"value": deep})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_value"
    assert client.put("/config/deep.ok", json={"value": nested(64)}).status_code == 201
    imported = client.post("/config/import", json={"values": {"deep": {"j": deep}}}).json()
    assert imported["errors"] == [{"key": "deep.j", "code": "invalid_value", "message": "a value may nest at most 64 levels deep"}]
    yaml_doc = "deep:\n  y: " + json.dumps(deep) + "\n"
    imported = client.post("/config/import", json={"format": "yaml", "content": yaml_doc}).json()
    assert [e["key"] for e in imported["errors"]] == ["deep.y"]
    assert client.get("/config/deep.j").status_code == 404 and client.get("/config/deep.y").status_code == 404


def store_directly(container, key: str, value: object) -> None:
    """What an older release could store: a value no write path accepts today, sealed like any other."""
    service, scope = container.service, Scope()
    latest = container.store.latest(scope, key)
    number = (latest.version if latest else 0) + 1
    envelope = crypto.seal(service.keys, scope, key, number, encode_value(value))
    container.store.commit(Version(scope=scope, key=key, version=number, action=Action.CREATE if number == 1 else Action.UPDATE,
                                   secret=False, updated_at=utcnow(), updated_by="release-0.1", envelope=envelope,
                                   key_id=crypto.envelope_key_id(envelope)))  # fmt: skip
    service.reads.clear()


@pytest.mark.parametrize("depth", [64, 300, 900])
def test_every_read_path_renders_the_deepest_values(client, container, depth):
    client.put("/envs/prod", json={"parent": "default"})
    since = client.get("/health").json()["revision"]
    if depth == 64:
        assert client.put("/config/tree.deep", json={"value": nested(depth)}).status_code == 201
    else:
        store_directly(container, "tree.deep", nested(depth))
    expected = nested(depth)
    assert client.get("/config/tree.deep").json()["value"] == expected
    assert client.get("/config/tree").json()["value"] == {"deep": expected}
    assert client.get("/config/tree.deep?env=prod").json()["value"] == expected
    assert client.get("/config/history/tree.deep").json()["versions"][0]["value"] == expected
    events = client.get(f"/watch?keys=tree.*&since={since}&timeout=1").json()["events"]
    assert [e["value"] for e in events] == [expected]
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": ROOT_TOKEN})
        ws.send_json({"type": "subscribe", "keys": ["tree.*"], "since": since})
        assert ws.receive_json()["value"] == expected
    assert client.get("/config/export?format=json").json()["tree"]["deep"] == expected
    yaml_export = client.get("/config/export?format=yaml")
    assert yaml_export.status_code == 200
    if depth <= 300:  # deeper than that, a YAML *reader* recurses too deep; the export is still well-formed JSON flow
        assert yaml.load(yaml_export.text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["tree"]["deep"] == expected
    assert client.get("/config/export?format=dotenv").text.startswith("TREE_DEEP=")
    assert client.put("/config/tree.deep?env=prod", json={"value": 1}).status_code == 201
    diff = client.get("/diff?from=default&to=prod").json()
    assert diff["changed"] == [{"key": "tree.deep", "secret": False, "from": expected, "to": 1, "to_version": 1}]
