"""A server-side deadline per request (issue 13 §3), checked only before a commit point.

The HTTP front starts one per request (``Settings.request_deadline``; not for watches and imports, which keep
their own bounds); long loops (listing, export, diff, subtrees, history) and every commit check it. A request past
it fails with ``503 deadline_exceeded`` and nothing changed: the check runs before a commit, never after one, so a
committed write is never reported as failed however long its commit took.

It is a context variable: it follows the request into the threads :class:`~tessera.core.backends.factory.Container`
runs work in (the context is copied), and code that runs outside a request (the CLI, workers) has none.

>>> token = start(10.0); check(); reset(token)
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

from tessera.core.errors import DeadlineExceeded

_DEADLINE: ContextVar[float | None] = ContextVar("tessera_deadline", default=None)


def start(seconds: float | None) -> Token[float | None]:
    """From now, ``seconds`` (None: no deadline); pass the result to :func:`reset` when the request ends."""
    return _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)


def reset(token: Token[float | None]) -> None:
    _DEADLINE.reset(token)


def check() -> None:
    """Raise ``DeadlineExceeded`` when the current request has passed its deadline (call before a commit point)."""
    at = _DEADLINE.get()
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded("the request passed the server's deadline before its commit point; nothing changed")
