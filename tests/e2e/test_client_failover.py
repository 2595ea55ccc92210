"""Failover, write safety and the last-known-good store, sync and async, against a real ``tessera serve``.

Three endpoints are three ports of ``SwitchableProxy`` in front of one server (three real nodes over one store
are the cluster harness's job): each port can refuse connections, reset them, hang (time out) or forward.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
import uuid

import pytest

from tessera import AsyncClient, Client, Unavailable, WriteOutcomeUnknown
from tests.e2e.sdk_fixtures import TOKEN, flavour
from tests.netfakes import SwitchableProxy
from tests.servers import REPO, ServerProcess

pytestmark = pytest.mark.slow
FAST = {"timeout": 1.0, "backoff": 0.02, "max_backoff": 0.1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("failover") / "data", root_token=TOKEN).start()
    yield process
    process.stop()


@pytest.fixture
def nodes(server):
    proxies = [SwitchableProxy(server.port) for _ in range(3)]
    yield proxies
    for proxy in proxies:
        proxy.close()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def audit_reads(server: ServerProcess, key: str) -> int:
    with server.client() as admin:
        entries = admin.get("/audit", params={"key": key, "limit": 1000}).json()["entries"]
    return sum(1 for entry in entries if entry["action"] == "config.read")


@pytest.mark.parametrize("mode", ["refuse", "reset", "hang"])
def test_three_endpoints_keep_working_with_any_one_down(make, nodes, mode):
    client = make([node.url for node in nodes], **FAST)
    key = unique("ha.")
    client.put(key, 0)
    for down in range(3):
        nodes[down].mode = mode
        value = down + 1
        assert client.put(key, value).version == value + 1  # writes carry an Idempotency-Key: safe to move on
        assert client.get(key).value == value
        nodes[down].mode = "forward"


def test_all_nodes_down_serves_last_known_good_else_names_every_node(make, nodes):
    client = make([node.url for node in nodes], **FAST)
    key, never_read = unique("lkg."), unique("lkg.")
    client.put(key, "kept")
    assert client.get(key).stale is False
    for node in nodes:
        node.mode = "refuse"
    stale = client.get(key)
    assert (stale.value, stale.version, stale.stale) == ("kept", 1, True)
    assert client.value(key) == "kept"
    with pytest.raises(Unavailable) as info:
        client.get(never_read)
    message = str(info.value)
    assert all(f"{node.url} (connection refused)" in message for node in nodes), message
    assert info.value.nodes == [node.url for node in nodes]
    without = make([node.url for node in nodes], last_known_good=False, **FAST)
    with pytest.raises(Unavailable):
        without.get(key)
    with pytest.raises(Unavailable):  # a write is never "served" from memory
        client.put(key, "new")


def test_last_known_good_file_is_private_and_holds_no_secret(make, nodes, tmp_path):
    path = tmp_path / "app" / "tessera-lkg.json"
    path.parent.mkdir()
    plain, secret = unique("file."), unique("file.")
    writer = make(nodes[0].url, **FAST)
    writer.put(plain, [1, 2, 3])
    writer.put(secret, "s3cret-value-xyz", secret=True)
    reader = make(nodes[0].url, last_known_good=str(path), **FAST)
    assert reader.get(plain).value == [1, 2, 3] and reader.get(secret).value == "s3cret-value-xyz"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert plain in text and secret not in text and "s3cret" not in text
    nodes[0].mode = "refuse"
    restarted = make(nodes[0].url, last_known_good=path, **FAST)  # a new process during the outage, same file
    assert restarted.get(plain).stale is True and restarted.get(plain).value == [1, 2, 3]
    with pytest.raises(Unavailable):
        restarted.get(secret)  # secrets never went to disk


def test_a_write_moves_to_another_node_only_when_safe(make, nodes):
    hung, healthy = nodes[0], nodes[1]
    hung.mode = "hang"  # takes the request, never answers: the outcome is unknown
    key = unique("safe.")

    def keys_sent(proxy: SwitchableProxy) -> list[str]:
        return [r.headers.get("idempotency-key", "") for r in proxy.requests if r.method == "PUT" and key in r.path]

    assert make([hung.url, healthy.url], **FAST).put(key, "with-key").version == 1
    make([hung.url, healthy.url], **FAST).put(key, "again")  # a new call (and new connections): a new key
    first, second = keys_sent(hung)
    assert keys_sent(healthy) == [first, second]  # each call's retry on the next node reuses its key
    assert first != second and uuid.UUID(first) and uuid.UUID(second)

    bare = make([hung.url, healthy.url], idempotency_keys=False, **FAST)
    before = len([r for r in healthy.requests if r.method == "PUT"])
    with pytest.raises(WriteOutcomeUnknown) as info:
        bare.put(key, "no-key")
    assert "may or may not have been applied" in str(info.value) and info.value.nodes == [hung.url]
    assert len([r for r in healthy.requests if r.method == "PUT"]) == before  # never resent
    assert "idempotency-key" not in hung.requests[-1].headers
    # compare-and-set is safe to resend; reads always are
    assert bare.put(key, "cas", expected_version=2).version == 3
    assert bare.get(key).value == "cas"
    # a refused connection never carried the write: moving on is safe even without a key
    hung.mode = "refuse"
    assert bare.put(key, "refused-first").version == 4


def test_concurrent_gets_of_one_key_share_one_request(make, server):
    client = make(server.url)
    key = unique("flight.")
    client.put(key, "v")
    callers = 16
    if flavour(client) == "sync":
        barrier = threading.Barrier(callers)
        results: list = []

        def read() -> None:
            barrier.wait()
            results.append(client.get(key).value)

        threads = [threading.Thread(target=read) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        allowed = 4  # threads that arrive after the first read finished start a new one
    else:
        async def many() -> list:
            async with AsyncClient(server.url, TOKEN) as direct:
                entries = await asyncio.gather(*(direct.get(key) for _ in range(callers)))
            return [entry.value for entry in entries]

        results = asyncio.run(many())
        allowed = 1  # every coroutine joins before the one request completes
    assert results == ["v"] * callers
    reads = 0
    for _ in range(50):  # read records reach the audit log within 100 ms
        reads = audit_reads(server, key)
        if reads:
            break
    assert 1 <= reads <= allowed


def test_cli_fails_over_and_reports_every_node_when_all_are_down(nodes, server):
    key = unique("cli.")
    with Client(server.url, TOKEN) as client:
        client.put(key, "from-cli")
    env = {**os.environ, "TESSERA_URL": ",".join(node.url for node in nodes), "TESSERA_TOKEN": TOKEN}
    nodes[0].mode = "refuse"

    def tessera(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tessera.client.cli", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)

    got = tessera("get", key, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["value"] == "from-cli"
    for node in nodes:
        node.mode = "refuse"
    down = tessera("get", key)
    assert down.returncode == 6  # unavailable
    (line,) = down.stderr.strip().splitlines()
    assert line.startswith("error: unavailable:") and all(node.url in line for node in nodes)


def test_client_repr_never_shows_the_token():
    client = Client("http://127.0.0.1:9", "tsr_do-not-print-me-0123456789")
    assert "tsr_" not in repr(client)
    client.close()
