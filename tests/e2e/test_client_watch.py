"""Watches that cannot die unseen, sync and async, against a real ``tessera serve`` (through switchable proxies):
WebSocket first and long-poll fallback, resuming on another node without gaps, and every error reaching
``on_error``: a proxy's HTML page and a revoked token stop the watch (``alive`` false, ``wait()`` raises), a
raising callback does not. ``tessera watch`` exits non-zero with one ``error:`` line when it cannot go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import pytest

from tessera import ConfigurationError, Event, Unauthenticated, Unavailable
from tessera.client.sdk.watch import MAX_ERRORS, WatchState
from tests.e2e.sdk_fixtures import TOKEN
from tests.netfakes import PlainHTTPServer, SwitchableProxy
from tests.servers import REPO, ServerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
FAST = {"timeout": 2.0, "backoff": 0.02, "max_backoff": 0.1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("watch-sdk") / "data", root_token=TOKEN).start()
    yield process
    process.stop()


@pytest.fixture
def proxies(server):
    made = [SwitchableProxy(server.port) for _ in range(2)]
    yield made
    for proxy in made:
        proxy.close()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Recorder:
    """Collects events and errors from a watch's thread or task."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.errors: list[BaseException] = []

    def event(self, event: Event) -> None:
        self.events.append(event)

    def error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def values(self) -> list:
        return [event.value for event in self.events]


def limited_token(server: ServerProcess) -> tuple[str, str]:
    """A token that may read ``w.*`` (id, token string), for revoking mid-watch."""
    with server.client() as admin:
        admin.put("/policies/watch-sdk", json={"rules": [{"path": "*", "capabilities": ["read", "write"]}]})
        body = admin.post("/auth/tokens", json={"service": "watcher", "policies": ["watch-sdk"]}).json()
    return body["id"], body["token"]


def revoke(server: ServerProcess, token_id: str) -> None:
    with server.client() as admin:
        assert admin.delete(f"/auth/tokens/{token_id}").status_code == 204


def test_events_arrive_in_order_over_websocket(make, server):
    client = make(server.url, **FAST)
    prefix = unique("ws")
    seen = Recorder()
    handle = client.watch(f"{prefix}.*", seen.event, on_error=seen.error)
    for i in range(10):
        client.put(f"{prefix}.k{i % 3}", i)
    client.delete(f"{prefix}.k0")
    assert wait_for(lambda: len(seen.events) == 11)
    assert seen.values()[:10] == list(range(10)) and seen.events[-1].deleted and not seen.events[-1].has_value
    assert handle.transport == "websocket" and handle.alive and seen.errors == []
    assert handle.cursor == seen.events[-1].revision
    handle.stop()
    assert not handle.alive and handle.error is None


def test_long_poll_when_the_websocket_is_refused(make, proxies):
    proxy = proxies[0]
    proxy.mode = "no-websocket"
    client = make(proxy.url, **FAST)
    prefix = unique("lp")
    seen = Recorder()
    handle = client.watch(prefix + ".*", seen.event, on_error=seen.error, poll_timeout=2)
    for i in range(5):
        client.put(f"{prefix}.k", i)
    assert wait_for(lambda: len(seen.events) == 5)
    assert seen.values() == list(range(5)) and handle.transport == "long-poll" and handle.alive
    handle.stop()


def test_resumes_on_another_node_without_gaps_or_repeats(make, proxies):
    first, second = proxies
    client = make([first.url, second.url], **FAST)
    writer = make(second.url)
    prefix = unique("ha")
    seen = Recorder()
    handle = client.watch(prefix + ".*", seen.event, on_error=seen.error)
    for i in range(10):
        writer.put(f"{prefix}.k{i % 2}", i)
    assert wait_for(lambda: len(seen.events) == 10)
    first.mode = "refuse"  # the node the watch was on goes away (its socket is cut)
    for i in range(10, 20):
        writer.put(f"{prefix}.k{i % 2}", i)
    assert wait_for(lambda: len(seen.events) >= 20)
    assert seen.values() == list(range(20))
    assert handle.alive and any(isinstance(e, Unavailable) for e in seen.errors)  # the switch was reported
    handle.stop()


@pytest.mark.parametrize("transport", ["websocket", "long-poll"])
def test_a_proxy_answering_html_stops_the_watch_with_a_configuration_error(make, proxies, transport):
    proxy = proxies[0]
    if transport == "long-poll":
        proxy.mode = "no-websocket"
    client = make(proxy.url, **FAST)
    prefix = unique("html")
    seen = Recorder()
    handle = client.watch(prefix + ".*", seen.event, on_error=seen.error, poll_timeout=2)
    client.put(prefix + ".a", 1)
    assert wait_for(lambda: len(seen.events) == 1)
    proxy.mode = "html"  # from now on a captive portal answers every request with a page
    assert wait_for(lambda: not handle.alive, timeout=20)
    fatal = handle.error
    assert isinstance(fatal, ConfigurationError) and "Corporate proxy" in str(fatal)
    assert seen.errors[-1] is fatal
    with pytest.raises(ConfigurationError):
        handle.wait(1)


@pytest.mark.parametrize("transport", ["websocket", "long-poll"])
def test_a_token_revoked_mid_watch_stops_it(make, server, proxies, transport):
    proxy = proxies[0]
    if transport == "long-poll":
        proxy.mode = "no-websocket"
    token_id, token = limited_token(server)
    client = make(proxy.url, token, **FAST)
    prefix = unique("rv")
    seen = Recorder()
    handle = client.watch(prefix + ".*", seen.event, on_error=seen.error, poll_timeout=5)
    make(server.url).put(prefix + ".a", 1)
    assert wait_for(lambda: len(seen.events) == 1)
    revoke(server, token_id)
    assert wait_for(lambda: not handle.alive, timeout=20)
    assert isinstance(handle.error, Unauthenticated) and handle.error.code == "unauthenticated"
    assert seen.errors[-1] is handle.error


def test_a_raising_callback_reaches_on_error_and_the_watch_goes_on(make, server):
    client = make(server.url, **FAST)
    prefix = unique("cb")
    seen = Recorder()

    def callback(event: Event) -> None:
        if event.value == "poison":
            raise ValueError("cannot apply poison")
        seen.event(event)

    handle = client.watch(prefix + ".*", callback, on_error=seen.error)
    client.put(prefix + ".a", "poison")
    client.put(prefix + ".a", "fine")
    assert wait_for(lambda: len(seen.events) == 1)
    (error,) = seen.errors
    assert isinstance(error, ValueError) and str(error) == "cannot apply poison" and error.__traceback__ is not None
    assert handle.alive and seen.values() == ["fine"] and handle.errors == [error]
    handle.stop()


def test_a_bad_token_stops_the_watch_at_once(make, server):
    client = make(server.url, "tsr_unknown-token-abcdefghijklmnopq", **FAST)
    seen = Recorder()
    handle = client.watch("*", seen.event, on_error=seen.error)
    assert wait_for(lambda: not handle.alive)
    assert isinstance(handle.error, Unauthenticated) and seen.errors == [handle.error]


def test_a_server_that_is_not_tessera_stops_the_watch(make):
    with PlainHTTPServer() as impostor:
        client = make(impostor.url, **FAST)
        seen = Recorder()
        handle = client.watch("*", seen.event, on_error=seen.error)
        assert wait_for(lambda: not handle.alive)
        assert isinstance(handle.error, ConfigurationError) and seen.errors == [handle.error]


def test_the_error_history_is_bounded():
    state = WatchState(["*"], ("default", "default"), 0, 1.0)
    for i in range(MAX_ERRORS * 3):
        state.record(RuntimeError(f"error {i}"))
    assert len(state.errors) == MAX_ERRORS and state.error_count == MAX_ERRORS * 3
    assert str(state.errors[-1]) == f"error {MAX_ERRORS * 3 - 1}"


def cli_watch(url: str, token: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TESSERA_URL": url, "TESSERA_TOKEN": token}
    return subprocess.Popen([sys.executable, "-m", "tessera.client.cli", "watch", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_watch_exits_non_zero_in_one_line_when_it_cannot_continue(server):
    with PlainHTTPServer() as impostor:
        process = cli_watch(impostor.url, TOKEN, "*")
        out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: configuration:")

    token_id, token = limited_token(server)
    prefix = unique("cli")
    process = cli_watch(server.url, token, prefix + ".*")
    try:
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
        reader.start()
        assert wait_for(lambda: bool(first_line) or make_write(server, prefix), timeout=30, interval=0.3)
        assert prefix in first_line[0]
        revoke(server, token_id)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 4  # unauthenticated
    (line,) = err.strip().splitlines()
    assert line.startswith("error: unauthenticated:")


def make_write(server: ServerProcess, prefix: str) -> bool:
    """Write once per call (the CLI may still be connecting); False so ``wait_for`` keeps polling its output."""
    with server.client() as admin:
        admin.put(f"/config/{prefix}.k", json={"value": uuid.uuid4().hex})
    return False


def test_a_refusal_queued_behind_a_close_is_the_error_reported_not_a_node_failure():
    """The server answers a bad auth with an error message and closes (1008). When the close arrives before our
    next ``send``, that send raises ``ConnectionClosed`` with the error still queued: the watch must report the
    refusal (a bad token stops it) and not a node failure (which it would retry, reporting ``Unavailable`` first;
    seen under load in ``test_a_bad_token_stops_the_watch_at_once``). A real WebSocket server on 127.0.0.1, sync
    and asyncio clients."""
    import asyncio
    import time

    from websockets.asyncio.client import connect as connect_async
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
    from websockets.sync.server import serve

    from tessera.client.sdk.watch import error_among, queued_messages, queued_messages_async

    def refuse(ws) -> None:
        ws.recv()
        ws.send('{"type": "error", "code": "unauthenticated", "message": "unknown, expired or revoked token"}')
        ws.close(1008, "unauthenticated")

    with serve(refuse, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        with connect(url) as socket:
            socket.send('{"type": "auth"}')
            time.sleep(0.3)  # the error and the close have arrived
            with pytest.raises(ConnectionClosed):
                socket.send('{"type": "subscribe"}')
            assert isinstance(error_among(queued_messages(socket), url), Unauthenticated)

        async def asynchronous() -> object:
            async with connect_async(url) as socket:
                await socket.send('{"type": "auth"}')
                await asyncio.sleep(0.3)
                with pytest.raises(ConnectionClosed):
                    await socket.send('{"type": "subscribe"}')
                return error_among(await queued_messages_async(socket), url)

        assert isinstance(asyncio.run(asynchronous()), Unauthenticated)
        server.shutdown()
    assert error_among(['{"type": "event"}', b"not json"], url) is None
