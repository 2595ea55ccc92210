"""Reads answered through the server's hold (``local/response_hold.py``): the response is sent at once and held
back by the connection until the read's record is appended. The app runs under uvicorn with ``tessera serve``'s
protocol, in a thread of this process (so the audit log's files can be broken under it), and is spoken to over
raw sockets on 127.0.0.1, to see exactly which bytes leave and when."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import uvicorn

from tessera.core.backends.factory import build
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tessera.local.http_limits import uvicorn_options
from tests.backends import break_audit, mend_audit
from tests.servers import free_port

ROOT_TOKEN = "tsr_response-hold-root-token-0123456789"


class Served:
    def __init__(self, container, port: int) -> None:
        self.container = container
        self.port = port

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def records(self, request_id: str) -> list:
        self.container.access.audit_log.flush()
        return [e for e in self.container.access.stores.query(key=None, service=None, since=None, limit=500) if e.request_id == request_id]


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(container), host="127.0.0.1", port=port, log_level="warning", **uvicorn_options({})))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        served = Served(container, port)
        with served.connect() as sock:
            sock.sendall(request("PUT", "/config/held.value", "seed", body=b'{"value": "the-held-value"}'))
            assert response_of(sock)[0] == 201
        yield served
    finally:
        server.should_exit = True
        thread.join(20)
        container.close()


def request(method: str, path: str, request_id: str, body: bytes = b"", version: str = "1.1") -> bytes:
    head = f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ROOT_TOKEN}\r\nX-Request-Id: {request_id}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def response_of(sock: socket.socket, pending: bytearray | None = None) -> tuple[int, dict[str, str], bytes]:
    """One whole response read off ``sock`` (bytes past it stay in ``pending``)."""
    data = pending if pending is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {bytes(data)!r}"
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        rest += chunk
    data[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def closed(sock: socket.socket) -> bool:
    """True when the server closed the connection (whatever it still had to say was read before)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_pipelined_reads_are_answered_in_order_each_after_its_record(served):
    """Three reads in one packet: uvicorn runs them one after another on the connection, each holding its response
    while the one before is still held; the answers come back whole, in order, and every read is on record."""
    ids = ["held-1", "held-2", "held-3"]
    with served.connect() as sock:
        sock.sendall(b"".join(request("GET", "/config/held.value", rid) for rid in ids))
        pending = bytearray()
        answers = [response_of(sock, pending) for _ in ids]
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == [(200, rid) for rid in ids]
    assert all(orjson.loads(body)["value"] == "the-held-value" for _, _, body in answers)
    for rid in ids:
        assert [(e.action, e.status) for e in served.records(rid)] == [("config.read", 200)]


def test_a_connection_closing_after_its_answer_closes_once_the_held_answer_is_out(served):
    """HTTP/1.0 without keep-alive: uvicorn closes the connection after the response, which is still held then;
    the close waits for the bytes."""
    with served.connect() as sock:
        sock.sendall(request("GET", "/config/held.value", "held-close", version="1.0"))
        status, _, body = response_of(sock)
        assert status == 200 and orjson.loads(body)["value"] == "the-held-value"
        assert closed(sock)


def test_a_read_whose_record_cannot_be_appended_gets_only_a_503(served):
    """The request log's files fail (ENOSPC) after the read's response was sent into the hold: the client gets the
    contract's 503 and none of the value, and the connection closes (a held answer is all or nothing)."""
    break_audit(served.container)
    try:
        with served.connect() as sock:
            sock.sendall(request("GET", "/config/held.value", "held-refused"))
            pending = bytearray()
            status, headers, body = response_of(sock, pending)
            assert status == 503 and headers["x-request-id"] == "held-refused"
            assert headers["connection"] == "close" and headers["content-type"] == "application/json"
            assert orjson.loads(body)["error"] == {"code": "unavailable", "message": "the audit log cannot be written; the request was not served", "request_id": "held-refused"}
            rest = bytes(pending)
            assert closed(sock)
        assert b"the-held-value" not in rest
    finally:
        mend_audit(served.container)


def test_nothing_of_a_read_leaves_while_its_record_waits(served, monkeypatch):
    """A flush hangs in its fsync: past ``STALLED_FLUSH_SECONDS`` a read's record goes to the writer thread, stuck
    behind it. Not one byte of the read's answer leaves meanwhile; when the wait runs out the answer is a 503."""
    import tessera.core.audit as audit_module
    import tessera.handlers.auditing as auditing

    monkeypatch.setattr(auditing, "AUDIT_WAIT_SECONDS", 1.0)
    monkeypatch.setattr(audit_module, "STALLED_FLUSH_SECONDS", 0.1)
    real_fdatasync = os.fdatasync
    hanging, release = threading.Event(), threading.Event()

    def fdatasync_that_hangs(fd: int) -> None:
        hanging.set()
        release.wait(20)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync_that_hangs)
    try:
        with served.connect() as sock:
            sock.sendall(request("GET", "/config/held.value", "held-first"))
            assert response_of(sock)[0] == 200  # appended at once; the flush that follows hangs
            assert hanging.wait(5)
            time.sleep(0.2)
            started = time.monotonic()
            sock.sendall(request("GET", "/config/held.value", "held-waiting"))
            sock.settimeout(0.6)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(10)
            status, headers, body = response_of(sock)
            assert status == 503 and headers["x-request-id"] == "held-waiting" and b"the-held-value" not in body
            assert 0.9 < time.monotonic() - started < 5
    finally:
        release.set()


def test_held_bytes_go_out_when_the_last_hold_is_released_and_never_after_a_refusal():
    """:class:`ResponseHold` on a real TCP transport: nested holds keep everything until the last is released (a
    response never overtakes its record, nor one written before it); a refusal sends only itself, then closes."""
    from types import SimpleNamespace

    from tessera.local.response_hold import ResponseHold

    async def scenario() -> tuple[bytes, bytes, bytes]:
        loop = asyncio.get_running_loop()
        transports: asyncio.Queue[asyncio.Transport] = asyncio.Queue()

        class Accepting(asyncio.Protocol):
            def connection_made(self, transport):  # type: ignore[override]
                transports.put_nowait(transport)

        server = await loop.create_server(Accepting, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        output = ResponseHold(await transports.get(), SimpleNamespace(default_headers=[(b"date", b"today")]))

        async def received(seconds: float = 0.2) -> bytes:
            try:
                return await asyncio.wait_for(reader.read(65536), seconds)
            except TimeoutError:
                return b""

        output.hold()
        output.write(b"first ")
        output.hold()
        output.write(b"second")
        output.release()
        while_one_held = await received()
        output.release()
        after_both = await received(5)
        output.hold()
        output.write(b"never sent")
        output.refuse(503, [(b"content-length", b"4")], b"gone")
        refused = await reader.read()  # to the end: the connection closes
        writer.close()
        server.close()
        return while_one_held, after_both, refused

    while_one_held, after_both, refused = asyncio.run(scenario())
    assert while_one_held == b""
    assert after_both == b"first second"
    assert refused.startswith(b"HTTP/1.1 503 ") and refused.endswith(b"\r\n\r\ngone")
    assert b"date: today\r\n" in refused and b"connection: close\r\n" in refused and b"never sent" not in refused


def test_a_held_answers_callback_that_raises_leaves_no_other_answer_of_its_batch_waiting(caplog):
    """The turn's records are answered in one loop over their callbacks: one that raises is logged, and the
    callbacks after it still run (else their connections would hold their answers for good)."""
    from tessera.core.access_model import AuditEntry
    from tessera.core.audit import DisabledAuditLog
    from tessera.core.model import utcnow
    from tessera.handlers.auditing import AuditQueue

    answered: list[str] = []

    def broken(error: BaseException | None) -> None:
        raise RuntimeError("a callback's own failure")

    async def turn() -> None:
        queue = AuditQueue(DisabledAuditLog())
        for request_id, then in (("first", broken), ("second", lambda error: answered.append("second" if error is None else "error"))):
            queue.record_then(AuditEntry.response(utcnow(), request_id, "config.read", "allowed", 200, None, None, None, None, None, None, None, None, "GET", "/"), then, 503)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert answered == ["second"]
    assert "a held response's callback failed" in caplog.text
