"""Limits below the application: what uvicorn's HTTP protocol leaves unbounded (issue 13 §3, §4).

uvicorn's httptools protocol accepts headers of any size (64 MB were taken), waits forever for a request's first
byte, its headers or a body sent at 1 byte/s, accepts connections until the process runs out of file descriptors
(then nobody is served), and answers what it cannot parse in plain text. :class:`LimitedHttpProtocol` is that
protocol with each of these bounded; every refusal is the contract's error shape
``{"error": {"code", "message", "request_id"}}`` with ``X-Request-Id``, then the connection is closed.

Each limit, its default and its setting (``TESSERA_*`` variables; ``docs/reliability.md`` has the table):

====================  =======================  ==========================================================
request line          8 KiB                    ``TESSERA_HTTP_MAX_REQUEST_LINE`` → ``414 uri_too_long``
request head          64 KiB                   ``TESSERA_HTTP_MAX_HEADER_BYTES`` → ``431 headers_too_large``
header count          100                      ``TESSERA_HTTP_MAX_HEADERS`` → ``431 headers_too_large``
head read timeout     10 s                     ``TESSERA_HTTP_HEADER_TIMEOUT`` → ``408 request_timeout``
body read timeout     30 s                     ``TESSERA_HTTP_BODY_TIMEOUT`` → ``408 request_timeout``
keep-alive idle       5 s                      ``TESSERA_HTTP_KEEP_ALIVE`` (also before the first request)
open connections      fd limit − 256           ``TESSERA_HTTP_MAX_CONNECTIONS``: at the cap the longest-idle
                                               connection is closed; with none idle the new one gets ``503``
WebSocket message     1 MiB                    ``TESSERA_WS_MAX_MESSAGE``
====================  =======================  ==========================================================

"Idle" is a connection on which no request is being served: between requests, or still sending a request's head.
A request being served (a long poll, a slow handler, a body being read) is never closed to make room.

>>> limits = HttpLimits.from_env({"TESSERA_HTTP_MAX_HEADERS": "50"})
>>> limits.max_headers, limits.max_header_bytes
(50, 65536)
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import resource
import uuid
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tessera.handlers.asgi import HOLD_EXTENSION
from tessera.local.response_hold import ResponseHold, closing_response

LINGER_SECONDS = 2.0  # how long a refused connection's remaining input is read and dropped before closing
FD_RESERVE = 256  # descriptors kept for what is not a client connection: SQLite files, logs, the listening socket
REQUEST_ID_PATTERN = re.compile(rb"[\x20-\x7e]{1,200}\Z")  # the app's rule for echoing a client's X-Request-Id


def default_max_connections() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - FD_RESERVE)


@dataclass(frozen=True)
class HttpLimits:
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_connections: int = 0  # 0: derived from the file-descriptor limit (default_max_connections)
    ws_max_message: int = 1024 * 1024

    ENV: ClassVar[dict[str, str]] = {
        "max_request_line": "TESSERA_HTTP_MAX_REQUEST_LINE",
        "max_header_bytes": "TESSERA_HTTP_MAX_HEADER_BYTES",
        "max_headers": "TESSERA_HTTP_MAX_HEADERS",
        "header_timeout": "TESSERA_HTTP_HEADER_TIMEOUT",
        "body_timeout": "TESSERA_HTTP_BODY_TIMEOUT",
        "keep_alive": "TESSERA_HTTP_KEEP_ALIVE",
        "max_connections": "TESSERA_HTTP_MAX_CONNECTIONS",
        "ws_max_message": "TESSERA_WS_MAX_MESSAGE",
    }

    @classmethod
    def from_env(cls, environ: dict[str, str] | Any) -> HttpLimits:
        """Defaults, overridden by the ``TESSERA_HTTP_*`` variables set in ``environ``; a bad value is refused."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            variable = cls.ENV[field.name]
            raw = environ.get(variable)
            if not raw:
                continue
            kind = float if field.type == "float" else int
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{variable} must be a number, not {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{variable} must be above 0")
            values[field.name] = value
        limits = cls(**values)
        if not limits.max_connections:
            limits = cls(**{**values, "max_connections": default_max_connections()})
        return limits


def error_bytes(status: int, code: str, message: str, request_id: str, default_headers: list[tuple[bytes, bytes]],
                extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete HTTP/1.1 response in the contract's error shape, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
    return closing_response(status, [*default_headers, (b"content-type", b"application/json"),
                                     (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode()),
                                     *extra_headers], body)  # fmt: skip


class _Refused(Exception):
    """Raised from a parser callback: the request broke a limit (the parser stops at once; httptools re-raises
    it as ``HttpParserCallbackError``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with every resource a client controls bounded (see the module docstring).

    ``limits`` is set on a subclass made by :func:`protocol_class`; uvicorn instantiates one per connection.
    """

    limits: ClassVar[HttpLimits] = HttpLimits(max_connections=1024)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive  # type: ignore[assignment]
        self.head_bytes = 0  # bytes received of the request line and headers not yet complete
        self.header_count = 0
        self.header_size = 0
        self.message_open = False  # a request's first byte arrived, its last not yet
        self.in_head = True  # no request's headers are complete (between requests, or reading its line and headers)
        self.idle_since = self.loop.time()
        self.read_deadline: asyncio.TimerHandle | None = None
        self.deadline_for: str | None = None  # "head" or "body": what the read deadline is waiting for
        self.refused = False
        self.refusal: _Refused | None = None  # set by a parser callback that stops the parser
        self.request_id: str | None = None

    # ------------------------------------------------------------------ connections
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.output = ResponseHold(transport, self.server_state)  # what this connection's request cycles write to
        self.extensions: dict[str, Any] = {HOLD_EXTENSION: self.output}
        self.idle_since = self.loop.time()
        if not self.make_room():
            self.refuse(503, "unavailable", "the server holds as many connections as it may; retry shortly",
                        ((b"retry-after", b"1"),), linger=False)
            return
        # A connection that never sends a byte is closed like an idle keep-alive one (uvicorn arms the timer only
        # after a first response).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def make_room(self) -> bool:
        """At the cap, close the connection idle the longest; False when every other one is serving a request."""
        if len(self.connections) <= self.limits.max_connections:
            return True
        idle = [c for c in self.connections if isinstance(c, LimitedHttpProtocol) and c is not self and c.is_idle()]
        if not idle:
            return False
        min(idle, key=lambda c: c.idle_since).transport.close()
        return True

    def shutdown(self) -> None:
        if self.output.holding:  # a response waiting for its record: the connection closes once it is out
            self.output.close()
            return
        super().shutdown()

    def is_idle(self) -> bool:
        serving = (self.cycle is not None and not self.cycle.response_complete) or self.output.holding
        return not serving and not self.pipeline and not self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_read_deadline()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ bytes in
    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self.refusal is None:
                self.refuse(400, "invalid_request", "malformed HTTP request")
            else:
                self.refuse(self.refusal.status, self.refusal.code, self.refusal.message)
            return
        if self.refused:
            return
        if not self.message_open:
            self.cancel_read_deadline()
            return
        if self.in_head:
            # httptools keeps an unfinished header in memory until its end arrives: count what it holds.
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self.refuse(431, "headers_too_large", f"the request's headers exceed {self.limits.max_header_bytes} bytes")
                return
        # A deadline runs from the first byte of the head (or of the body) and is not pushed back by more bytes:
        # a client trickling one byte a second is still cut off. Set only when a read spans several packets.
        wanted = "head" if self.in_head else "body"
        if self.deadline_for != wanted:
            seconds = self.limits.header_timeout if self.in_head else self.limits.body_timeout
            self.set_read_deadline(seconds, wanted)

    def handle_websocket_upgrade(self) -> None:
        self.cancel_read_deadline()  # the transport now belongs to the WebSocket protocol
        self.message_open = False
        self.in_head = False
        super().handle_websocket_upgrade()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.message_open = True
        self.in_head = True
        self.head_bytes = 0
        self.header_count = 0
        self.header_size = 0
        self.request_id = None
        self.scope["extensions"] = self.extensions  # type: ignore[typeddict-item]  # the hold (handlers/asgi.py)

    def stop(self, status: int, code: str, message: str) -> None:
        """Stop the parser from one of its callbacks; ``data_received`` answers with this refusal."""
        self.refusal = _Refused(status, code, message)
        raise self.refusal

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line:
            self.stop(414, "uri_too_long", f"the request line exceeds {self.limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            self.stop(431, "headers_too_large", f"a request has at most {self.limits.max_headers} headers")
        self.header_size += len(name) + len(value) + 4  # "name: value\r\n", exact for heads read in one piece
        if self.header_size + len(self.url) > self.limits.max_header_bytes:
            self.stop(431, "headers_too_large", f"the request's headers exceed {self.limits.max_header_bytes} bytes")
        if name.lower() == b"x-request-id" and REQUEST_ID_PATTERN.match(value):
            self.request_id = value.decode("ascii")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = self.output  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.message_open = False
        self.in_head = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        super().on_response_complete()

    # ------------------------------------------------------------------ deadlines and refusals
    def set_read_deadline(self, seconds: float, what: str) -> None:
        self.cancel_read_deadline()
        self.deadline_for = what
        self.read_deadline = self.loop.call_later(seconds, self.read_timed_out, what, seconds)

    def cancel_read_deadline(self) -> None:
        self.deadline_for = None
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def read_timed_out(self, what: str, seconds: float) -> None:
        self.read_deadline = None
        self.deadline_for = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # answered already (without reading the body): just stop waiting for it
            return
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's later response goes nowhere; its receive() sees a disconnect
            self.cycle.message_event.set()
        self.refuse(408, "request_timeout", f"the request's {'headers' if what == 'head' else 'body'} did not arrive within {seconds:g} s")

    def refuse(self, status: int, code: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = (),
               linger: bool = True) -> None:
        """Answer in the contract's error shape and close (below the app: nothing of the request was served).

        With ``linger`` the write side is shut first and what the client still sends is read and dropped for up to
        ``LINGER_SECONDS``: closing with unread bytes pending resets the connection, and the client would never
        read the answer (a client still sending an 8 MB header, say).
        """
        self.refused = True
        self.cancel_read_deadline()
        self._unset_keepalive_if_required()
        self.idle_since = float("-inf")  # the first to go if room is needed
        if self.transport.is_closing():
            return
        request_id = self.request_id or uuid.uuid4().hex
        self.transport.write(error_bytes(status, code, message, request_id, self.server_state.default_headers, extra))
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


class EnvironmentHttpProtocol(LimitedHttpProtocol):
    """The protocol of ``tessera serve --workers N``'s worker processes: uvicorn pickles the protocol class by
    name to start them, so it cannot be one made by :func:`protocol_class`. Its limits are read from the
    environment each worker inherits (already validated by the parent, through :func:`server_options`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.limits = _environment_limits()  # type: ignore[misc]
        super().__init__(*args, **kwargs)


@functools.cache
def _environment_limits() -> HttpLimits:
    return HttpLimits.from_env(os.environ)


def protocol_class(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """A :class:`LimitedHttpProtocol` bound to ``limits`` (uvicorn takes a class and makes one per connection)."""
    return type("TesseraHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


def server_options(environ: dict[str, str] | Any, tls_cert: str | None = None, tls_key: str | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` options of ``tessera serve``: the limited protocol, no ``Server`` banner, TLS.

    A bad limit or TLS file ends the process with one line on stderr (exit status 1), before anything starts.
    """
    try:
        return uvicorn_options(environ, tls_cert, tls_key)
    except (ValueError, TlsFileError) as exc:
        raise SystemExit(f"tessera serve: refusing to start: {exc}") from None


def uvicorn_options(environ: dict[str, str] | Any, tls_cert: str | None = None, tls_key: str | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` options without the exit: raises ``ValueError`` or :class:`TlsFileError`."""
    limits = HttpLimits.from_env(environ)
    # X-Forwarded-For / -Proto are believed only from the proxies named here: by default from nobody, since uvicorn's
    # default (believe 127.0.0.1) would let any local client pick the address that audit and damping see.
    forwarded_from = environ.get("TESSERA_FORWARDED_ALLOW_IPS") or None
    options: dict[str, Any] = {
        "http": protocol_class(limits),
        "timeout_keep_alive": limits.keep_alive,
        "server_header": False,
        "ws_max_size": limits.ws_max_message,
        "proxy_headers": forwarded_from is not None,
        "forwarded_allow_ips": forwarded_from,
    }
    options.update(tls_options(tls_cert, tls_key))
    return options


class TlsFileError(Exception):
    """A ``--tls-cert`` / ``--tls-key`` file that is missing, unreadable or not PEM of the right kind."""


def tls_options(cert: str | None, key: str | None) -> dict[str, Any]:
    """uvicorn's ssl options for ``--tls-cert``/``--tls-key``, after checking both load (one clear error if not)."""
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise TlsFileError("--tls-cert and --tls-key go together: give both")
    import ssl

    for label, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsFileError(f"{label} {path}: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError(f"--tls-cert {cert} / --tls-key {key} do not load as a PEM certificate and its key: "
                           f"{getattr(exc, 'reason', None) or exc}") from None
    return {"ssl_certfile": cert, "ssl_keyfile": key}
