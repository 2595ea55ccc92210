"""Read caches stay exact across processes: a read right after an acknowledged write, on another process over
the same data directory, returns that write; `tessera serve --workers 2` serves from both workers, one audit chain."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from tests.servers import ServerProcess

ROOT_TOKEN = "tsr_coherence-root-token-0123456789ab"
pytestmark = pytest.mark.slow


@pytest.fixture
def two_processes(tmp_path):
    data = tmp_path / "data"
    first = ServerProcess(data, root_token=ROOT_TOKEN).start()
    second = first.worker()  # a second process over the directory, as --workers starts them
    yield first, second
    first.stop()
    second.stop()


def test_a_read_on_another_process_right_after_a_write_returns_it(two_processes):
    first, second = two_processes
    with first.client() as a, second.client() as b:
        a.put("/config/svc.n", json={"value": -1}).raise_for_status()
        a.put("/config/svc.other", json={"value": "x"}).raise_for_status()
        for i in range(150):
            assert b.get("/config/svc.n").json()["value"] == i - 1  # warms b's cache with the old value
            assert b.get("/config/svc").json()["value"]["n"] == i - 1  # and its cached subtree
            assert a.put("/config/svc.n", json={"value": i}).status_code == 200
            assert b.get("/config/svc.n").json()["value"] == i, f"process b served a stale value at write {i}"
            assert b.get("/config/svc").json()["value"]["n"] == i
            assert [k["key"] for k in b.get("/config?prefix=svc").json()["keys"]] == ["svc.n", "svc.other"]
        # Deletion and inheritance: a new env's parent, set on a, is what b resolves through at once.
        a.put("/envs/stage", json={"parent": "default"}).raise_for_status()
        assert b.get("/config/svc.other?env=stage").json()["value"] == "x"
        a.put("/envs/base", json={"parent": "default"}).raise_for_status()
        a.put("/config/svc.other?env=base", json={"value": "from-base"}).raise_for_status()
        a.put("/envs/stage", json={"parent": "base"}).raise_for_status()
        assert b.get("/config/svc.other?env=stage").json()["value"] == "from-base"
        a.delete("/config/svc.other?env=base").raise_for_status()
        assert b.get("/config/svc.other?env=stage").json()["value"] == "x"


def test_two_workers_share_one_data_directory(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=ROOT_TOKEN, extra_args=["--workers", "2"]).start()
    try:
        headers = {"Authorization": f"Bearer {ROOT_TOKEN}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            client.put("/config/counter", json={"value": 0}).raise_for_status()

        def increment(_: int) -> int:
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
                done = 0
                while done < 20:
                    current = client.get("/config/counter").json()
                    answer = client.put("/config/counter", json={"value": current["value"] + 1, "expected_version": current["version"]})
                    if answer.status_code in (200, 201):
                        done += 1
                    else:
                        assert answer.json()["error"]["code"] == "version_conflict"
                return done

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert sum(pool.map(increment, range(6))) == 120
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            final = client.get("/config/counter").json()
            assert final["value"] == 120 and final["version"] == 121  # no lost update
            # reads on new connections: each lands on whichever worker accepts it
            prefixes = {httpx.get(server.url + "/config/counter", headers=headers).headers["x-request-id"][:12] for _ in range(200)}
            assert len(prefixes) == 2, "both workers answer"
            # Each worker appends its reads' records to its own request log; either worker lists both
            reads = client.get("/audit", params={"key": "counter", "limit": 1000}).json()["entries"]
            readers = {e["request_id"][:12] for e in reads if e["action"] == "config.read"}
            assert readers == prefixes, "the records of both workers' reads, listed by one"
    finally:
        server.stop()
    from typer.testing import CliRunner

    from tessera.client.cli import app as cli

    result = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ok"], result.output
    # One chain per file: the commits' in tessera.db, one per worker in its request log
    assert set(json.loads(result.output)["chains"]) == {"main", "requests-0", "requests-1"}
