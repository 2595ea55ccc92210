"""Canary sweep against a real ``tessera serve`` process on 127.0.0.1.

A secret holds a unique canary. Then every endpoint that exists is called — the specific scenarios below,
plus every GET route the server's OpenAPI document lists (so routes added later are swept too) — as the
root token and, once tokens and policies exist, as a token that may list but not read. The canary may
appear only in authorized ``GET /config/{key}`` and export responses, and never in the server's captured
stdout/stderr, nor in any form (JSON-escaped, base64, hex, UTF-16).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3

import httpx
import pytest

from tests.secrets.helpers import find_leaks, sqlite_files
from tests.servers import ServerProcess

TOKEN = "tsr_canary-root-token-0123456789abcdef"
# Routes whose authorized GET may carry a secret value (everything else never may).
VALUE_ROUTES = {"/config/{key}", "/config/export"}


class Sweep:
    def __init__(self, canary: str) -> None:
        self.canary = canary
        self.checked: list[str] = []
        self.authorized: list[str] = []

    def blob(self, response: httpx.Response) -> bytes:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items()).encode()
        return headers + b"\n" + response.content

    def clean(self, label: str, response: httpx.Response) -> httpx.Response:
        leaks = find_leaks(self.blob(response), self.canary)
        assert not leaks, f"{label} leaked the canary ({response.status_code}): {leaks}"
        self.checked.append(label)
        return response

    def carries(self, label: str, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 200, (label, response.text)
        assert self.canary.encode() in response.content, f"{label}: an authorized read should return the value"
        self.authorized.append(label)
        return response


def route_exists(client: httpx.Client, method: str, path: str) -> bool:
    """Asked of the OpenAPI document, not by calling the route (``GET /watch`` would hold the request)."""
    return method.lower() in client.get("/openapi.json").json()["paths"].get(path, {})


def websocket_messages(url: str, token: str, subscribe: dict) -> list[str]:
    from websockets.sync.client import connect

    messages: list[str] = []
    with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5) as socket:
        socket.send(json.dumps({"type": "auth", "token": token}))
        socket.send(json.dumps({"type": "subscribe", **subscribe}))
        try:
            while True:
                messages.append(socket.recv(timeout=0.7))
        except TimeoutError:
            pass
    return messages


def sweep_server(server: ServerProcess, canary: str) -> Sweep:
    """The whole sweep against one running server; then its captured stdout/stderr."""
    sweep = Sweep(canary)
    try:
        with server.client() as root:
            run_root_sweep(root, sweep, server)
            run_limited_token_sweep(root, sweep, server)
            run_openapi_sweep(root, sweep)
    finally:
        server.stop()
    log = server.log()
    assert not find_leaks(log.encode(), canary), "the canary reached the server's logs"
    assert TOKEN not in log
    assert len(sweep.checked) > 60 and len(sweep.authorized) >= 6
    return sweep


@pytest.mark.slow
@pytest.mark.aws
def test_canary_sweep_on_the_aws_backend(tmp_path):
    """The same sweep with ``tessera serve --backend aws`` on a moto_server; then every S3 object version and
    DynamoDB item the run left behind is searched too."""
    from tests.aws.support import shared_server
    from tests.secrets.helpers import raw_storage

    target = shared_server().target()
    canary = "canary-" + secrets.token_hex(16)
    sweep_server(ServerProcess(tmp_path / "data", root_token=TOKEN, env=target.env()).start(), canary)
    store = target.store()
    blobs = raw_storage(store)
    assert any(name.startswith("s3://") for name in blobs) and any(name.startswith("ddb:") for name in blobs)
    for where, blob in blobs.items():
        assert not find_leaks(blob, canary), where


def test_canary_sweep(tmp_path):
    data = tmp_path / "data"
    canary = "canary-" + secrets.token_hex(16)
    sweep = sweep_server(ServerProcess(data, root_token=TOKEN).start(), canary)
    assert not find_leaks(b"".join(sqlite_files(data).values()), canary)

    # Tampering on the real server: 500 integrity_error, and a log line that names the failure, not the value.
    with sqlite3.connect(data / "tessera.db") as db:
        envelope = db.execute("SELECT envelope FROM versions WHERE key = 'db.password' AND version = 1").fetchone()[0]
        tampered = bytearray(envelope)
        tampered[-5] ^= 0x20
        db.execute("UPDATE versions SET envelope = ? WHERE key = 'db.password' AND version = 1", (bytes(tampered),))
    restarted = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "restarted.log").start()
    try:
        with restarted.client() as root:
            response = sweep.clean("tampered read", root.get("/config/db.password", params={"version": 1}))
            assert response.status_code == 500 and response.json()["error"]["code"] == "integrity_error"
    finally:
        restarted.stop()
    assert any("ERROR" in line and "integrity_error" in line for line in restarted.log().splitlines()), restarted.log()
    assert not find_leaks(restarted.log().encode(), canary)


def run_root_sweep(root: httpx.Client, sweep: Sweep, server: ServerProcess) -> None:
    canary = sweep.canary
    clean, carries = sweep.clean, sweep.carries
    prod = {"env": "prod"}
    assert clean("put env", root.put("/envs/prod", json={"parent": "default"})).status_code == 201
    # The secret, a second version, an override in prod, and plain neighbours.
    assert clean("create secret", root.put("/config/db.password", json={"value": canary, "secret": True})).status_code == 201
    assert clean("update secret", root.put("/config/db.password", json={"value": canary + "-v2"})).status_code == 200
    clean("unchanged write", root.put("/config/db.password", json={"value": canary + "-v2"}))
    clean("prod override", root.put("/config/db.password", params=prod, json={"value": canary + "-prod", "secret": True}))
    clean("plain key", root.put("/config/db.host", json={"value": "db.internal"}))
    clean("plain list value", root.put("/config/app.hosts", json={"value": ["a", "b"]}))
    clean("rollback", root.post("/config/rollback/db.password", params={"version": 1}))

    # Authorized reads and exports carry the value.
    carries("read", root.get("/config/db.password"))
    carries("read version 2", root.get("/config/db.password", params={"version": 2}))
    carries("read prod", root.get("/config/db.password", params=prod))
    carries("subtree", root.get("/config/db"))
    for fmt in ("json", "yaml", "dotenv"):
        carries(f"export {fmt}", root.get("/config/export", params={"format": fmt}))
    carries("export prod", root.get("/config/export", params=prod))

    # Everything else never does.
    clean("list", root.get("/config"))
    clean("list prefix", root.get("/config", params={"prefix": "db"}))
    clean("list prod", root.get("/config", params=prod))
    clean("history", root.get("/config/history/db.password"))
    clean("history prod", root.get("/config/history/db.password", params=prod))
    clean("history limit", root.get("/config/history/db.password", params={"limit": 1, "before": 3}))
    clean("export other prefix", root.get("/config/export", params={"prefix": "app"}))
    clean("diff", root.get("/diff", params={"from": "default", "to": "prod"}))
    clean("diff reverse", root.get("/diff", params={"from": "prod", "to": "default", "prefix": "db"}))
    explained = carries("read explain", root.get("/config/db.password", params={"explain": "true", **prod}))
    assert not find_leaks(json.dumps(explained.json()["explain"]).encode(), canary), "explain's chain showed a secret value"
    clean("explain missing", root.get("/config/db.nothing", params={"explain": "true"}))
    assert clean("put env staging", root.put("/envs/staging", json={"parent": "default"})).status_code == 201
    moved = clean("promote stale", root.post("/config/promote", params={"from": "prod", "to": "staging"}, json={"expected": {}}))
    assert moved.status_code == 409 and moved.json()["error"]["keys"], moved.text
    expected = {item["key"]: item["to_version"] for part in ("added", "removed", "changed")
                for item in root.get("/diff", params={"from": "prod", "to": "staging"}).json()[part]}
    assert clean("promote", root.post("/config/promote", params={"from": "prod", "to": "staging"}, json={"expected": expected})).status_code == 200
    carries("read promoted", root.get("/config/db.password", params={"env": "staging"}))
    clean("envs", root.get("/envs"))
    clean("health", root.get("/health"))
    assert route_exists(root, "get", "/watch")
    clean("watch", root.get("/watch", params={"since": 0, "timeout": 1}))
    clean("watch prefix", root.get("/watch", params={"since": 0, "keys": "db.*", "timeout": 1, "env": "prod"}))
    messages = websocket_messages(server.url, TOKEN, {"keys": ["*"], "since": 0})
    assert any('"event"' in m for m in messages), messages
    for message in messages:
        assert not find_leaks(message.encode(), canary), message
    sweep.checked.append("websocket")

    # Error paths: nothing a client sent, nor anything stored, is echoed back.
    errors = {
        "secret flag flip": root.put("/config/db.password", json={"value": canary, "secret": False}),
        "object value": root.put("/config/db.password", json={"value": {"nested": canary}}),
        "version conflict": root.put("/config/db.password", json={"value": canary, "expected_version": 99}),
        "bad type": root.put("/config/db.password", json={"value": canary, "secret": "yes"}),
        "bad expected_version": root.put("/config/db.password", json={"value": canary, "expected_version": canary}),
        "malformed json": root.put("/config/db.password", content=b'{"value": "' + canary.encode() + b'"'),
        "not an object": root.put("/config/db.password", content=json.dumps([canary]).encode()),
        "too large value": root.put("/config/db.password", json={"value": canary * 3000}),
        "too large body": root.put("/config/db.password", json={"value": canary * 40_000}),
        "invalid key": root.put("/config/db..password", json={"value": canary}),
        "key conflict": root.put("/config/db.password.sub", json={"value": canary}),
        "reserved key": root.put("/config/history", json={"value": canary}),
        "missing value": root.put("/config/db.password", json={"secret": True, "note": canary}),
        "unknown env": root.put("/config/db.password", params={"env": "nope"}, json={"value": canary}),
        "unknown version": root.get("/config/db.password", params={"version": 999}),
        "bad version": root.get("/config/db.password", params={"version": "x"}),
        "subtree version": root.get("/config/db", params={"version": 1}),
        "missing key": root.get("/config/nothing.here"),
        "rollback unknown": root.post("/config/rollback/db.password", params={"version": 999}),
        "rollback missing": root.post("/config/rollback/db.password"),
        "bad import": root.post("/config/import", json={"values": {"db": {"password": {"x": canary}}}}),
        "import bad format": root.post("/config/import", json={"format": "dotenv", "content": f"{canary}\n=oops"}),
        "import object secret": root.post("/config/import", json={"values": {"db.password": canary}, "secrets": [canary]}),
        "bad diff": root.get("/diff", params={"from": "default"}),
        "no route": root.get(f"/nothing/{canary}"),
        "unauthenticated": httpx.get(server.url + "/config/db.password"),
        "wrong token": httpx.get(server.url + "/config/db.password", headers={"Authorization": "Bearer tsr_wrong"}),
    }
    for label, response in errors.items():
        clean(label, response)
        assert response.status_code >= 400 or label.startswith(("bad import", "import")), (label, response.text)
        if response.status_code >= 400:
            assert set(response.json()) == {"error"}, (label, response.text)
    assert errors["secret flag flip"].json()["error"]["code"] == "secret_flag_immutable"
    assert errors["object value"].json()["error"]["code"] == "invalid_value"
    assert errors["too large value"].status_code == 413

    # The deletion path last: the tombstone's responses and the 404 after it.
    clean("delete", root.delete("/config/db.password", params=prod))
    carries("read after prod delete", root.get("/config/db.password", params=prod))  # falls through to default
    clean("history after delete", root.get("/config/history/db.password", params=prod))


def run_limited_token_sweep(root: httpx.Client, sweep: Sweep, server: ServerProcess) -> None:
    """A token that may list and see history, but not read: the value must never reach it."""
    clean = sweep.clean
    assert route_exists(root, "post", "/auth/tokens")
    rule = {"path": "db.*", "capabilities": ["list", "history"]}
    assert clean("put policy", root.put("/policies/lister", json={"rules": [rule]})).status_code in (200, 201)
    created = clean("create token", root.post("/auth/tokens", json={"service": "lister-svc", "policies": ["lister"]}))
    token = created.json()["token"]
    clean("list tokens", root.get("/auth/tokens"))
    clean("list policies", root.get("/policies"))
    clean("get policy", root.get("/policies/lister"))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as limited:
        assert clean("limited read", limited.get("/config/db.password")).status_code == 403
        assert clean("limited version", limited.get("/config/db.password", params={"version": 1})).status_code == 403
        subtree = clean("limited subtree", limited.get("/config/db"))
        if subtree.status_code == 200:
            assert "db.password" in subtree.json().get("redacted", [])
        clean("limited export", limited.get("/config/export"))
        clean("limited export dotenv", limited.get("/config/export", params={"format": "dotenv"}))
        clean("limited list", limited.get("/config", params={"prefix": "db"}))
        clean("limited history", limited.get("/config/history/db.password"))
        clean("limited diff", limited.get("/diff", params={"from": "default", "to": "prod"}))
        clean("limited self", limited.get("/auth/self"))
        clean("limited watch", limited.get("/watch", params={"since": 0, "timeout": 1}))
        clean("limited write", limited.put("/config/db.password", json={"value": sweep.canary}))
        messages = websocket_messages(server.url, token, {"keys": ["*"], "since": 0})
        for message in messages:
            assert not find_leaks(message.encode(), sweep.canary), message
    clean("explain", root.post("/auth/explain", json={"token_id": created.json()["id"], "key": "db.password"}))
    clean("explain service", root.post("/auth/explain", json={"service": "lister-svc", "key": "db.password", "capability": "list"}))
    clean("explain error", root.post("/auth/explain", json={"service": "lister-svc", "key": sweep.canary + "..x"}))
    clean("limited explain", httpx.post(server.url + "/auth/explain", json={"service": "lister-svc", "key": "db.password"},
                                        headers={"Authorization": f"Bearer {token}"}))
    clean("put throwaway policy", root.put("/policies/throwaway", json={"rules": [{"path": "x", "capabilities": ["read"]}]}))
    clean("delete policy", root.delete("/policies/throwaway"))
    throwaway = clean("create throwaway token", root.post("/auth/tokens", json={"service": "tmp", "policies": []}))
    clean("revoke token", root.delete(f"/auth/tokens/{throwaway.json()['id']}"))
    clean("revoked token", httpx.get(server.url + "/config/db.password", headers={"Authorization": f"Bearer {throwaway.json()['token']}"}))
    audit = clean("audit", root.get("/audit", params={"limit": 1000}))
    assert any(e.get("key") == "db.password" for e in audit.json()["entries"])  # the sweep's reads are in there
    clean("audit by key", root.get("/audit", params={"key": "db.password"}))


# Every (method, route) the sweep calls on purpose. A route the server declares that is not here fails the
# sweep (GET routes are swept generically anyway): extend the scenarios above when you add one.
SWEPT = {
    ("get", "/health"), ("get", "/config"), ("get", "/config/export"), ("post", "/config/import"),
    ("get", "/config/history/{key}"), ("post", "/config/rollback/{key}"), ("post", "/config/promote"), ("get", "/config/{key}"),
    ("put", "/config/{key}"), ("delete", "/config/{key}"), ("get", "/envs"), ("put", "/envs/{name}"),
    ("get", "/diff"), ("get", "/auth/tokens"), ("post", "/auth/tokens"), ("delete", "/auth/tokens/{token_id}"),
    ("get", "/auth/self"), ("post", "/auth/explain"), ("get", "/policies"), ("get", "/policies/{name}"),
    ("put", "/policies/{name}"), ("delete", "/policies/{name}"), ("get", "/audit"), ("get", "/watch"),
}  # fmt: skip


def run_openapi_sweep(root: httpx.Client, sweep: Sweep) -> None:
    """Every GET route the server declares, with its path parameters filled in, as the root token; and
    every route at all must be one the scenarios above exercise."""
    spec = root.get("/openapi.json").json()
    declared = {(method, path) for path, operations in spec["paths"].items() for method in operations}
    unswept = sorted(declared - SWEPT - {(m, p) for m, p in declared if m == "get"})
    assert not unswept, f"routes the canary sweep does not call yet (add them to the scenarios): {unswept}"
    fill = {"key": "db.password", "name": "prod", "id": "nonexistent"}
    for template, operations in spec["paths"].items():
        if "get" not in operations or template in VALUE_ROUTES:
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: fill.get(m.group(1), "x"), template)
        sweep.clean(f"openapi GET {template}", root.get(path, params={"timeout": 1, "since": 0}))
