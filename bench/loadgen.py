"""Load generators: wrk when it is installed, a small asyncio one when it is not.

Both drive keep-alive HTTP/1.1 connections at a target as fast as it answers for a fixed time and report
requests per second and latency percentiles. wrk (2 threads, 32 connections by default) is what the figures in
docs/benchmarks.md come from; its Lua script sets the method, headers and body (etcd's range is a POST) and its
``done`` hook prints the summary and the latency percentiles as one JSON line. The built-in generator (one asyncio
process, raw sockets) stands in where wrk is absent (``make bench-quick`` on a bare machine): its ceiling is a
few thousand requests per second, so its ratios against the bare ASGI app are not comparable with wrk's.

    result = run_load(Request("http://127.0.0.1:8200/config/svc.db_url", headers={"Authorization": "Bearer ..."}), 8.0)
    print(result.rps, result.p50_ms, result.p99_ms)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Request:
    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def raw(self) -> bytes:
        """The request as bytes on a keep-alive connection."""
        parts = urlsplit(self.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{self.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.body or self.method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0)))
end
"""


def wrk_script(request: Request) -> str:
    lines = [f"wrk.method = {_lua_string(request.method)}"]
    if request.body:
        lines.append(f"wrk.body = {_lua_string(request.body.decode())}")
    for name, value in request.headers.items():
        lines.append(f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}")
    return "\n".join(lines) + "\n" + _DONE_HOOK


def run_wrk(request: Request, seconds: float, threads: int = 2, connections: int = 32) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "request.lua"
        script.write_text(wrk_script(request))
        args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                "-s", str(script), request.url]  # fmt: skip
        completed = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON ") :])
            errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
            return LoadResult("wrk", data["requests"], data["duration_us"] / 1e6, errors, data["p50_us"] / 1e3, data["p99_us"] / 1e3)
    raise RuntimeError(f"wrk printed no summary (rc {completed.returncode}): {completed.stdout[-500:]} {completed.stderr[-500:]}")


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _connection(request: Request, started: float, stop_at: float, latencies: list[float], errors: list[int]) -> None:
    parts = urlsplit(request.url)
    raw = request.raw()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(raw)
            status = await _read_response(reader)
            if now >= started:  # requests begun during the warm-up are not counted
                latencies.append(time.perf_counter() - now)
                if status >= 400:
                    errors.append(status)
    finally:
        writer.close()


async def _builtin(request: Request, seconds: float, connections: int, warmup: float) -> LoadResult:
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter() + warmup
    stop_at = started + seconds
    tasks = [asyncio.create_task(_connection(request, started, stop_at, latencies, errors)) for _ in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=warmup + seconds + 30)
    for task in pending:
        task.cancel()
    failures = [task.exception() for task in done if task.exception() is not None]
    if failures and not latencies:
        raise RuntimeError(f"load generator failed: {failures[0]!r}")
    latencies.sort()
    if not latencies:
        return LoadResult("asyncio", 0, seconds, 0, 0.0, 0.0)
    return LoadResult(
        "asyncio", len(latencies), seconds, len(errors),
        latencies[len(latencies) // 2] * 1e3, latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    )  # fmt: skip


def run_builtin(request: Request, seconds: float, connections: int = 32, warmup: float = 0.3) -> LoadResult:
    return asyncio.run(_builtin(request, seconds, connections, warmup))


def run_load(request: Request, seconds: float, connections: int = 32, threads: int = 2, use_wrk: bool | None = None,
             warmup: float = 1.0) -> LoadResult:  # fmt: skip
    """``seconds`` of closed-loop load after ``warmup`` seconds of the same load (not counted)."""
    if use_wrk is None:
        use_wrk = wrk_available()
    if use_wrk:
        if warmup > 0:
            run_wrk(request, warmup, threads, connections)
        return run_wrk(request, seconds, threads, connections)
    return run_builtin(request, seconds, connections, warmup)
