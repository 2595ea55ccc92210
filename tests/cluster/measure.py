"""Numbers for docs/scaling.md, measured on the cluster harness (emulator + three nodes on this machine).

    python -m tests.cluster.measure [--seconds 20]

1. Commits/s through three nodes: two writers per node, each on its own keys (no compare-and-set losses; they
   still contend on the one revision counter), for ``--seconds``.
2. What a killed node costs a client: ``tessera.Client`` given the three endpoints, the first one killed: per-write
   latency (median, p90) against the same with all nodes up, and the first write after the kill.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.cluster.harness import Cluster


def writers_throughput(cluster: Cluster, seconds: float, per_node: int = 2) -> tuple[int, float, list[float]]:
    done: list[float] = []
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def writer(url: str, number: int) -> None:
        with httpx.Client(base_url=url, headers=cluster.headers, timeout=30) as http:
            n = 0
            while time.monotonic() < until:
                started = time.monotonic()
                response = http.put(f"/config/measure.w{number}.k{n % 5}", json={"value": n})
                n += 1
                if response.status_code in (200, 201):
                    with lock:
                        done.append(time.monotonic() - started)

    threads = [threading.Thread(target=writer, args=(node.url, i * 10 + j)) for i, node in enumerate(cluster.nodes)
               for j in range(per_node)]
    begin = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(done), time.monotonic() - begin, done


def failover_latency(cluster: Cluster, writes: int = 30) -> dict[str, float]:
    from tessera import Client

    def timed(client: Client, key: str) -> list[float]:
        out = []
        for n in range(writes):
            started = time.monotonic()
            client.put(key, n)
            out.append(time.monotonic() - started)
        return out

    with Client(cluster.urls, cluster.root_token, timeout=5.0, last_known_good=False) as client:
        healthy = timed(client, "measure.failover.healthy")
    first = cluster.nodes[0]
    first.kill()
    try:
        with Client(cluster.urls, cluster.root_token, timeout=5.0, last_known_good=False) as client:
            started = time.monotonic()
            client.put("measure.failover.first", 0)
            first_write = time.monotonic() - started
            degraded = timed(client, "measure.failover.degraded")
    finally:
        first.start()

    def p90(values: list[float]) -> float:
        return sorted(values)[int(0.9 * (len(values) - 1))]

    return {
        "healthy_p50_ms": 1000 * statistics.median(healthy), "healthy_p90_ms": 1000 * p90(healthy),
        "first_write_after_kill_ms": 1000 * first_write,
        "degraded_p50_ms": 1000 * statistics.median(degraded), "degraded_p90_ms": 1000 * p90(degraded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with Cluster(Path(tempfile.mkdtemp(prefix="tessera-measure-"))) as cluster:
        count, elapsed, latencies = writers_throughput(cluster, args.seconds)
        print(f"commits through 3 nodes, 6 writers: {count} in {elapsed:.1f} s = {count / elapsed:.1f}/s; "
              f"PUT latency median {1000 * statistics.median(latencies):.0f} ms", flush=True)
        emulator_cpu = cluster.emulator.cpu_seconds()
        print(f"emulator CPU so far: {emulator_cpu:.1f} s", flush=True)
        for name, value in failover_latency(cluster).items():
            print(f"{name}: {value:.0f}", flush=True)


if __name__ == "__main__":
    main()
