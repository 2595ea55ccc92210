"""The SDK and CLI against real servers: two stateless nodes over one store, failover, watch that misses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from tessera import Client as Tessera
from tessera import RevisionCompacted, VersionConflict
from tests.servers import REPO, ServerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
TOKEN = "tsr_sdk-root-token-abcdefghijklmnop"


@pytest.fixture
def two_nodes(tmp_path):
    """Two server processes over one embedded store (a `tessera serve` and a worker of it, as `--workers` starts
    them; a second serve is refused by the data directory's lock): any node serves any request."""
    data = tmp_path / "data"
    first = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "a.log").start()
    second = first.worker()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One server for the tests that need no second node (each server start costs seconds on a busy machine)."""
    process = ServerProcess(tmp_path_factory.mktemp("sdk") / "data", root_token=TOKEN).start()
    yield process
    process.stop()


def test_sdk_round_trip_and_errors(node):
    with Tessera(node.url, TOKEN) as client:
        assert client.put("app.name", "demo").version == 1
        assert client.get("app.name").value == "demo"
        assert client.value("missing.key", default="fallback") == "fallback"
        with pytest.raises(VersionConflict) as info:
            client.put("app.name", "x", expected_version=0)
        assert info.value.code == "version_conflict" and info.value.current_version == 1
        assert [v.version for v in client.history("app.name")] == [1]
        assert client.import_values({"db": {"host": "h"}}).created == 1
        assert "DB_HOST=h" in client.export("dotenv")


def test_failover_and_watch_miss_nothing_across_a_node_kill(two_nodes):
    first, second = two_nodes
    received: list[dict] = []
    with Tessera([first.url, second.url], TOKEN) as client, Tessera(second.url, TOKEN) as writer_b:
        with Tessera(first.url, TOKEN) as writer_a:
            handle = client.watch("counter.*", received.append, poll_timeout=2)
            for i in range(30):
                writer_a.put(f"counter.k{i % 3}", i)
        first.kill9()  # the node the watcher was talking to dies
        for i in range(30, 60):
            writer_b.put(f"counter.k{i % 3}", i)
        assert client.get("counter.k0").value == 57  # reads fail over too
        assert wait_for(lambda: len(received) >= 60, timeout=20)
        handle.stop(timeout=0.1)
    assert [event.value for event in received] == list(range(60))
    revisions = [event.revision for event in received]
    assert revisions == sorted(set(revisions))


def test_cli_get_put_export_and_run(node):
    env = {**os.environ, "TESSERA_URL": node.url, "TESSERA_TOKEN": TOKEN}
    cli = [sys.executable, "-m", "tessera.client.cli"]

    def tessera(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    assert tessera("put", "database.host", "db.internal").returncode == 0
    assert tessera("put", "database.port", "5432").returncode == 0
    from_stdin = subprocess.run([*cli, "put", "database.password", "-", "--secret"], input="pw-123\n", cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert tessera("get", "database.port").stdout.strip() == "5432"
    body = json.loads(tessera("get", "database.host", "--json").stdout)
    assert body["value"] == "db.internal" and body["version"] == 1
    assert "DATABASE_PASSWORD=pw-123" in tessera("export", "--format", "dotenv").stdout
    run = tessera("run", "--prefix", "database", "--", sys.executable, "-c",
                  "import os; print(os.environ['DATABASE_HOST'], os.environ['DATABASE_PORT'])")
    assert run.returncode == 0 and run.stdout.strip() == "db.internal 5432"
    missing = tessera("get", "nope")
    assert missing.returncode == 3 and "not_found" in missing.stderr
    conflict = tessera("put", "database.host", "x", "--expected-version", "0")
    assert conflict.returncode == 5 and "version_conflict" in conflict.stderr


def test_watch_resyncs_after_compaction(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=TOKEN, env={"TESSERA_CHANGE_LOG_RETENTION": "10"}).start()
    try:
        with Tessera(server.url, TOKEN) as client:
            for i in range(40):
                client.put("churn", i)
            resynced: list[int] = []
            events: list = []
            done = threading.Event()

            def on_error(exc: BaseException) -> None:
                if isinstance(exc, RevisionCompacted):
                    resynced.append(exc.current_revision)

            handle = client.watch("churn", lambda e: (events.append(e), done.set()), since=1, poll_timeout=1,
                                  on_error=on_error)
            assert wait_for(lambda: bool(resynced), timeout=10)
            client.put("churn", "after")
            assert done.wait(10)
            handle.stop(timeout=0.1)
            assert resynced == [40] and [e.value for e in events] == ["after"]
    finally:
        server.stop()
