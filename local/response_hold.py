"""A connection's responses held back until their requests' audit records are appended.

A read's record is appended before its response goes out (the contract's audit rule). Awaiting that append made
every read suspend its task and resume it on the next event-loop turn, and uvicorn then wrote the response's
head and its body with two ``send`` calls: together about a fifth of a read's event-loop time (py-spy, issue 8).
With a hold, the read hands its record over with a callback and sends its response at once: the bytes stay here,
and when the turn's records are appended (one ``write`` for all of them) each held connection gets its bytes in
one ``transport.write``. A record that cannot be appended turns the held response into ``503`` before a byte
of it left (fail closed, as before).

The app finds the hold in ``scope["extensions"]["tessera.hold"]`` when :class:`~tessera.local.http_limits.
LimitedHttpProtocol` serves it; under any other server (Mangum on Lambda) there is none and the app awaits the
record instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE


def closing_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A complete HTTP/1.1 response that closes the connection (``headers`` include the server's defaults)."""
    head = [STATUS_LINE[status]]
    for name, value in [*headers, (b"connection", b"close")]:
        head += [name, b": ", value, b"\r\n"]
    head.append(b"\r\n")
    return b"".join(head) + body


def _dropped(data: bytes) -> None:
    """Where the output of a connection whose held response was refused goes: it is closing."""


class ResponseHold:
    """What a connection's request cycles write to (their ``transport``): the transport itself, or while any of
    its responses is held, a list of the bytes written, in order.

    Holds nest (pipelined requests on one connection can each hold one): the bytes go out when the last is
    released, in the order they were written, so a response never overtakes one written before it, and none
    goes out before its own record is appended."""

    __slots__ = ("transport", "server_state", "write", "_chunks", "_holds", "_close")

    def __init__(self, transport: asyncio.Transport, server_state: Any) -> None:
        self.transport = transport
        self.server_state = server_state  # its default_headers (the Date header) are renewed every second
        self.write: Callable[[Any], None] = transport.write  # rebound while holding: one attribute lookup a write
        self._chunks: list[bytes] = []
        self._holds = 0
        self._close = False  # a close asked for while holding: done once the bytes are out

    @property
    def holding(self) -> bool:
        return self._holds > 0

    def hold(self) -> None:
        """Keep what is written from now on until :meth:`release`."""
        if self._holds == 0:
            self.write = self._chunks.append
        self._holds += 1

    def release(self) -> None:
        """One hold's record is appended: once no hold is left, the held bytes go out in one write."""
        if self._holds == 0:
            return  # refused meanwhile
        self._holds -= 1
        if self._holds:
            return
        chunks, self._chunks = self._chunks, []
        self.write = self.transport.write
        if chunks and not self.transport.is_closing():
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self._close:
            self.transport.close()

    def refuse(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A held request's record could not be appended: nothing held goes out; ``status`` does, then the
        connection closes. What was held after it (pipelined requests on the same connection) is lost with the
        connection, as after any lost response: a change among them may have taken effect, and its record says so."""
        self._holds = 0
        self._chunks = []
        self.write = _dropped
        if self.transport.is_closing():
            return
        self.transport.write(closing_response(status, [*self.server_state.default_headers, *headers], body))
        self.transport.close()

    def close(self) -> None:
        if self._holds:
            self._close = True
        else:
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()
