"""Rotation against a live ``tessera serve``: the CLI rotates, rewraps (interrupted, then resumed) and retires
in its own processes while the server keeps serving every version and writes under the new key."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

from tests.servers import REPO, TESSERA, ServerProcess

TOKEN = "tsr_live-rotation-root-token-0123456789"


def keys_cli(data, *args: str) -> tuple[int, dict]:
    result = subprocess.run(
        [*TESSERA, "keys", *args, "--data-dir", str(data), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def key_ids(data) -> dict[str, int]:
    with sqlite3.connect(data / "tessera.db") as db:
        return dict(db.execute("SELECT key_id, COUNT(*) FROM versions WHERE envelope IS NOT NULL GROUP BY key_id"))


def test_rotate_rewrap_retire_next_to_a_running_server(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, root_token=TOKEN).start()
    try:
        with server.client() as client:
            expected = {}
            for i in range(24):
                key = f"svc.k{i % 8}"
                body = client.put(f"/config/{key}", json={"value": f"v{i}", "secret": True if i < 8 else None}).json()
                expected[(key, body["version"])] = f"v{i}"

            def all_readable() -> None:
                for (key, version), value in expected.items():
                    response = client.get(f"/config/{key}", params={"version": version})
                    assert response.status_code == 200 and response.json()["value"] == value, response.text

            assert keys_cli(data, "rotate") == (0, {"previous_key_id": "local:k1", "active_key_id": "local:k2"})
            time.sleep(1.1)  # the server re-checks keyring.json at most once a second
            written = client.put("/config/after.rotation", json={"value": "new"}).json()
            expected[("after.rotation", written["version"])] = "new"
            assert key_ids(data) == {"local:k1": 24, "local:k2": 1}

            code, report = keys_cli(data, "rewrap", "--limit", "10", "--batch-size", "4")
            assert code == 0 and report["rewrapped"] == 10 and not report["finished"]
            all_readable()  # half old key, half new: the server reads both
            code, error = keys_cli(data, "retire", "local:k1")
            assert code == 1 and error["error"]["code"] == "key_in_use"
            code, report = keys_cli(data, "rewrap")
            assert code == 0 and report["resumed"] and report["finished"] and report["rewrapped"] == 14
            assert key_ids(data) == {"local:k2": 25}
            code, status = keys_cli(data, "status")
            assert {k["key_id"]: k["versions"] for k in status["keys"]} == {"local:k1": 0, "local:k2": 25}
            assert keys_cli(data, "retire", "local:k1") == (0, {"retired": "local:k1"})
            all_readable()
            assert client.get("/config/svc.k0").json()["value"] == "v16"
    finally:
        server.stop()
    assert "integrity_error" not in server.log()
    # A fresh process (no value or data-key cache): every version opens with k1's material gone from the keyring.
    assert "k1" not in json.loads((data / "keyring.json").read_text())["keys"]
    restarted = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "restarted.log").start()
    try:
        with restarted.client() as client:
            for (key, version), value in expected.items():
                assert client.get(f"/config/{key}", params={"version": version}).json()["value"] == value
    finally:
        restarted.stop()
