"""Fixtures that run one test with the sync and with the async client (import them into a test module)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest

from tessera import AsyncClient, Client

TOKEN = "tsr_client-suite-root-token-abcdefghij"


class AsyncFacade:
    """Drives an ``AsyncClient`` (or an async watch handle) from sync test code: each coroutine it returns is run
    to completion on one event loop living in a thread of its own, so background watch tasks keep running."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                result = attribute(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result

            result = asyncio.run_coroutine_threadsafe(run(), self._loop).result(60)
            if type(result).__name__ == "AsyncWatchHandle":
                return AsyncFacade(result, self._loop)
            return result

        return call

    def __enter__(self) -> AsyncFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture(params=["sync", "async"])
def make(request, loop):  # noqa: F811 - the loop fixture
    """``make(endpoints, token, **options)`` → a client of the parametrized kind (closed after the test)."""
    made: list[Any] = []

    def build(endpoints: Any, token: str | None = TOKEN, **options: Any) -> Any:
        if request.param == "sync":
            client: Any = Client(endpoints, token, **options)
        else:
            async def create() -> AsyncClient:
                return AsyncClient(endpoints, token, **options)

            client = AsyncFacade(asyncio.run_coroutine_threadsafe(create(), loop).result(10), loop)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()



def flavour(client: Any) -> str:
    return "async" if isinstance(client, AsyncFacade) else "sync"
