"""Parked watchers cost nothing until something they watch changes (issue 8, watch fan-out).

- A commit wakes only the waiters whose keys, namespace and environments it concerns; one pass per event loop.
- A parked ``GET /watch`` has no periodic wake-up: its token is re-checked by one sentinel per token, and a client
  that leaves frees its waiter at once (it does not hold memory, or a per-token slot, until its timeout).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tessera.core.backends.factory import build
from tessera.core.model import Action, Change, Scope
from tessera.core.policy import compile_path
from tessera.core.settings import Settings
from tessera.core.watch import ChangeNotifier, Interest
from tessera.handlers.app import create_app

ROOT_TOKEN = "tsr_parked-root-token-0123456789abcdef"


def change(key: str, env: str = "default", namespace: str = "default", revision: int = 1) -> Change:
    return Change(revision=revision, scope=Scope(namespace, env), key=key, version=1, action=Action.CREATE, secret=False)


def interest(pattern: str, envs: tuple[str, ...] = ("default",), namespace: str = "default") -> Interest:
    return Interest(namespace, envs, [compile_path(pattern)])


def test_a_commit_wakes_only_the_waiters_it_concerns():
    async def scenario() -> dict[str, bool]:
        notifier = ChangeNotifier()
        woken: dict[str, bool] = {}

        async def wait(name: str, what: Interest | None) -> None:
            await notifier.wait(0.5, notifier.generation, what)
            woken[name] = True

        names = {
            "auth": interest("auth.*"),
            "auth-again": interest("auth.*"),  # an equal interest: decided once for both (Interest.key)
            "billing": interest("billing.*"),
            "billing-again": interest("billing.*"),
            "auth-in-prod": interest("auth.*", envs=("prod",)),
            "auth-other-namespace": interest("auth.*", namespace="team-b"),
            "inherits-default": interest("auth.*", envs=("staging", "default")),
            "everything": None,
        }
        tasks = {name: asyncio.create_task(wait(name, what)) for name, what in names.items()}
        await asyncio.sleep(0.05)
        assert notifier.waiting == len(names)
        notifier.notify([change("auth.db")])
        await asyncio.sleep(0.1)  # woken waiters finish at once; the others sleep on to their 0.5 s timeout
        early = dict(woken)
        await asyncio.gather(*tasks.values())
        assert notifier.waiting == 0
        return early

    early = asyncio.run(scenario())
    assert early == {"auth": True, "auth-again": True, "inherits-default": True, "everything": True}


def test_a_notification_without_its_changes_wakes_everyone_and_a_missed_one_is_not_slept_through():
    async def scenario() -> None:
        notifier = ChangeNotifier()
        seen = notifier.generation
        notifier.notify([change("billing.x")])  # between a waiter's read and its wait
        loop = asyncio.get_running_loop()
        started = loop.time()
        await notifier.wait(5, seen, interest("auth.*"))
        assert loop.time() - started < 1  # the generation moved: it returns at once to read again
        waiter = asyncio.create_task(notifier.wait(5, notifier.generation, interest("auth.*")))
        await asyncio.sleep(0.05)
        notifier.notify(None)  # the feed could not say what changed: wake every waiter
        await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())


def test_waiters_on_two_event_loops_are_woken_from_a_committing_thread():
    notifier = ChangeNotifier()
    started = threading.Barrier(3)
    results: list[bool] = []

    def run_loop() -> None:
        async def wait() -> None:
            loop = asyncio.get_running_loop()
            began = loop.time()
            waiting = asyncio.create_task(notifier.wait(5, notifier.generation, interest("a.*")))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(started.wait)
            await waiting
            results.append(loop.time() - began < 3)

        asyncio.run(wait())

    threads = [threading.Thread(target=run_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    notifier.notify([change("a.b")])  # from this thread, as a commit in the executor does
    for thread in threads:
        thread.join(10)
    assert results == [True, True]


@pytest.fixture
def app(tmp_path):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    yield create_app(container)
    container.close()


def watch_scope(query: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/watch",
        "raw_path": b"/watch",
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {ROOT_TOKEN}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8200),
    }


def test_a_client_that_leaves_a_parked_watch_frees_it_at_once(app):
    """The ASGI app driven as uvicorn drives it: the request, then (0.3 s later) the client's disconnect."""
    notifier = app.container.service.notifier

    async def scenario() -> tuple[float, list[dict]]:
        gone = asyncio.Event()
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        loop = asyncio.get_running_loop()
        request = asyncio.create_task(app(watch_scope(b"keys=parked.*&timeout=30"), receive, send))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if notifier.waiting:
                break
        assert notifier.waiting == 1, "the watch did not park"
        await asyncio.sleep(0.3)
        assert not request.done()
        left = loop.time()
        gone.set()
        await asyncio.wait_for(request, 5)
        return loop.time() - left, sent

    elapsed, sent = asyncio.run(scenario())
    assert notifier.waiting == 0
    assert elapsed < 2  # not the 30 s timeout
    assert sent[0]["type"] == "http.response.start"
