"""``make bench`` / ``make bench-quick``: every target of issue 8 side by side in one run, one table.

Starts each target on 127.0.0.1 on a free port (the bare ASGI app, a FastAPI route, etcd 3.4 through its HTTP
gateway, ``tessera serve`` with 1 and 2 workers, audit on and off), drives it with wrk (2 threads, 32
connections) or, where wrk is absent, the built-in asyncio load generator, and prints one table of req/s,
p50/p99 and the ratios against the baselines measured in the same run, each beside issue 8's target
(pass/miss: the harness reports, it never fails on a number). Then writes its section of docs/benchmarks.md and
docs/bench.png (full mode; ``--docs DIR`` elsewhere, ``--no-docs`` not at all).

Reads go through a service token whose policy the server evaluates (allow and deny rules), as real clients
read; a root-token row is kept for comparison. Every phase has a time cap, every process started is stopped
(process groups, also on Ctrl-C), temp dirs are removed.

    .venv/bin/python -m bench.run                 # full: ~8 s per target, 10,000 watchers, 100,000 keys
    .venv/bin/python -m bench.run --quick         # about a minute; etcd/wrk rows say "absent" when not installed
    .venv/bin/python -m bench.run --only reads,watch --seconds 4 --no-docs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import targets as t
from bench.loadgen import LoadResult, Request, run_load, wrk_available
from bench.procs import REPO, Processes, raise_nofile_limit, wait_idle
from bench.report import Measure, Results, chart, markdown_table, text_table, write_section
from bench.watchers import watch_latency

PHASES = ["baselines", "reads", "writes", "watch", "load", "workers", "audit", "versions", "keys", "list", "parked", "lambda"]


@dataclass
class Plan:
    quick: bool
    seconds: float
    warmup: float
    connections: int = 32
    threads: int = 2
    versions: tuple[int, int] = (10, 10_000)
    keys: tuple[int, int] = (100, 100_000)
    listing: tuple[int, int] = (2_000, 20_000)
    parked: int = 10_000
    hold: int = 200
    latency_samples: int = 200
    cas_clients: int = 8
    lambda_runs: int = 7

    @classmethod
    def make(cls, quick: bool, seconds: float | None) -> Plan:
        if quick:
            return cls(True, seconds or 1.0, 0.0 if wrk_available() else 0.3, versions=(10, 500), keys=(100, 1_000),
                       listing=(100, 1_000), parked=100, hold=20, latency_samples=10, lambda_runs=1)  # fmt: skip
        return cls(False, seconds or 8.0, 1.0)


class PhaseTimeout(Exception):
    pass


@contextlib.contextmanager
def phase(results: Results, name: str, cap: float, keys: list[tuple[str, str]]) -> Iterator[None]:
    """Runs a phase under a time cap (SIGALRM); a failure marks that phase's unmeasured rows and the run goes on."""

    def expire(signum: int, frame: object) -> None:
        raise PhaseTimeout(f"phase {name} passed its cap of {cap:.0f}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, cap)
    started = time.monotonic()
    print(f"[bench] {name} …", file=sys.stderr, flush=True)
    try:
        yield
    except Exception as error:  # noqa: BLE001 - one phase failing (PhaseTimeout included) must not lose the others
        message = f"error: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
        print(f"[bench] {name} failed: {error}", file=sys.stderr, flush=True)
        for key, label in keys:
            if key not in results.measures or not results.measures[key].measured:
                results.add(Measure(key, label, note=message))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        print(f"[bench] {name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, plan: Plan, procs: Processes, tmp: Path, results: Results) -> None:
        self.plan, self.procs, self.tmp, self.results = plan, procs, tmp, results
        self.use_wrk = wrk_available()
        self.has_etcd = t.etcd_available()

    # ---------------------------------------------------------------- helpers
    def load(self, request: Request, connections: int | None = None, threads: int | None = None) -> LoadResult:
        return run_load(request, self.plan.seconds, connections or self.plan.connections, threads or self.plan.threads,
                        self.use_wrk, self.plan.warmup)  # fmt: skip

    def record(self, key: str, label: str, result: LoadResult, note: str = "") -> Measure:
        if result.errors:
            note = (note + "; " if note else "") + f"{result.errors} errors"
        return self.results.add(Measure(key, label, result.rps, result.p50_ms, result.p99_ms, note=note, tool=result.tool))

    def absent(self, key: str, label: str, what: str) -> None:
        self.results.add(Measure(key, label, note=f"absent ({what} not installed)"))

    def seed(self, data_dir: Path, *specs: str) -> None:
        args = [sys.executable, "-m", "bench.seed", "--data-dir", str(data_dir), *specs]
        completed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
        if completed.returncode != 0:
            raise RuntimeError(f"seeding failed: {completed.stderr[-1500:]}")

    def read_request(self, server: t.TesseraServer, path: str, token: str | None) -> Request:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return Request(server.url + path, headers=headers)

    # ---------------------------------------------------------------- phases
    def baselines(self) -> None:
        bare = t.start_asgi(self.procs, self.tmp, "bare", "bench.apps:bare", health="/")
        try:
            self.record("bare", "bare ASGI app, 100 bytes (uvicorn, uvloop, httptools)", self.load(Request(bare.url + "/")))
        finally:
            self.procs.stop(bare.child)
        fast = t.start_asgi(self.procs, self.tmp, "fastapi", "bench.apps:fastapi_app")
        try:
            self.record("fastapi", "FastAPI route returning a dict, 1 worker", self.load(Request(fast.url + "/item")))
        finally:
            self.procs.stop(fast.child)
        label = "etcd 3.4 range (HTTP gateway, POST /v3/kv/range)"
        if not self.has_etcd:
            self.absent("etcd.range", label, "etcd")
            self.absent("etcd.put", "etcd put, 8 clients (POST /v3/kv/put)", "etcd")
            return
        etcd = t.start_etcd(self.procs, self.tmp)
        try:
            t.etcd_put(etcd, t.PLAIN_KEY, "postgres://db.internal:5432/app")
            body = t.etcd_range_body(t.PLAIN_KEY)
            request = Request(etcd.url + "/v3/kv/range", "POST", {"Content-Type": "application/json"}, body)
            self.record("etcd.range", label, self.load(request))
            put = json.dumps({"key": t.b64("cas.etcd"), "value": t.b64("value")}).encode()
            request = Request(etcd.url + "/v3/kv/put", "POST", {"Content-Type": "application/json"}, put)
            self.record("etcd.put", "etcd put, 8 clients (POST /v3/kv/put)", self.load(request, connections=self.plan.cas_clients))
        finally:
            self.procs.stop(etcd.child)
            # The puts left tens of MB of etcd's files for the kernel to write back: done now, not during the next
            # target (it made the first Tessera read target, measured next, the slowest of the five reads).
            os.sync()

    def reads(self, server: t.TesseraServer, token: str, workers: int) -> None:
        suffix = f"{workers}w"
        name = "1 worker" if workers == 1 else f"{workers} workers"
        rows = [
            (f"read.plain.svc.{suffix}", f"Tessera GET plain key, service token, {name}", f"/config/{t.PLAIN_KEY}", token),
            (f"read.secret.{suffix}", f"Tessera GET secret key, service token, {name}", f"/config/{t.SECRET_KEY}", token),
            (f"read.subtree.{suffix}", f"Tessera GET 20-leaf subtree, service token, {name}", f"/config/{t.SUBTREE}", token),
            (f"read.health.{suffix}", f"Tessera GET /health (no token), {name}", "/health", None),
        ]
        if workers == 1:
            rows.insert(1, ("read.plain.root.1w", "Tessera GET plain key, root token, 1 worker", f"/config/{t.PLAIN_KEY}", t.ROOT_TOKEN))
        for key, label, path, read_token in rows:
            if read_token:
                t.check_read(server, read_token, path)
            self.record(key, label, self.load(self.read_request(server, path, read_token)))

    def cas_writes(self, server: t.TesseraServer, token: str, key: str = "write.cas", label: str = "") -> None:
        """``cas_clients`` clients, each writing its own key with ``expected_version`` (compare-and-set)."""
        clients, seconds = self.plan.cas_clients, max(self.plan.seconds, 3.0)  # a durable write can take a second here

        async def client(index: int, stop_at: float, latencies: list[float], conflicts: list[int]) -> None:
            path = f"/config/cas.client{index}"
            async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                current = await http.get(path)
                version = current.json()["version"] if current.status_code == 200 else 0
                value = 0
                while time.perf_counter() < stop_at:
                    value += 1
                    started = time.perf_counter()
                    response = await http.put(path, json={"value": value, "expected_version": version})
                    if response.status_code in (200, 201):
                        version = response.json()["version"]
                        latencies.append(time.perf_counter() - started)
                    else:
                        conflicts.append(response.status_code)
                        refreshed = await http.get(path)
                        version = refreshed.json()["version"] if refreshed.status_code == 200 else 0

        async def run() -> tuple[list[float], list[int]]:
            latencies: list[float] = []
            conflicts: list[int] = []
            stop_at = time.perf_counter() + seconds
            await asyncio.gather(*(client(index, stop_at, latencies, conflicts) for index in range(clients)))
            return latencies, conflicts

        latencies, conflicts = asyncio.run(run())
        latencies.sort()
        note = f"{len(conflicts)} refused" if conflicts else ""
        self.results.add(Measure(key, label or f"Tessera CAS writes, {clients} clients (service token)", len(latencies) / seconds,
                                 latencies[len(latencies) // 2] * 1e3 if latencies else None,
                                 latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else None,
                                 note=note, tool="httpx"))  # fmt: skip

    def watch(self, server: t.TesseraServer, token: str) -> None:
        count = self.plan.latency_samples
        for kind, key, label in (("ws", "watch.ws", "watch latency, Tessera /ws (websockets client)"),
                                 ("longpoll", "watch.longpoll", "watch latency, Tessera long-poll /watch")):  # fmt: skip
            latency = watch_latency(kind, server.url, t.WATCH_KEY, count, token=token, root_token=t.ROOT_TOKEN)
            self.results.add(Measure(key, label, p50_ms=latency.percentile(0.5), p99_ms=latency.percentile(0.99),
                                     note=f"{len(latency.samples)} writes"))  # fmt: skip

    def etcd_watch(self) -> None:
        label = "watch latency, etcd (gateway /v3/watch stream)"
        if not self.has_etcd:
            self.absent("watch.etcd", label, "etcd")
            return
        etcd = t.start_etcd(self.procs, self.tmp / "etcd-watch")
        try:
            latency = watch_latency("etcd", etcd.url, t.WATCH_KEY, self.plan.latency_samples)
            self.results.add(Measure("watch.etcd", label, p50_ms=latency.percentile(0.5), p99_ms=latency.percentile(0.99),
                                     note=f"{len(latency.samples)} writes"))  # fmt: skip
        finally:
            self.procs.stop(etcd.child)

    def load_with_watchers(self, server: t.TesseraServer, token: str) -> None:
        """Reads and CAS writes with and without ``hold`` long-poll watchers parked on keys nobody writes."""
        path = f"/config/{t.PLAIN_KEY}"
        self.record("load.read.quiet", "plain GET, no watchers parked (same server)", self.load(self.read_request(server, path, token)))
        self.cas_writes(server, token, "load.write.quiet", "CAS writes, no watchers parked (same server)")
        seconds = 3 * (self.plan.seconds + self.plan.warmup) + 10
        holder = self.procs.start("holders", [sys.executable, "-m", "bench.watchers", "hold", "--url", server.url,
                                              "--path", "/watch?keys=scale.idle{i}&timeout=30", "--token", token,
                                              "--count", str(self.plan.hold), "--seconds", str(seconds)],
                                  log=self.tmp / "holders.log")  # fmt: skip
        try:
            time.sleep(1.0)
            wait_idle(server.pid, 0.5, 15)
            label = f"plain GET, {self.plan.hold} long-poll watchers parked on other keys"
            self.record("load.read.watchers", label, self.load(self.read_request(server, path, token)))
            self.cas_writes(server, token, "load.write.watchers", f"CAS writes, {self.plan.hold} watchers parked on other keys")
        finally:
            self.procs.stop(holder)

    def versions(self, token: str) -> None:
        few, many = self.plan.versions
        data = self.tmp / "versions-data"
        self.seed(data, "--versions", f"scale.v.few:{few}", "--versions", f"scale.v.many:{many}")
        server = t.start_tessera(self.procs, self.tmp, "tessera-versions", data_dir=data)
        try:
            token = t.create_service_token(server)
            for key, label, name in (("versions.few", f"GET of a key with {few:,} versions", "scale.v.few"),
                                     ("versions.many", f"GET of a key with {many:,} versions", "scale.v.many")):  # fmt: skip
                t.check_read(server, token, f"/config/{name}")
                self.record(key, label, self.load(self.read_request(server, f"/config/{name}", token)))
        finally:
            self.procs.stop(server.child)

    def keys(self) -> None:
        for key, count in (("keys.few", self.plan.keys[0]), ("keys.many", self.plan.keys[1])):
            data = self.tmp / f"{key}-data"
            self.seed(data, "--keys", f"scale.k:{count}")
            server = t.start_tessera(self.procs, self.tmp, f"tessera-{key}", data_dir=data)
            try:
                token = t.create_service_token(server)
                path = f"/config/scale.k.{count // 2:06d}"
                t.check_read(server, token, path)
                self.record(key, f"GET in a store of {count:,} keys", self.load(self.read_request(server, path, token)))
            finally:
                self.procs.stop(server.child)

    def listing(self) -> None:
        few, many = self.plan.listing
        data = self.tmp / "list-data"
        self.seed(data, "--keys", f"scale.l:{few}@l{few}", "--keys", f"scale.l:{many}@l{many}")
        server = t.start_tessera(self.procs, self.tmp, "tessera-list", data_dir=data)
        try:
            token = t.create_service_token(server)
            for key, count in (("list.few", few), ("list.many", many)):
                times, listed = [], 0
                budget = time.monotonic() + (60 if not self.plan.quick else 10)
                with server.client(token, timeout=300) as client:
                    while len(times) < 3 and (not times or time.monotonic() < budget):
                        started = time.perf_counter()
                        listed, after = 0, None
                        while True:
                            params = {"namespace": f"l{count}", "prefix": "scale.l"} | ({"after": after} if after else {})
                            response = client.get("/config", params=params)
                            response.raise_for_status()
                            body = response.json()
                            listed += len(body["keys"])
                            after = body.get("next")
                            if not after:
                                break
                        times.append(time.perf_counter() - started)
                if listed != count:
                    raise RuntimeError(f"GET /config listed {listed} keys of {count}")
                self.results.add(Measure(key, f"GET /config over {count:,} keys (all pages)", value=statistics.median(times),
                                         unit="s", note=f"median of {len(times)}"))  # fmt: skip
        finally:
            self.procs.stop(server.child)

    def parked(self) -> None:
        count = self.plan.parked
        fast = t.start_asgi(self.procs, self.tmp, "fastapi-longpoll", "bench.apps:longpoll_app")
        try:
            result = self.park(fast.url, "/wait?timeout=120", "", fast.pid, "POST", "/release", "", "")
            self.parked_rows("fastapi", f"plain FastAPI long-poll, {count:,} clients", result)
        finally:
            self.procs.stop(fast.child)
        # One token holds every watcher here: the per-token cap on held long-polls (TESSERA_MAX_LONG_POLLS, a guard
        # against one token taking the node) is raised past the count, as a deployment expecting such a fleet would.
        server = t.start_tessera(self.procs, self.tmp, "tessera-parked", env={"TESSERA_MAX_LONG_POLLS": str(2 * count)})
        try:
            token = t.create_service_token(server)
            with server.client() as root:
                root.put(f"/config/{t.PARKED_KEY}", json={"value": 0}).raise_for_status()
                revision = root.get("/health").json()["revision"]
            path = f"/watch?keys={t.PARKED_KEY}&since={revision}&timeout=60"
            result = self.park(server.url, path, token, server.pid, "PUT", f"/config/{t.PARKED_KEY}", json.dumps({"value": 1}), t.ROOT_TOKEN)
            self.parked_rows("tessera", f"Tessera long-poll /watch, {count:,} watchers", result)
        finally:
            self.procs.stop(server.child)

    def park(self, url: str, path: str, token: str, pid: int, method: str, write_path: str, body: str, write_token: str) -> dict:
        args = [sys.executable, "-m", "bench.watchers", "parked", "--url", url, "--path", path, "--token", token,
                "--count", str(self.plan.parked), "--pid", str(pid), "--write-method", method, "--write-path", write_path,
                "--write-body", body, "--write-token", write_token, "--settle-timeout", str(2 if self.plan.quick else 30),
                "--open-timeout", str(30 if self.plan.quick else 150), "--release-timeout", str(30 if self.plan.quick else 150)]  # fmt: skip
        completed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400)
        for line in completed.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                return json.loads(line[len("BENCH_JSON ") :])
        raise RuntimeError(f"parked watchers: rc {completed.returncode}: {completed.stderr[-800:]}")

    def parked_rows(self, name: str, label: str, result: dict) -> None:
        note = f"{result['released']:,} released, server CPU {result['release_cpu']:.2f} s"
        if result["refused"]:
            note += f", {result['refused']:,} could not connect"
        if result["not_ok"] or result["early"]:
            note += f", {result['not_ok']:,} failed, {result['early']:,} answered before the write"
        if result["open_seconds"] > 5:
            note += f", {result['open_seconds']:.0f} s to open and park"
        if not result["settled"]:
            note += f", server busy while parked ({result['parked_cpu']:.0%} of a core)"
        self.results.add(Measure(f"parked.{name}.time", f"{label}: time until all hold the change", value=result["seconds"],
                                 unit="s", p50_ms=result["p50_seconds"] * 1e3 if result["p50_seconds"] else None, note=note))  # fmt: skip
        self.results.add(Measure(f"parked.{name}.rss", f"{label}: server RSS per parked watcher", value=result["rss_per_watcher"],
                                 unit="B", note=f"RSS {result['rss_parked'] / 2**20:,.0f} MiB parked"))  # fmt: skip

    def lambda_import(self) -> None:
        """Import time of the Lambda entry module, and of the app it builds on the first invocation."""
        env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        for key, module, label in (
            ("lambda.import", "tessera.handlers.lambda_", "import tessera.handlers.lambda_ (fresh interpreter)"),
            ("lambda.import_app", "tessera.handlers.app", "import tessera.handlers.app (what the first invocation imports)"),
        ):
            code = f"import time; s = time.perf_counter(); import {module}; print(time.perf_counter() - s)"
            times = []
            for _ in range(self.plan.lambda_runs):
                completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
                if completed.returncode != 0:
                    raise RuntimeError(completed.stderr[-800:])
                times.append(float(completed.stdout.strip().splitlines()[-1]))
            self.results.add(Measure(key, label, value=statistics.median(times) * 1e3, unit="ms", note=f"median of {len(times)}"))


def run(plan: Plan, only: set[str], results: Results) -> None:
    scale = 1.0 if not plan.quick else 0.5
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp_name, Processes() as procs:
        tmp = Path(tmp_name)
        bench = Bench(plan, procs, tmp, results)
        per_load = (plan.seconds + plan.warmup + 5) * (1 if bench.use_wrk else 1.2)
        read_keys = [("read.plain.svc.1w", "Tessera GET plain key, service token, 1 worker")]
        if "baselines" in only:
            with phase(results, "baselines", 3 * per_load + 60, [("bare", "bare ASGI app"), ("fastapi", "FastAPI route"),
                                                                   ("etcd.range", "etcd range")]):  # fmt: skip
                bench.baselines()
        main_phases = {"reads", "writes", "watch", "load"} & only
        if main_phases:
            server = None
            try:
                with phase(results, "tessera start", 90, read_keys):
                    server = t.start_tessera(procs, tmp, "tessera-1w")
                    token = t.seed_reads(server)
                if server is not None:
                    if "reads" in only:
                        with phase(results, "reads", 5 * per_load + 30, read_keys):
                            bench.reads(server, token, 1)
                    if "writes" in only:
                        with phase(results, "writes", per_load + 30, [("write.cas", "Tessera CAS writes")]):
                            bench.cas_writes(server, token)
                    if "watch" in only:
                        with phase(results, "watch", 120 * scale + 60, [("watch.ws", "watch latency /ws"),
                                                                         ("watch.longpoll", "watch latency long-poll")]):  # fmt: skip
                            bench.watch(server, token)
                    if "load" in only:
                        with phase(results, "load", 4 * per_load + 60, [("load.read.watchers", "reads with watchers parked")]):
                            bench.load_with_watchers(server, token)
            finally:
                if server is not None:
                    procs.stop(server.child)
        if "watch" in only:
            with phase(results, "etcd watch", 120 * scale + 60, [("watch.etcd", "watch latency, etcd")]):
                bench.etcd_watch()
        if "workers" in only:
            labels = [("read.plain.svc.2w", "Tessera GET plain key, service token, 2 workers"),
                      ("read.secret.2w", "Tessera GET secret key, service token, 2 workers"),
                      ("read.subtree.2w", "Tessera GET 20-leaf subtree, service token, 2 workers"),
                      ("read.health.2w", "Tessera GET /health (no token), 2 workers")]  # fmt: skip
            if not t.tessera_has_workers():
                for key, label in labels:
                    results.add(Measure(key, label, note="n/a (no --workers yet)"))
            else:
                with phase(results, "2 workers", 4 * per_load + 90, labels):
                    server = t.start_tessera(procs, tmp, "tessera-2w", workers=2)
                    try:
                        bench.reads(server, t.seed_reads(server), 2)
                    finally:
                        procs.stop(server.child)
        if "audit" in only:
            with phase(results, "audit off", per_load + 90, [("read.audit_off", "Tessera GET plain, audit off")]):
                server = t.start_tessera(procs, tmp, "tessera-audit-off", env={"TESSERA_AUDIT": "off"})
                try:
                    token = t.seed_reads(server, minimal=True)
                    path = f"/config/{t.PLAIN_KEY}"
                    t.check_read(server, token, path)
                    label = "Tessera GET plain key, service token, 1 worker, TESSERA_AUDIT=off"
                    bench.record("read.audit_off", label, bench.load(bench.read_request(server, path, token)))
                finally:
                    procs.stop(server.child)
        if "versions" in only:
            with phase(results, "versions", 2 * per_load + 300 * scale, [("versions.many", "GET, many versions")]):
                bench.versions("")
        if "keys" in only:
            with phase(results, "keys", 2 * per_load + 900 * scale, [("keys.many", "GET, large store")]):
                bench.keys()
        if "list" in only:
            with phase(results, "list", 600 * scale, [("list.few", "GET /config, small"), ("list.many", "GET /config, large")]):
                bench.listing()
        if "parked" in only:
            with phase(results, "parked", 900 * scale, [("parked.tessera.time", "Tessera parked watchers")]):
                bench.parked()
        if "lambda" in only:
            with phase(results, "lambda import", 120, [("lambda.import", "Lambda entry import")]):
                bench.lambda_import()


def describe(plan: Plan, commit: str, started: dt.datetime, elapsed: float) -> str:
    tool = f"wrk, {plan.threads} threads" if wrk_available() else "the built-in asyncio load generator in 1 process (wrk absent)"
    load = os.getloadavg()
    return (f"{'quick' if plan.quick else 'full'} run of {started:%Y-%m-%d %H:%M} UTC on commit {commit}, "
            f"{elapsed / 60:.1f} min; {tool}, {plan.connections} connections, "
            f"{plan.seconds:g} s per target after {plan.warmup:g} s warm-up; {os.cpu_count()} cores, "
            f"load average {load[0]:.1f} at the end (the machine is shared: compare ratios, not absolute figures); "
            f"Python {platform.python_version()}")  # fmt: skip


def git_commit() -> str:
    try:
        completed = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True,
                               timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = completed.stdout.strip()
    return (text[:80] + (" (with local changes)" if dirty.stdout.strip() else "")) or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small form: ~1 s per target, few watchers, small stores")
    parser.add_argument("--seconds", type=float, help="load time per target (default 8 full, 1 quick)")
    parser.add_argument("--only", help=f"comma-separated phases of {','.join(PHASES)}")
    parser.add_argument("--docs", type=Path, help="directory for benchmarks.md and bench.png (default: docs/ in full mode)")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.seconds)
    only = set(args.only.split(",")) if args.only else set(PHASES)
    unknown = only - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    docs = None if args.no_docs else (args.docs or (None if plan.quick else REPO / "docs"))

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: every process is stopped

    signal.signal(signal.SIGTERM, terminate)
    raise_nofile_limit()
    commit = git_commit()
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    results = Results()
    run(plan, only, results)
    about = describe(plan, commit, started, time.monotonic() - clock)
    passed, missed = results.verdicts()
    print()
    print(text_table(results))
    print(f"\n{about}\nissue 8 targets: {passed} pass, {missed} miss (reported, not enforced)")
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        charted = chart(results, docs / "bench.png", f"Tessera bench, {started:%Y-%m-%d} ({commit.split(' ')[0]})")
        body = [f"## Latest `make {'bench-quick' if plan.quick else 'bench'}` run", "", about + ".", "",
                markdown_table(results), "", f"Issue 8 targets: {passed} pass, {missed} miss (reported, never enforced)."]  # fmt: skip
        if charted:
            body += ["", "![make bench chart](bench.png)"]
        write_section(docs / "benchmarks.md", "\n".join(body))
        print(f"wrote {docs / 'benchmarks.md'}" + (f" and {docs / 'bench.png'}" if charted else " (no chart: matplotlib absent)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
