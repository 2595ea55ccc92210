"""Nothing leaks to callers without the capability, and token strings are stored only as hashes."""

from __future__ import annotations

import json
import time

import pytest

from tests.acceptance.conftest import ROOT, assert_error, make_env, make_token, uid

pytestmark = pytest.mark.slow


def test_if_none_match_without_read_is_403_not_304(root, token_client):
    k = uid()
    root.put(f"/config/{k}.b", json={"value": 1})
    etag = root.get(f"/config/{k}.b").headers["etag"]
    caller = token_client([{"path": f"{k}.a", "capabilities": ["read"]}])
    assert_error(caller.get(f"/config/{k}.b", headers={"If-None-Match": etag}), 403, "forbidden")


def test_diff_shows_only_readable_keys(root, token_client):
    k = uid()
    env = make_env(root)
    root.put(f"/config/{k}.a", json={"value": "va"})
    root.put(f"/config/{k}.b", json={"value": "diff-unreadable-b"})
    root.put(f"/config/{k}.a?env={env}", json={"value": "pa"})
    root.put(f"/config/{k}.b?env={env}", json={"value": "diff-unreadable-pb"})
    caller = token_client([{"path": f"{k}.a", "capabilities": ["read"]}])
    response = caller.get(f"/diff?from=default&to={env}&prefix={k}")
    assert "diff-unreadable" not in response.text and f"{k}.b" not in response.text
    assert response.status_code == 200, response.text  # a diff leaves out what the caller may not read
    body = response.json()
    assert (body["added"], body["removed"]) == ([], []), body
    assert [{n: c[n] for n in ("key", "secret", "from", "to")} for c in body["changed"]] == [
        {"key": f"{k}.a", "secret": False, "from": "va", "to": "pa"}], body


def test_import_refuses_keys_the_caller_may_not_write(root, token_client):
    k = uid()
    caller = token_client([{"path": f"{k}.a", "capabilities": ["write"]}])
    response = caller.post("/config/import", json={"values": {f"{k}.a": 1, f"{k}.b": 2}})
    assert root.get(f"/config/{k}.b").status_code == 404
    # API.md: each key of an import commits on its own, refusals are reported per key in ``errors``.
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] == 1
    assert [(e["key"], e["code"]) for e in body["errors"]] == [(f"{k}.b", "forbidden")]
    assert root.get(f"/config/{k}.a").json()["value"] == 1


def test_export_without_read_reveals_nothing(root, token_client):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "export-unreadable"})
    caller = token_client([{"path": "unrelated.*", "capabilities": ["read"]}])
    empty = {"json": lambda text: json.loads(text) == {}, "yaml": lambda text: text.strip() in ("{}", ""),
             "dotenv": lambda text: text.strip() == ""}
    for fmt in ("json", "yaml", "dotenv"):
        response = caller.get(f"/config/export?format={fmt}&prefix={k}")
        assert "export-unreadable" not in response.text and k not in response.text.lower()
        # The export is of what the caller may read: nothing here, so an empty document, not a refusal.
        assert response.status_code == 200, (fmt, response.status_code, response.text)
        assert empty[fmt](response.text), (fmt, response.text)


def test_write_and_rollback_responses_carry_no_value(root):
    k = uid()
    root.put(f"/config/{k}.a", json={"value": "resp-value-one"})
    root.put(f"/config/{k}.a", json={"value": "resp-value-two"})
    for response in (root.post(f"/config/rollback/{k}.a?version=1"), root.delete(f"/config/{k}.a")):
        assert "resp-value" not in response.text and "value" not in response.json()


def test_token_strings_are_not_stored_in_clear(root, server):
    created = make_token(root, [{"path": "*", "capabilities": ["read"]}])
    with server.client(created["token"]) as client:
        client.get("/auth/self")
    time.sleep(0.3)
    needles = [created["token"].encode(), ROOT.encode()]
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{needle[:8]!r}... found in {path.name}"


def test_ws_error_messages_do_not_echo_tokens(server):
    from websockets.sync.client import connect
    bad = "tsr_ws-echo-check-" + uid()
    with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": bad}))
        message = ws.recv(timeout=5)
    assert bad not in message


def test_401_and_403_messages_do_not_echo_tokens(anon, token_client):
    bad = "tsr_http-echo-check-" + uid()
    response = anon.get("/envs", headers={"Authorization": f"Bearer {bad}"})
    assert response.status_code == 401 and bad not in response.text
    caller = token_client([])
    response = caller.get("/audit")
    assert response.status_code == 403 and caller.token_info["token"] not in response.text
