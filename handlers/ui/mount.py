"""Mounting the console on the FastAPI app: imports every page module (importing one registers its routes on
``console.router``), so ``console.py`` itself imports none of them and every dependency points one way.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response

from tessera.core.backends.memory_sessions import MemorySessionStore
from tessera.core.sessions import SESSION_SECONDS, ConsoleSessions
from tessera.handlers.ui import admin, live, pages  # noqa: F401 - importing registers their routes
from tessera.handlers.ui.console import HERE, STATIC, router


def install(api: Any) -> None:
    """Mount the console on ``api`` (``handlers/app.py``)."""
    container = api.state.container
    store = container.sessions
    if store is None:
        store = MemorySessionStore()
    api.state.console_sessions = ConsoleSessions(store, container.authenticator, SESSION_SECONDS)
    api.state.console_static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
    api.include_router(router)
    api.include_router(live.router)
    api.add_api_route("/", root_redirect, methods=["GET"], include_in_schema=False, name="ui.root")
    api.include_router(pages.fallback)


async def root_redirect() -> Response:
    return Response(status_code=307, headers={"location": "/ui"})
