"""``create_app``: the FastAPI app (routers, the one place where errors become HTTP responses) behind the ASGI
front (``handlers/asgi.py``: request ids, headers, auditing, the fast read path)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.core.backends.factory import Container
from tessera.core.errors import TesseraError
from tessera.handlers import audit, auth, config, envs, health, policies, watch
from tessera.handlers.asgi import TesseraASGI, log_failure
from tessera.handlers.render import error_body

logger = logging.getLogger("tessera")
HTTP_CODES = {404: "no_route", 405: "method_not_allowed", 413: "payload_too_large", 400: "invalid_request"}


def error_response(request: Request, status: int, code: str, message: str, **extra: object) -> Response:
    request_id = request.scope.get("state", {}).get("request_id", "")
    status, headers, body = error_body(status, code, message, request_id, **extra)
    retry_after = extra.get("retry_after")  # 429 too_many_requests: also as the header
    return Response(body, status_code=status, media_type="application/json",
                    headers={"Retry-After": str(retry_after)} if retry_after is not None else None)


def install_openapi(api: FastAPI) -> None:
    """Serve the declared document (``handlers/openapi.py``) at ``/openapi.json``, made on its first request: its
    pydantic models (a tenth of a Lambda container's import) load only when someone asks for it."""

    def document() -> dict[str, Any]:
        if api.openapi_schema is None:
            from tessera.handlers import openapi

            api.openapi_schema = openapi.build(api)
        return api.openapi_schema

    api.openapi = document  # type: ignore[method-assign]


def create_api(container: Container, *, console: bool = True) -> FastAPI:
    """The FastAPI app alone (routes, error mapping); serve :func:`create_app`, which puts the front before it."""
    # No trailing-slash redirects: ``/policies/`` is no route of the API (``404 no_route``), not a bare 307.
    docs = container.settings.docs  # public unless `tessera serve --no-docs`
    api = FastAPI(title="Tessera", version="0.2.0", docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, redirect_slashes=False)  # fmt: skip
    install_openapi(api)  # the declared document (handlers/openapi.py)
    api.state.container = container

    @api.exception_handler(TesseraError)
    async def tessera_error(request: Request, exc: TesseraError) -> Response:
        log_failure(exc)
        return error_response(request, exc.status, exc.code, exc.message, **exc.extra)

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        fields = sorted({".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")) for err in exc.errors()})
        return error_response(request, 400, "invalid_request", f"invalid request: {', '.join(f for f in fields if f) or 'body'}")

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Only the router raises these: a 404 here is a path that is no route of the API (``no_route``), never
        # a missing key (``not_found``), so a client with a wrong base URL sees a configuration error.
        code = HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal")
        message = "no such route in the Tessera API (check the base URL)" if exc.status_code == 404 else str(exc.detail)
        return error_response(request, exc.status_code, code, message)

    @api.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.error("unexpected error: %s", type(exc).__name__)
        return error_response(request, 500, "internal", "internal error")

    api.include_router(health.router)
    api.include_router(config.router)
    api.include_router(envs.router)
    api.include_router(auth.router)
    api.include_router(policies.router)
    api.include_router(audit.router)
    api.include_router(watch.router)
    if console:  # not on Lambda: no WebSocket for /ui/ws there, and its roles grant nothing on UISESSION# items
        from tessera.handlers.ui import mount_console

        mount_console(api)  # /ui, and / redirecting there
    return api


def create_app(container: Container, *, console: bool = True) -> TesseraASGI:
    """The application to serve (uvicorn, Mangum, a test client); ``console=False`` leaves out the web console."""
    return TesseraASGI(container, create_api(container, console=console))
