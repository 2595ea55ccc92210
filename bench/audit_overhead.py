"""Read throughput with the audit log on against the same server build with audit off, in one run.

Starts two real ``tessera serve`` processes on 127.0.0.1 from this checkout — one with the audit log on
(the default: every request hash-chained, group-committed to SQLite with ``synchronous=FULL`` and written as a
JSON log line), one with ``TESSERA_AUDIT=off`` (the baseline: the server as it was before audit) — seeds the
same key in each, and reads it with a service token whose policy allows it (so the policy check is on the
path in both). Rounds alternate between the servers so drift hits both alike.

- sequential: one keep-alive client, one request at a time (each request is its own audit batch, so this
  shows the per-request cost of one durable commit);
- concurrent: ``--clients`` client processes for ``--seconds`` each round (requests queue up behind a
  commit and share the next one: group commit).

    .venv/bin/python -m bench.audit_overhead [--clients 8] [--seconds 5] [--rounds 2] [--sequential 500]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers import ServerProcess

ROOT_TOKEN = "tsr_bench-audit-root-token-0123456789"
KEY = "auth.jwt_secret"


def seed(server: ServerProcess) -> str:
    with server.client() as root:
        root.put(f"/config/{KEY}", json={"value": "bench-secret-value", "secret": True}).raise_for_status()
        root.put("/policies/auth-read", json={"rules": [{"path": "auth.*", "capabilities": ["read"]}]}).raise_for_status()
        created = root.post("/auth/tokens", json={"service": "bench", "policies": ["auth-read"], "ttl_seconds": 3600})
        created.raise_for_status()
        return created.json()["token"]


def sequential(server: ServerProcess, token: str, count: int) -> float:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(20):
            client.get(f"/config/{KEY}")
        started = time.perf_counter()
        for _ in range(count):
            response = client.get(f"/config/{KEY}")
            assert response.status_code == 200, response.text
        return count / (time.perf_counter() - started)


def _client_process(url: str, token: str, start_at: float, stop_at: float, results: Any) -> None:
    """One load-generating process: a keep-alive client issuing reads back to back between two instants."""
    done = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        client.get(f"/config/{KEY}")
        while time.time() < start_at:
            client.get(f"/config/{KEY}")  # warm-up until the common start
        while time.time() < stop_at:
            response = client.get(f"/config/{KEY}")
            assert response.status_code == 200, response.text
            done += 1
    results.put(done)


def concurrent(server: ServerProcess, token: str, clients: int, seconds: float) -> float:
    """``clients`` processes (not threads: the load generator must not share one GIL) for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 2.0  # time for the processes to start and warm up
    stop_at = start_at + seconds
    processes = [
        context.Process(target=_client_process, args=(server.url, token, start_at, stop_at, results)) for _ in range(clients)
    ]
    for process in processes:
        process.start()
    total = sum(results.get(timeout=seconds + 60) for _ in processes)
    for process in processes:
        process.join()
    return total / seconds


def audit_entries(server: ServerProcess) -> int:
    with server.client() as root:
        return int(root.get("/audit", params={"limit": 1}).json()["entries"][0]["id"].split(":")[1])


def micro(count: int = 2000) -> None:
    """Per-entry CPU of the audit path, in-process: where the time goes when the fsync is shared."""
    import contextlib
    import io
    import sys
    from datetime import UTC, datetime

    from tessera.core.access_model import AuditEntry
    from tessera.core.audit import entry_hash, link
    from tessera.core.backends.factory import audit_logger
    from tessera.core.backends.sqlite import SQLiteStore
    from tessera.core.backends.sqlite_access import SQLiteAccessStore
    from tessera.handlers.auditing import Auditor

    entry = AuditEntry(ts=datetime.now(UTC), request_id="0" * 32, action="config.read", outcome="allowed", status=200,
                       service="bench", token_id="tok_0123456789abcdef", namespace="default", env="default",
                       key=KEY, version=1, client="127.0.0.1", method="GET", path=f"/config/{KEY}")  # fmt: skip
    auditor = Auditor("r", "GET", f"/config/{KEY}", "127.0.0.1", entry.ts)
    auditor.note("config.read", key=KEY, version=1)

    def per_call(fn: Any, n: int = count) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1e6

    with contextlib.redirect_stdout(io.StringIO()):
        emit = audit_logger()  # powertools binds stdout when created: keep its lines out of the report
        costs = {
            "build the entry from the route's facts": per_call(lambda: auditor.entry(200)),
            "hash it (canonical JSON + SHA-256)": per_call(lambda: entry_hash(entry)),
            "link a batch of 50 (per entry)": per_call(lambda: link("main", [entry] * 50, 0, "0" * 64), count // 50) / 50,
            "powertools JSON log line": per_call(lambda: emit(entry)),
        }
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "t.db")
        access = SQLiteAccessStore(store)
        costs["append (no fsync), batch of 1"] = per_call(lambda: access.append("main", [entry]), 100)
        costs["append (no fsync), batch of 50 (per entry)"] = per_call(lambda: access.append("main", [entry] * 50), 40) / 50
        costs["flush (one fsync)"] = per_call(access.flush, 50)
        store.close()
    print(f"audit path, in-process, per entry ({sys.platform})")
    for name, micros in costs.items():
        print(f"  {name:<44}{micros:>10.1f} us")
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequential", type=int, default=500)
    args = parser.parse_args()
    micro()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("on", "off"):
            (Path(tmp) / name).mkdir()
        on = ServerProcess(Path(tmp) / "on" / "data", root_token=ROOT_TOKEN).start()
        off = ServerProcess(Path(tmp) / "off" / "data", root_token=ROOT_TOKEN, env={"TESSERA_AUDIT": "off"}).start()
        try:
            tokens = {"on": seed(on), "off": seed(off)}
            servers = {"on": on, "off": off}
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name in ("off", "on"):
                    results.setdefault(("sequential", name), []).append(sequential(servers[name], tokens[name], args.sequential))
                for name in ("off", "on"):
                    results.setdefault(("concurrent", name), []).append(
                        concurrent(servers[name], tokens[name], args.clients, args.seconds)
                    )
            entries = audit_entries(on)
        finally:
            on.stop()
            off.stop()
    print(f"GET /config/{KEY} with a service token over HTTP on 127.0.0.1; {args.rounds} rounds, median of rounds")
    print(f"{'mode':<34}{'audit off (baseline)':>22}{'audit on':>14}{'on/off':>9}")
    for mode, label in (("sequential", "sequential, 1 client"), ("concurrent", f"concurrent, {args.clients} clients")):
        base = statistics.median(results[(mode, "off")])
        audited = statistics.median(results[(mode, "on")])
        print(f"{label:<34}{base:>16.0f} GET/s{audited:>9.0f} GET/s{audited / base:>8.2f}x")
    print(f"audit entries written by the audited server: {entries}")


if __name__ == "__main__":
    main()
