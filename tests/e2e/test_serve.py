"""``tessera serve`` as a real process on a free 127.0.0.1 port, driven with httpx."""

from __future__ import annotations

import os
import re
import stat
import threading

import pytest

from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_e2e-root-token-abcdefghijklmnop"


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path / "data", root_token=TOKEN).start()
    yield process
    process.stop()


def test_first_start_prints_a_root_token_once_and_keeps_only_its_hash(tmp_path):
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    first.stop()
    match = re.search(r"Root token: (tsr_\S+)", first.log())
    assert match, first.log()
    token = match.group(1)
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())
    assert token.encode() not in raw
    second = ServerProcess(data, log_path=tmp_path / "second.log").start()
    try:
        assert "Root token:" not in second.log()
        with second.client(token) as client:
            assert client.put("/config/x", json={"value": 1}).status_code == 201
        with second.client("tsr_wrong") as client:
            assert client.get("/config/x").status_code == 401
    finally:
        second.stop()


def test_dev_mode_shows_the_same_token_on_every_start(tmp_path):
    data = tmp_path / "data"
    first = ServerProcess(data, extra_args=["--dev"]).start()
    first.stop()
    second = ServerProcess(data, extra_args=["--dev"], log_path=tmp_path / "second.log").start()
    try:
        tokens = re.findall(r"Root token: (tsr_\S+)", first.log() + second.log())
        assert len(tokens) == 2 and tokens[0] == tokens[1]
        assert stat.S_IMODE(os.stat(data / "root-token").st_mode) == 0o600
        with second.client(tokens[0]) as client:
            assert client.get("/config/database.host").json()["value"] == "db.internal"
            assert client.get("/config/database.host").json()["updated_by"] == "config-file"
            assert client.get("/config/database.host").json()["version"] == 1  # re-import changed nothing
    finally:
        second.stop()


def test_config_file_import_at_start(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"service": {"name": "billing", "replicas": 3}, "flag": true}')
    process = ServerProcess(tmp_path / "data", root_token=TOKEN, extra_args=["--config-file", str(config)]).start()
    try:
        with process.client() as client:
            assert client.get("/config/service").json()["value"] == {"name": "billing", "replicas": 3}
            assert client.get("/config/flag").json()["updated_by"] == "config-file"
    finally:
        process.stop()


def test_end_to_end_walkthrough(server):
    with server.client() as client:
        assert client.get("/health").json()["backend"] == "local"
        assert client.put("/config/database.host", json={"value": "db.internal"}).status_code == 201
        assert client.put("/config/database.password", json={"value": "pw", "secret": True}).status_code == 201
        assert client.get("/config/database.host").json()["value"] == "db.internal"
        assert client.get("/config/database").json()["value"] == {"host": "db.internal", "password": "pw"}
        assert client.get("/config/history/database.password").json()["versions"][0].get("value") is None
        assert client.get("/config/nothing").json()["error"]["code"] == "not_found"


def test_concurrent_compare_and_set_increments_lose_nothing(server):
    """8 threads × 50 CAS increments on one key through the HTTP API: final version 401, history exact."""
    with server.client() as client:
        assert client.put("/config/counter", json={"value": 0, "expected_version": 0}).status_code == 201
    acknowledged: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        with server.client() as client:
            done = attempts = 0
            while done < 50 and attempts < 5000:
                attempts += 1
                current = client.get("/config/counter").json()
                response = client.put(
                    "/config/counter", json={"value": current["value"] + 1, "expected_version": current["version"]}
                )
                if response.status_code == 200:
                    done += 1
                    with lock:
                        acknowledged.append(response.json()["version"])
                elif response.status_code != 409 or response.json()["error"]["code"] != "version_conflict":
                    errors.append(response.text)
                    return

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors
    assert len(acknowledged) == 400
    with server.client() as client:
        final = client.get("/config/counter").json()
        assert final["version"] == 401 and final["value"] == 400
        history = client.get("/config/history/counter?limit=1000").json()["versions"]
    versions = [entry["version"] for entry in history]
    assert versions == list(range(401, 0, -1))
    assert sorted(acknowledged) == list(range(2, 402))
    assert [entry["value"] for entry in history] == list(range(400, -1, -1))
