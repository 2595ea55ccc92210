"""``create_app``: routers, request ids, and the one place where errors become HTTP responses."""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.core.errors import TesseraError
from tessera.handlers import audit, auth, config, envs, health, policies, watch
from tessera.handlers.audit_middleware import AuditMiddleware
from tessera.handlers.bootstrap import Container

logger = logging.getLogger("tessera")
# Any visible ASCII (and spaces) a client or a tracing proxy uses for ids is echoed; nothing that could split a
# header or a log line.
REQUEST_ID_PATTERN = re.compile(r"[\x20-\x7e]{1,200}\Z")
HTTP_CODES = {404: "no_route", 405: "method_not_allowed", 413: "payload_too_large", 400: "invalid_request"}


def error_response(request: Request, status: int, code: str, message: str, **extra: object) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) or new_request_id()
    body = {"error": {"code": code, "message": message, "request_id": request_id, **extra}}
    return JSONResponse(body, status_code=status, headers={"X-Request-Id": request_id})


def new_request_id() -> str:
    return uuid.uuid4().hex


def create_app(container: Container) -> FastAPI:
    app = FastAPI(title="Tessera", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.container = container
    # Added before the request-id middleware, so it runs inside it: the request id is known here and the
    # id header is added to a 503/429 this middleware substitutes.
    app.add_middleware(AuditMiddleware)

    @app.middleware("http")
    async def request_id_middleware(request: Request, call_next):  # type: ignore[no-untyped-def]
        offered = request.headers.get("x-request-id")
        request.state.request_id = offered if offered and REQUEST_ID_PATTERN.match(offered) else new_request_id()
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    @app.exception_handler(TesseraError)
    async def tessera_error(request: Request, exc: TesseraError) -> JSONResponse:
        if exc.status >= 500:
            # The message is ours and never holds a value; the cause's text may, so it is not logged.
            logger.error("request failed: %s (%s)", exc.code, exc.message)
        return error_response(request, exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")) for err in exc.errors()})
        return error_response(request, 400, "invalid_request", f"invalid request: {', '.join(f for f in fields if f) or 'body'}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Only the router raises these: a 404 here is a path that is no route of the API (``no_route``), never
        # a missing key (``not_found``), so a client with a wrong base URL sees a configuration error.
        code = HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal")
        message = "no such route in the Tessera API (check the base URL)" if exc.status_code == 404 else str(exc.detail)
        return error_response(request, exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error: %s", type(exc).__name__)
        return error_response(request, 500, "internal", "internal error")

    app.include_router(health.router)
    app.include_router(config.router)
    app.include_router(envs.router)
    app.include_router(auth.router)
    app.include_router(policies.router)
    app.include_router(audit.router)
    app.include_router(watch.router)
    return app
