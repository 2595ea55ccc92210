"""No acknowledged write is lost across ``kill -9``."""

from __future__ import annotations

import pytest

from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_durability-root-token-abcdefgh"


def test_acknowledged_writes_survive_kill_9(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, root_token=TOKEN).start()
    acknowledged: dict[str, int] = {}
    try:
        with server.client() as client:
            for i in range(200):
                key = f"durable.k{i % 50}"
                response = client.put(f"/config/{key}", json={"value": i})
                assert response.status_code in (200, 201)
                acknowledged[key] = i
            revision = client.get("/health").json()["revision"]
    finally:
        server.kill9()
    assert revision == 200
    restarted = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "restart.log").start()
    try:
        with restarted.client() as client:
            assert client.get("/health").json()["revision"] == 200
            for key, value in acknowledged.items():
                read = client.get(f"/config/{key}").json()
                assert read["value"] == value and read["version"] == 4
            for i in range(50):
                history = client.get(f"/config/history/durable.k{i}").json()["versions"]
                assert [v["value"] for v in history] == [i + 150, i + 100, i + 50, i]
            # the store still takes writes and keeps counting from where it was
            assert client.put("/config/durable.k0", json={"value": "after"}).json()["revision"] == 201
    finally:
        restarted.stop()
