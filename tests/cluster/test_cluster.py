"""Three ``tessera serve --backend aws`` nodes on one emulator behave as one service (issue 11 §2, §4, §5).

Bounded: each scenario runs for a fixed number of seconds or operations (moto over HTTP costs milliseconds per
call, and a PUT through a node makes several), so the counts are modest; what they check holds at any count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.cluster.harness import Cluster
from tests.cluster.linearizability import Op, check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def all_up(cluster: Cluster) -> Iterator[Cluster]:
    """Every test starts and ends with all three nodes serving."""
    for node in cluster.nodes:
        if not node.running:
            node.start()
    yield cluster
    for node in cluster.nodes:
        if not node.running:
            node.start()


# ---------------------------------------------------------------- CAS writers on every node, one node killed
@dataclass
class Recorder:
    """What the clients saw: the history for the checker, and which values were acknowledged or left unknown."""

    ops: list[Op] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)  # value → the version the server said it created
    unknown: set[str] = field(default_factory=set)  # written values whose outcome the client never learned
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)


def cas_client(url: str, headers: dict[str, str], client: int, key: str, until: float, seen: Recorder) -> None:
    """Read, then compare-and-set a value unique to this attempt, until ``until``. Bound to one node: while
    that node is down it keeps trying it (a refused connection never carried a request, so it records nothing)."""
    attempt = 0
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        while time.monotonic() < until:
            start = time.monotonic()
            try:
                read = http.get(f"/config/{key}")
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            end = time.monotonic()
            if read.status_code == 404:
                version, value = 0, None
            elif read.status_code == 200:
                version, value = read.json()["version"], read.json()["value"]
            else:  # a 5xx read tells nothing
                continue
            seen.add(Op.read(client, start, end, value, version))
            attempt += 1
            new = f"c{client}-{attempt}"
            start = time.monotonic()
            try:
                put = http.put(f"/config/{key}", json={"value": new, "expected_version": version})
            except httpx.ConnectError:
                continue  # refused: never sent
            except httpx.TransportError:  # reset or timed out after sending: may or may not have been applied
                seen.add(Op.cas(client, version, new, start, None))
                with seen.lock:
                    seen.unknown.add(new)
                continue
            end = time.monotonic()
            if put.status_code in (200, 201):
                created = put.json()["version"]
                seen.add(Op.cas(client, version, new, start, end, ok=True, version=created))
                with seen.lock:
                    seen.acknowledged[new] = created
            elif put.status_code == 409 and put.json()["error"]["code"] == "version_conflict":
                seen.add(Op.cas(client, version, new, start, end, ok=False, version=put.json()["error"].get("current_version")))
            else:  # a 5xx: the contract's 503s say "nothing changed", but count it as unknown to be safe
                seen.add(Op.cas(client, version, new, start, None))
                with seen.lock:
                    seen.unknown.add(new)


def key_history(url: str, headers: dict[str, str], key: str) -> list[dict]:
    response = httpx.get(f"{url}/config/history/{key}", params={"limit": 1000}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["versions"]))


RUN_SECONDS = 24.0
KILL_AT, RESTART_AT = 7.0, 10.0


def test_cas_writers_on_every_node_with_one_node_killed_and_restarted(all_up: Cluster):
    cluster = all_up
    key = "cluster.counter"
    seen = Recorder()
    begin = time.monotonic()
    until = begin + RUN_SECONDS
    clients = [
        threading.Thread(target=cas_client, args=(node.url, cluster.headers, index, key, until, seen))
        for index, node in enumerate(cluster.nodes * 2)
    ]
    for thread in clients:
        thread.start()
    victim = cluster.node("b")
    time.sleep(max(0.0, begin + KILL_AT - time.monotonic()))
    victim.kill()
    time.sleep(max(0.0, begin + RESTART_AT - time.monotonic()))
    victim.start()
    for thread in clients:
        thread.join(timeout=RUN_SECONDS + 60)
    assert not any(thread.is_alive() for thread in clients)

    versions = key_history(cluster.nodes[0].url, cluster.headers, key)
    numbers = [entry["version"] for entry in versions]
    values = [entry.get("value") for entry in versions]
    acknowledged = seen.acknowledged
    summary = (f"{len(seen.ops)} operations, {len(acknowledged)} acknowledged writes, {len(seen.unknown)} unknown, "
               f"{len(numbers)} versions")
    print(summary)
    assert len(acknowledged) >= 10, summary  # the run did real work through all nodes
    # Versions are contiguous from 1.
    assert numbers == list(range(1, len(numbers) + 1)), summary
    # None applied twice, and nothing appeared that no client wrote.
    assert len(set(values)) == len(values), summary
    assert set(values) <= set(acknowledged) | seen.unknown, summary
    # No acknowledged write lost: each is in the history, at the version its client was told.
    by_value = {entry.get("value"): entry["version"] for entry in versions}
    assert {value: by_value.get(value) for value in acknowledged} == acknowledged, summary
    # And what every client saw fits one order of these operations.
    result = check(seen.ops)
    assert result.ok, f"not linearizable: {summary}; ordered at most {result.longest_prefix}; stuck at {result.stuck_at}"


# ---------------------------------------------------------------- read your write across nodes
def test_a_read_on_another_node_right_after_an_acknowledged_write_returns_it(all_up: Cluster):
    cluster = all_up
    http = httpx.Client(headers=cluster.headers, timeout=10)
    with http:
        for round_number in range(9):
            writer = cluster.nodes[round_number % 3]
            put = http.put(f"{writer.url}/config/cluster.ryw", json={"value": round_number})
            assert put.status_code in (200, 201), put.text
            for reader in cluster.nodes:
                if reader is writer:
                    continue
                got = http.get(f"{reader.url}/config/cluster.ryw")
                assert got.status_code == 200, got.text
                assert (got.json()["value"], got.json()["version"]) == (round_number, put.json()["version"])


# ---------------------------------------------------------------- a client given three endpoints
def test_a_client_with_three_endpoints_works_with_any_one_down_and_fails_fast_with_all_down(all_up: Cluster):
    from tessera import Client, Unavailable

    cluster = all_up
    with Client(cluster.urls, cluster.root_token, timeout=3.0, retries=1, backoff=0.05, last_known_good=False) as client:
        for number, node in enumerate(cluster.nodes):
            node.kill()
            try:
                written = client.put("cluster.failover", number)
                assert client.get("cluster.failover").value == number
                assert client.get("cluster.failover").version == written.version
            finally:
                node.start()
        for node in cluster.nodes:
            node.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            client.get("cluster.failover")
        elapsed = time.monotonic() - started
    message = str(refused.value)
    assert all(f"127.0.0.1:{node.port}" in message for node in cluster.nodes), message
    # Refused connections fail at once; one retry round with a short backoff: seconds, not timeouts.
    assert elapsed < 10, f"took {elapsed:.1f} s to give up: {message}"


# ---------------------------------------------------------------- a watch across a node's death
def test_a_watcher_on_a_killed_node_moves_to_another_and_misses_nothing(all_up: Cluster):
    from tessera import Client

    cluster = all_up
    a, b, c = cluster.nodes
    events: list = []
    arrived = threading.Condition()

    def on_event(event) -> None:
        with arrived:
            events.append(event)
            arrived.notify_all()

    writes = 12
    with Client([b.url, a.url, c.url], cluster.root_token, timeout=3.0, last_known_good=False) as watcher_client, \
            httpx.Client(base_url=a.url, headers=cluster.headers, timeout=10) as writer:
        handle = watcher_client.watch("cluster.watched.*", on_event, on_error=lambda exc: None)
        try:
            written = []
            for number in range(writes):
                if number == writes // 3:
                    b.kill()  # the node the watcher is attached to (the first endpoint)
                if number == 2 * writes // 3:
                    b.start()
                put = writer.put(f"/config/cluster.watched.k{number % 3}", json={"value": number})
                assert put.status_code in (200, 201), put.text
                written.append((put.json()["revision"], f"cluster.watched.k{number % 3}", number))
            deadline = time.monotonic() + 60
            with arrived:
                while len(events) < writes and time.monotonic() < deadline:
                    arrived.wait(timeout=1)
        finally:
            handle.stop()
    assert [(e.revision, e.key, e.value) for e in events] == written


def test_the_harness_can_pause_and_resume_a_node(all_up: Cluster, tmp_path: Path):
    node = all_up.node("c")
    node.pause()
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{node.url}/health", timeout=1)
    finally:
        node.resume()
    assert httpx.get(f"{node.url}/health", timeout=10).status_code == 200


# ---------------------------------------------------------------- Idempotency-Key across a node's death
def test_an_idempotency_key_retried_on_another_node_after_a_kill_that_lost_the_reply_applies_once(all_up: Cluster):
    """The first attempt commits but its reply is lost (the client hangs up, then its node is killed); the
    retry with the same key on another node must answer the first response and change nothing."""
    import socket

    cluster = all_up
    a, b, _ = cluster.nodes
    key = "cluster.idempotent"
    with httpx.Client(headers=cluster.headers, timeout=10) as http:
        assert http.put(f"{a.url}/config/{key}", json={"value": "v1"}).status_code in (200, 201)
        assert http.put(f"{a.url}/config/{key}", json={"value": "v2"}).status_code == 200
        before = len(key_history(a.url, cluster.headers, key))
        request = (f"POST /config/rollback/{key}?version=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {cluster.root_token}\r\nIdempotency-Key: retry-after-kill-1\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as sock:
            sock.sendall(request)  # and never read the reply
        deadline = time.monotonic() + 30
        while len(key_history(b.url, cluster.headers, key)) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(key_history(b.url, cluster.headers, key)) == before + 1, "the first attempt never committed"
        a.kill()
        retried = http.post(f"{b.url}/config/rollback/{key}", params={"version": 1},
                            headers={"Idempotency-Key": "retry-after-kill-1"})
    assert retried.status_code == 200, retried.text
    assert len(key_history(b.url, cluster.headers, key)) == before + 1  # applied once
    assert retried.headers.get("Idempotent-Replayed") == "true"
