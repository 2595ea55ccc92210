"""Read path of the embedded backend: does a read cost the same whatever the key's history length?

Measures, in one run on this machine:
- in-process ``ConfigService.get`` of a key with 1 version (the baseline) and of a key with N versions;
- the same two reads over HTTP against a real ``tessera serve`` on 127.0.0.1 (keep-alive httpx client);
- a cold read (value cache cleared, so decrypt + store lookup every time).
Prints medians, throughput and the ratios against the 1-version baseline.

    .venv/bin/python -m bench.read_path [--versions 10000] [--reads 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tessera.core.model import ROOT, Scope
from tessera.core.service import ConfigService
from tests.backends import local_backend
from tests.servers import ServerProcess

TOKEN = "tsr_bench-root-token-abcdefghijklmn"


def timed(fn, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def summary(name: str, samples: list[float], baseline: float | None = None) -> str:
    median = statistics.median(samples)
    ratio = f"{median / baseline:5.2f}x" if baseline else "  1.00x"
    return f"{name:<44} median {median * 1e6:9.1f} us   {1 / median:9.0f} ops/s   {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_backend(Path(tmp)) as (store, keys):
        service = ConfigService(store, keys)
        scope = Scope()
        service.put(ROOT, scope, "short.key", "v")
        for i in range(args.versions):
            service.put(ROOT, scope, "long.key", i)
        print(f"in-process, {args.reads} reads each, long key has {args.versions} versions")
        base = timed(lambda: service.get(ROOT, scope, "short.key"), args.reads)
        print(summary("warm get, 1 version (baseline)", base))
        long = timed(lambda: service.get(ROOT, scope, "long.key"), args.reads)
        print(summary(f"warm get, {args.versions} versions", long, statistics.median(base)))

        def cold_get(key: str) -> None:
            service.values = type(service.values)(10)
            keys.clear()
            service.get(ROOT, scope, key)

        cold_base = timed(lambda: cold_get("short.key"), args.reads // 4)
        print(summary("cold get (decrypt), 1 version", cold_base, statistics.median(base)))
        cold_long = timed(lambda: cold_get("long.key"), args.reads // 4)
        print(summary(f"cold get (decrypt), {args.versions} versions", cold_long, statistics.median(cold_base)))
        history = timed(lambda: service.history(ROOT, scope, "long.key", limit=10), args.reads // 4)
        print(summary(f"history limit=10 of {args.versions} versions", history, statistics.median(base)))

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", root_token=TOKEN).start()
        try:
            with server.client() as client:
                client.put("/config/short.key", json={"value": "v"})
                for i in range(min(args.versions, 2000)):
                    client.put("/config/long.key", json={"value": i})
                print(f"\nover HTTP (real server, keep-alive), {args.reads} reads each")
                http_base = timed(lambda: client.get("/config/short.key"), args.reads)
                print(summary("GET, 1 version (baseline)", http_base))
                http_long = timed(lambda: client.get("/config/long.key"), args.reads)
                print(summary(f"GET, {min(args.versions, 2000)} versions", http_long, statistics.median(http_base)))
                health = timed(lambda: client.get("/health"), args.reads)
                print(summary("GET /health (no auth, no key)", health, statistics.median(http_base)))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
