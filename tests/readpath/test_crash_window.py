"""kill -9 under reads and writes: every acknowledged write survives with its audit record, and the chain verifies.

(kill -9 alone cannot show the 100 ms window for reads' records: the page cache survives the process. Flush
failures are injected in tests/access/test_audit_log.py and tests/access/test_http.py instead.)"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.servers import ServerProcess

ROOT_TOKEN = "tsr_crash-window-root-token-0123456789"
pytestmark = pytest.mark.slow


def test_kill_9_under_load_loses_no_acknowledged_write_nor_its_record(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, root_token=ROOT_TOKEN).start()
    headers = {"Authorization": f"Bearer {ROOT_TOKEN}"}
    acknowledged: dict[str, int] = {}
    stop = threading.Event()

    def writer(name: str) -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    answer = client.put(f"/config/crash.{name}", json={"value": i})
                except httpx.HTTPError:
                    return
                if answer.status_code in (200, 201):
                    acknowledged[name] = answer.json()["version"]

    def reader() -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as client:
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    client.get("/config/crash")
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    server.kill9()
    stop.set()
    for thread in threads:
        thread.join(10)
    assert acknowledged, "no write was acknowledged before the kill"

    server = ServerProcess(data, root_token=ROOT_TOKEN).start()
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            for name, version in acknowledged.items():
                latest = client.get(f"/config/crash.{name}").json()
                assert latest["version"] >= version, f"acknowledged write {name} v{version} lost"
                records = client.get(f"/audit?key=crash.{name}&limit=1000").json()["entries"]
                recorded = {e["version"] for e in records if e["action"] == "config.write" and e["outcome"] == "allowed"}
                assert set(range(1, latest["version"] + 1)) <= recorded, f"a committed version of {name} has no record"
    finally:
        server.stop()
    from typer.testing import CliRunner

    from tessera.client.cli import app as cli

    result = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(data), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ok"], result.output
