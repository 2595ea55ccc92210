"""The baselines Tessera is measured against, served by uvicorn (uvloop + httptools) like Tessera is.

- ``bare``: a pure ASGI app answering every request with 100 bytes: the ceiling of this server stack.
- ``fastapi_app``: one FastAPI route returning a small dict (``GET /item``) and ``GET /health``.
- ``longpoll_app``: a plain FastAPI long-poll: ``GET /wait`` parks until ``POST /release`` (then every parked
  request answers a small dict), the baseline for Tessera's parked ``/watch`` requests.

    python -m uvicorn bench.apps:bare --loop uvloop --http httptools --port 9000
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

BODY = b"x" * 100
_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"100")]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """100 bytes for any HTTP request; lifespan acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


fastapi_app = FastAPI()


@fastapi_app.get("/item")
async def item() -> dict[str, Any]:
    return {"key": "svc.db_url", "value": "postgres://db.internal:5432/app", "version": 3, "secret": False}


@fastapi_app.get("/health")
async def fastapi_health() -> dict[str, str]:
    return {"status": "ok"}


longpoll_app = FastAPI()
_released: dict[str, Any] = {"event": None, "revision": 0}


def _event() -> asyncio.Event:
    if _released["event"] is None:
        _released["event"] = asyncio.Event()
    return _released["event"]


@longpoll_app.get("/health")
async def longpoll_health() -> dict[str, str]:
    return {"status": "ok"}


@longpoll_app.get("/wait")
async def wait(timeout: float = 60.0) -> dict[str, Any]:
    event = _event()
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return {"revision": _released["revision"], "events": []}
    return {"revision": _released["revision"], "events": [{"key": "watch.key", "value": _released["revision"]}]}


@longpoll_app.post("/release")
async def release() -> dict[str, int]:
    event = _event()
    _released["revision"] += 1
    _released["event"] = asyncio.Event()  # later waiters park again
    event.set()
    return {"revision": _released["revision"]}
