"""Things that sit between a client and a real ``tessera serve`` on 127.0.0.1, or stand in for something that is
not Tessera at all: a TCP proxy whose behaviour can be switched mid-test, and a plain HTTP server.

The proxy works at the TCP level, so HTTP and WebSocket traffic pass through unchanged in ``forward`` mode. It
records the head (request line and headers) of the first request on each connection it accepts, which is enough
to see what a client sent on a fresh connection (a retry after a timeout always opens one).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML_PAGE = b"<html><head><title>Corporate proxy: access denied</title></head><body>blocked</body></html>"
MODES = ("forward", "no-websocket", "html", "hang", "reset", "refuse")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


def _parse_head(data: bytes) -> RecordedRequest | None:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RecordedRequest(parts[0], parts[1], headers)


class SwitchableProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port``. Modes (``proxy.mode = ...``):

    - ``forward``: pass bytes both ways; ``html``: answer every request with a 200 HTML page (a captive proxy);
    - ``no-websocket``: forward, but answer a WebSocket upgrade with ``502`` (a proxy that cannot pass them);
    - ``hang``: read the request and never answer; ``reset``: read the request, then reset the connection;
    - ``refuse``: no listener (connection refused).

    Switching mode cuts the connections it holds, so a held watch or keep-alive connection meets the new mode.
    """

    def __init__(self, upstream_port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.requests: list[RecordedRequest] = []
        self._mode = "forward"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self._mode = mode
        self._cut_connections()
        if mode == "refuse":
            self._stop_listening()
        elif self._listener is None:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self._stop_listening()
        self._cut_connections()

    def __enter__(self) -> SwitchableProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger for a moment after a `refuse`
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _cut_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _read_head(self, client: socket.socket) -> bytes:
        data = b""
        client.settimeout(30)
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        recorded = _parse_head(data)
        if recorded is not None:
            with self._lock:
                self.requests.append(recorded)
        return data

    def _serve(self, client: socket.socket) -> None:
        mode = self._mode
        try:
            first = self._read_head(client)
            if not first:
                return
            if mode == "html":
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: "
                               + str(len(HTML_PAGE)).encode() + b"\r\nConnection: close\r\n\r\n" + HTML_PAGE)
                return
            if mode == "no-websocket" and b"upgrade: websocket" in first.lower():
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 0\r\n"
                               b"Connection: close\r\n\r\n")
                return
            if mode == "hang":
                client.settimeout(None)
                while client.recv(65536):
                    pass
                return
            if mode == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            assert self.upstream_port is not None
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._track(upstream)
            upstream.sendall(first)
            client.settimeout(None)
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            self._pipe(client, upstream)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class PlainHTTPServer:
    """Not Tessera: a plain HTTP server on 127.0.0.1 that answers every request with ``status``, ``content_type``
    and ``body`` (an HTML page by default)."""

    def __init__(self, status: int = 200, body: bytes = HTML_PAGE, content_type: str = "text/html; charset=utf-8",
                 headers: dict[str, str] | None = None) -> None:
        answer = (status, body, content_type)
        extra = dict(headers or {})

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                code, payload, ctype = answer
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> PlainHTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
