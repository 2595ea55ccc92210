"""Watchers: write-to-event latency, and many parked long-poll watchers released by one write.

Latency (:func:`watch_latency`): one watcher (Tessera's ``/ws`` with the real ``websockets`` client, Tessera's
long-poll ``/watch`` re-armed after every answer, or etcd's gateway ``POST /v3/watch`` stream) and one writer in
the same asyncio loop. The writer writes a new value every ``gap`` seconds; each sample is the time from just
before the write was sent to the moment the watcher holds the event carrying that value. The first samples are a
warm-up and not counted.

Parked watchers (``python -m bench.watchers parked …``, one asyncio process of its own, raw sockets, file limit
raised to the hard limit): opens N keep-alive connections, each sending one long-poll request, waits until the
server has gone idle (every request parked), reads the server's RSS, then makes one write and times until every
connection holds its answer. The same client runs against Tessera's ``/watch`` and a plain FastAPI long-poll
(``bench.apps:longpoll_app``). Prints one JSON line.

Background watchers (``python -m bench.watchers hold …``): N long-poll watchers parked on keys nobody writes,
re-armed when their timeout answers, for a fixed time: the load under which reads and writes are measured again.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from bench.loadgen import _read_response
from bench.procs import cpu_seconds, raise_nofile_limit, rss_bytes, wait_idle


@dataclass
class Latency:
    samples: list[float]  # seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1e3 if ordered else 0.0


async def _writer(write, received: dict[int, float], count: int, gap: float, first: int, timeout: float) -> list[float]:
    samples = []
    for index in range(count):
        value = first + index
        sent = time.perf_counter()
        await write(value)
        deadline = time.monotonic() + timeout
        while value not in received and time.monotonic() < deadline:
            await asyncio.sleep(0.0005)
        if value not in received:
            raise TimeoutError(f"no event for value {value} within {timeout}s")
        samples.append(received[value] - sent)
        await asyncio.sleep(gap)
    return samples


async def _tessera_latency(mode: str, url: str, token: str, root_token: str, key: str, count: int, gap: float,
                           warmup: int) -> Latency:  # fmt: skip
    import websockets

    received: dict[int, float] = {}
    root = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {root_token}"}, timeout=30)
    reader = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=90)
    first = int(time.time() * 1000) % 1_000_000_000  # values not written before: a no-op write makes no event
    since = (await root.get("/health")).json()["revision"]

    async def write(value: int) -> None:
        (await root.put(f"/config/{key}", json={"value": value})).raise_for_status()

    async def long_poll() -> None:
        revision = since
        while True:
            response = await reader.get("/watch", params={"keys": key, "since": revision, "timeout": 30})
            response.raise_for_status()
            body = response.json()
            now = time.perf_counter()
            for event in body["events"]:
                received.setdefault(event.get("value"), now)
            revision = body["revision"]

    async def web_socket() -> None:
        async with websockets.connect(url.replace("http://", "ws://") + "/ws", max_queue=None) as socket:
            await socket.send(json.dumps({"type": "auth", "token": token}))
            await socket.send(json.dumps({"type": "subscribe", "keys": [key], "since": since}))
            async for message in socket:
                now = time.perf_counter()
                data = json.loads(message)
                if data.get("type") == "event":
                    received.setdefault(data.get("value"), now)
                elif data.get("type") == "error":
                    raise RuntimeError(f"/ws refused: {data}")

    watcher = asyncio.create_task(long_poll() if mode == "longpoll" else web_socket())
    try:
        await asyncio.sleep(0.2)
        samples = await _writer(write, received, count + warmup, gap, first, timeout=10)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        await root.aclose()
        await reader.aclose()
    return Latency(samples[warmup:])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _etcd_latency(url: str, key: str, count: int, gap: float, warmup: int) -> Latency:
    received: dict[int, float] = {}
    client = httpx.AsyncClient(base_url=url, timeout=30)
    streamer = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=None))
    first = int(time.time() * 1000) % 1_000_000_000
    created = asyncio.Event()

    async def write(value: int) -> None:
        (await client.post("/v3/kv/put", json={"key": _b64(key), "value": _b64(str(value))})).raise_for_status()

    async def watch() -> None:
        body = {"create_request": {"key": _b64(key)}}
        async with streamer.stream("POST", "/v3/watch", json=body) as response:
            async for line in response.aiter_lines():
                now = time.perf_counter()
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    created.set()
                for event in result.get("events", []):
                    value = base64.b64decode(event["kv"].get("value", "")).decode()
                    if value.isdigit():
                        received.setdefault(int(value), now)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(created.wait(), 10)
        samples = await _writer(write, received, count + warmup, gap, first, timeout=10)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        await client.aclose()
        await streamer.aclose()
    return Latency(samples[warmup:])


def watch_latency(kind: str, url: str, key: str, count: int, gap: float = 0.02, token: str = "", root_token: str = "",
                  warmup: int = 3, timeout: float = 120.0) -> Latency:  # fmt: skip
    """``kind``: ``ws``, ``longpoll`` (Tessera) or ``etcd``."""
    if kind == "etcd":
        work = _etcd_latency(url, key, count, gap, warmup)
    else:
        work = _tessera_latency(kind, url, token, root_token, key, count, gap, warmup)

    async def bounded() -> Latency:
        return await asyncio.wait_for(work, timeout)

    return asyncio.run(bounded())


# ---------------------------------------------------------------- parked watchers (own process)


async def _open_parked(host: str, port: int, raw: bytes, count: int, connect_limit: int, deadline: float) -> tuple[list, int]:
    """Up to ``count`` connections, each with its request sent; those that fail or miss the deadline are counted."""
    gate = asyncio.Semaphore(connect_limit)

    async def one() -> tuple | None:
        async with gate:
            if time.monotonic() > deadline:
                return None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), max(0.1, deadline - time.monotonic()))
                writer.write(raw)
                await writer.drain()
            except (OSError, TimeoutError):
                return None
            return reader, writer

    opened = await asyncio.gather(*(one() for _ in range(count)))
    connections = [connection for connection in opened if connection is not None]
    return connections, count - len(connections)


async def _parked(args: argparse.Namespace) -> dict:
    parts = urlsplit(args.url)
    headers = f"Host: {parts.netloc}\r\n" + (f"Authorization: Bearer {args.token}\r\n" if args.token else "")
    raw = f"GET {args.path} HTTP/1.1\r\n{headers}\r\n".encode()
    rss_before = rss_bytes(args.pid)
    opened = time.perf_counter()
    connections, refused = await _open_parked(parts.hostname, parts.port, raw, args.count, args.connect_limit,
                                              time.monotonic() + args.open_timeout)  # fmt: skip
    loop = asyncio.get_running_loop()
    # Parked = the server went idle; a server whose parked watchers keep it busy is given settle_timeout.
    idle = await loop.run_in_executor(None, wait_idle, args.pid, 1.0, args.settle_timeout)
    parked_seconds = time.perf_counter() - opened
    cpu_before = cpu_seconds(args.pid)
    await asyncio.sleep(1.0)
    parked_cpu = cpu_seconds(args.pid) - cpu_before  # share of a core the parked watchers cost, per second
    # A connection that holds an answer before the write was not parked (the loop kept reading meanwhile).
    early = [reader for reader, _ in connections if reader.at_eof() or len(reader._buffer)]  # noqa: SLF001
    rss_parked = rss_bytes(args.pid)

    async def answer(reader: asyncio.StreamReader) -> tuple[int, float]:
        status = await _read_response(reader)
        return status, time.perf_counter()

    waiting = [asyncio.create_task(answer(reader)) for reader, _ in connections]
    write_headers = {"Authorization": f"Bearer {args.write_token}"} if args.write_token else {}
    async with httpx.AsyncClient(base_url=args.url, headers=write_headers, timeout=30) as writer:
        cpu_before_release = cpu_seconds(args.pid)
        sent = time.perf_counter()
        body = json.loads(args.write_body) if args.write_body else None
        response = await writer.request(args.write_method, args.write_path, json=body)
        response.raise_for_status()
        done, pending = await asyncio.wait(waiting, timeout=args.release_timeout)
        release_cpu = cpu_seconds(args.pid) - cpu_before_release  # the server's CPU for the write and the release
    for task in pending:
        task.cancel()
    statuses = [task.result()[0] for task in done if task.exception() is None]
    finished = [task.result()[1] for task in done if task.exception() is None]
    for _, writer_ in connections:
        writer_.close()
    return {
        "count": args.count,
        "refused": refused,
        "released": sum(1 for status in statuses if status == 200),
        "not_ok": sum(1 for status in statuses if status != 200) + len(pending) + sum(1 for t in done if t.exception()),
        "early": len(early),
        "seconds": (max(finished) - sent) if finished else None,
        "p50_seconds": (sorted(finished)[len(finished) // 2] - sent) if finished else None,
        "rss_before": rss_before,
        "rss_parked": rss_parked,
        "rss_per_watcher": (rss_parked - rss_before) / args.count,
        "settled": idle,
        "open_seconds": parked_seconds,
        "parked_cpu": parked_cpu,
        "release_cpu": release_cpu,
    }


async def _hold(args: argparse.Namespace) -> dict:
    """``count`` watchers parked on keys nobody writes, re-armed on every answer, for ``seconds``."""
    parts = urlsplit(args.url)
    stop_at = time.monotonic() + args.seconds
    answers = 0

    async def one(index: int) -> None:
        nonlocal answers
        path = args.path.replace("{i}", str(index))
        raw = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {args.token}\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.monotonic() < stop_at:
                writer.write(raw)
                await asyncio.wait_for(_read_response(reader), max(1.0, stop_at - time.monotonic() + 5))
                answers += 1
        except TimeoutError:
            pass
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(index)) for index in range(args.count)]
    await asyncio.wait(tasks, timeout=args.seconds + 10)
    for task in tasks:
        task.cancel()
    return {"count": args.count, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    parked = sub.add_parser("parked")
    parked.add_argument("--url", required=True)
    parked.add_argument("--path", required=True)
    parked.add_argument("--token", default="")
    parked.add_argument("--count", type=int, required=True)
    parked.add_argument("--pid", type=int, required=True, help="the server's pid: RSS and idleness")
    parked.add_argument("--write-method", default="PUT")
    parked.add_argument("--write-path", required=True)
    parked.add_argument("--write-body", default="")
    parked.add_argument("--write-token", default="")
    parked.add_argument("--connect-limit", type=int, default=200)
    parked.add_argument("--settle-timeout", type=float, default=60.0)
    parked.add_argument("--open-timeout", type=float, default=120.0, help="connections not open by then are counted as refused")
    parked.add_argument("--release-timeout", type=float, default=90.0)
    hold = sub.add_parser("hold")
    hold.add_argument("--url", required=True)
    hold.add_argument("--path", required=True, help="{i} is replaced by the watcher's index")
    hold.add_argument("--token", required=True)
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    raise_nofile_limit()
    result = asyncio.run(_parked(args) if args.command == "parked" else _hold(args))
    print("BENCH_JSON " + json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
