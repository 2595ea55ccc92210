"""A soak (issue 13 §8): 200 watchers (150 long polls, 50 WebSockets), writers and readers against one server for
30 s (``make chaos``: 5 minutes). Every watcher gets every event exactly once and in order; the server's open
descriptors and memory stay within a bound while it runs and its descriptors come back when the watchers leave."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from tests.chaos.harness import process_fds, process_rss, scale
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_chaos-soak-root-token-0123456789"
LONG_POLLS, SOCKETS, WRITERS, READERS = 150, 50, 2, 2


def test_soak_200_watchers_with_writers_and_readers(tmp_path):
    seconds = scale(30, 300)
    server = ServerProcess(tmp_path / "data", root_token=TOKEN).start(timeout=60)
    try:
        report = asyncio.run(soak(server, seconds))
    finally:
        server.stop()
    print(f"soak: {seconds:.0f} s, {LONG_POLLS} long polls + {SOCKETS} WebSockets, {report['writes']} writes, "
          f"{report['reads']} reads, {report['events']} events delivered, every watcher complete and in order; "
          f"server fds {report['fds']}, RSS MiB {report['rss']}")


async def soak(server: ServerProcess, seconds: float) -> dict:
    pid = server.process.pid
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=LONG_POLLS + READERS + 10, max_keepalive_connections=LONG_POLLS + READERS + 10)
    # Writes go on fresh connections: a pooled keep-alive connection the server closes as idle (5 s, and this one
    # process runs 200 watchers, so its loop may lag that long) just as the client reuses it fails the request,
    # and a write cannot be retried blindly. Reads and watches retry such a request: it never ran.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120, limits=limits) as client, \
            httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60, limits=fresh) as writing:
        since = (await client.get("/health")).json()["revision"]
        fds_before = process_fds(pid)
        stop = asyncio.Event()
        acks: list[tuple[int, str, int]] = []  # (revision, key, version) of every acknowledged write
        seen: list[list[tuple[int, str, int]]] = [[] for _ in range(LONG_POLLS + SOCKETS)]
        cursors = [since] * (LONG_POLLS + SOCKETS)
        reads, retries = [0], [0]

        async def long_poll(i: int) -> None:
            while True:
                try:
                    response = await client.get("/watch", params={"keys": "soak.*", "since": cursors[i], "timeout": 20})
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    retries[0] += 1  # the keep-alive race above: retried from the same cursor, nothing lost or repeated
                    continue
                assert response.status_code == 200, response.text
                body = response.json()
                seen[i] += [(e["revision"], e["key"], e["version"]) for e in body["events"]]
                cursors[i] = body["revision"]

        async def socket(i: int) -> None:
            async with websockets.connect(server.url.replace("http://", "ws://") + "/ws", max_size=2**22) as ws:
                await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
                await ws.send(json.dumps({"type": "subscribe", "keys": ["soak.*"], "since": since}))
                async for raw in ws:
                    message = json.loads(raw)
                    assert message["type"] == "event", message
                    seen[i].append((message["revision"], message["key"], message["version"]))
                    cursors[i] = message["revision"]

        async def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                response = await writing.put(f"/config/soak.w{w}.k{n % 10}", json={"value": n})
                assert response.status_code in (200, 201), response.text
                body = response.json()
                acks.append((body["revision"], body["key"], body["version"]))
                n += 1
                await asyncio.sleep(0.2)

        async def reader(r: int) -> None:
            while not stop.is_set():
                try:
                    response = await client.get(f"/config/soak.w{r % WRITERS}")  # a subtree: every key of one writer
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    retries[0] += 1
                    continue
                assert response.status_code in (200, 404), response.text
                reads[0] += 1
                await asyncio.sleep(0.05)

        watchers = [asyncio.create_task(long_poll(i)) for i in range(LONG_POLLS)]
        watchers += [asyncio.create_task(socket(LONG_POLLS + i)) for i in range(SOCKETS)]
        await asyncio.sleep(3)  # every watcher connected and parked
        samples = [(process_fds(pid), process_rss(pid))]
        load = [asyncio.create_task(writer(w)) for w in range(WRITERS)] + [asyncio.create_task(reader(r)) for r in range(READERS)]
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(min(5.0, seconds / 6))
            for task in watchers + load:
                if task.done() and task.exception() is not None:
                    raise task.exception()
            samples.append((process_fds(pid), process_rss(pid)))
        stop.set()
        await asyncio.gather(*load)
        last = max(revision for revision, _, _ in acks)
        deadline = time.monotonic() + 120
        while min(cursors) < last and time.monotonic() < deadline:  # bounded catch-up
            await asyncio.sleep(0.5)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    expected = sorted(acks)
    assert len(expected) > 20 * seconds / 30, len(expected)
    for i, events in enumerate(seen):
        kind = "long poll" if i < LONG_POLLS else "WebSocket"
        assert events == expected, (f"{kind} {i}: {len(events)} events, expected {len(expected)}; first difference at "
                                    f"{next((j for j, (a, b) in enumerate(zip(events, expected, strict=False)) if a != b), min(len(events), len(expected)))}")
    fds = [fd for fd, _ in samples]
    rss = [r // 2**20 for _, r in samples]
    # Bounded while it runs (no growth per request or per event), and the watchers' descriptors come back.
    assert max(fds) - fds[0] <= 64, fds
    assert max(rss) - rss[0] <= 100, rss
    # Once the watchers are gone, what stays open is the bounded pool of SQLite readers (16 connections of up to
    # 3 descriptors each) and little else.
    deadline = time.monotonic() + 20
    while process_fds(pid) > fds_before + 64 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert process_fds(pid) <= fds_before + 64, (process_fds(pid), fds_before)
    assert retries[0] <= LONG_POLLS * seconds / 10, retries  # rare: not a way of hiding a server that drops requests
    return {"writes": len(acks), "reads": reads[0], "events": sum(len(events) for events in seen),
            "fds": f"{fds[0]}→{max(fds)}", "rss": f"{rss[0]}→{max(rss)}"}
