"""What every console request shares: the signed-in principal (from the session cookie), CSRF checks, the
scope asked for, rendering with the security headers, and refusals as pages.

Each route is wrapped by :func:`console_route`, which names its audit action on the request's auditor (the ASGI
front writes the record, as for any API request: ``/ui`` is an audited prefix) and turns refusals into pages:
no session → the sign-in page with ``401``; a bad CSRF token or a foreign ``Origin`` → ``403``; any
``TesseraError`` → its status and code on an error page.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import APIRouter, Request, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tessera.core.errors import InvalidRequest, PayloadTooLarge, TesseraError, Unauthenticated
from tessera.core.model import Principal, Scope, format_time, parse_scope
from tessera.core.sessions import ConsoleSessions, csrf_matches, csrf_token
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import MAX_BODY_BYTES, get_auditor

HERE = Path(__file__).parent
COOKIE = "tessera_console"
LOGIN_COOKIE = "tessera_console_login"  # the sign-in form's double-submit token (no session exists yet)
COOKIE_PATH = "/ui"
# No inline script or style anywhere: every script and style sheet is a file under /ui/static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # not no-referrer: with it browsers send "Origin: null" on forms
    "cross-origin-opener-policy": "same-origin",
}
router = APIRouter(include_in_schema=False)


def show(value: Any) -> str:
    """A value as JSON text (strings quoted, so ``"5"`` and ``5`` differ); escaped by the template like all text."""
    return json.dumps(value, ensure_ascii=False, indent=None if not isinstance(value, list) else 2)


def when(moment: Any) -> str:
    return format_time(moment) if moment is not None else "—"


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True
)
templates.filters["show"] = show
templates.filters["when"] = when
templates.filters["q"] = lambda text: quote(str(text), safe="")


class SignInRequired(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refused(Exception):
    """A refusal of the console itself (CSRF, Origin): a status, a code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Console:
    """One console request."""

    def __init__(self, request: Request, action: str) -> None:
        self.request = request
        self.container = request.app.state.container
        self.service = self.container.service
        self.sessions: ConsoleSessions = request.app.state.console_sessions
        self.auditor: Auditor = get_auditor(request)
        self.auditor.note(action)
        self.cookie = request.cookies.get(COOKIE)
        self.principal: Principal | None = None
        self.form: dict[str, str] = {}
        self.pairs: list[tuple[str, str]] = []  # the form as sent, repeated names included (promote's checkboxes)
        self.is_admin = False

    # ------------------------------------------------------------------ who
    async def signed_in(self) -> Principal:
        try:
            principal = await self.container.read(self.sessions.resolve, self.cookie)
        except Unauthenticated as exc:
            raise SignInRequired(exc.message) from None
        self.auditor.principal = principal
        self.principal = principal
        self.is_admin = self.service.can(principal, "admin", Scope(), "*")
        return principal

    async def if_signed_in(self) -> None:
        """Name the session's token on the record when there is one (static files and unknown pages need none)."""
        if self.cookie:
            try:
                await self.signed_in()
            except SignInRequired:
                pass

    @property
    def csrf(self) -> str:
        return csrf_token(self.cookie) if self.cookie else ""

    # ------------------------------------------------------------------ input
    def param(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if name in self.form else self.request.query_params.get(name)
        return value if value is not None else default

    def scope(self) -> Scope:
        namespace, env = self.param("namespace") or None, self.param("env") or None
        self.auditor.note_scope(namespace, env)
        scope = parse_scope(namespace, env)
        self.auditor.note(scope=scope)
        return scope

    async def read_form(self) -> dict[str, str]:
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise PayloadTooLarge("request body is larger than 1 MiB")
        raw = bytearray()
        async for chunk in self.request.stream():
            raw.extend(chunk)
            if len(raw) > MAX_BODY_BYTES:
                raise PayloadTooLarge("request body is larger than 1 MiB")
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise InvalidRequest("the form is not UTF-8") from exc
        self.pairs = pairs
        self.form = dict(pairs)
        return self.form

    def same_origin(self) -> None:
        """Browsers send ``Origin`` on every POST and WebSocket: it must be this server as the browser reached it."""
        check_origin(self.request.headers.get("origin"), self.request.headers.get("host"))

    async def change(self) -> dict[str, str]:
        """The form of a change: same origin, a live session, and the session's CSRF token."""
        self.same_origin()
        form = await self.read_form()
        await self.signed_in()
        if not csrf_matches(self.cookie, form.get("csrf")):
            raise Refused(403, "csrf_refused", "this form's CSRF token is missing or wrong: reload the page and try again")
        return form

    # ------------------------------------------------------------------ output
    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("cookie_kept", cookie_kept(self.request))
        body = templates.get_template(template).render(
            ui=self, principal=self.principal, csrf=self.csrf, request_id=self.auditor.request_id, **context
        )
        response = Response(body, status_code=status, media_type="text/html; charset=utf-8")
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response

    def redirect(self, location: str, **headers: str) -> Response:
        response = Response(status_code=303, headers={"location": location, **headers})
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response

    def sign_in_page(self, message: str | None, status: int = 401) -> Response:
        nonce = secrets.token_urlsafe(24)
        here = self.request.url.path + (("?" + self.request.url.query) if self.request.url.query else "")
        target = self.param("next") or (here if self.request.method == "GET" and here.startswith("/ui") else "/ui")
        response = self.render("login.html", status, message=message, login_nonce=nonce, next=safe_next(target))
        response.set_cookie(LOGIN_COOKIE, nonce, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict", max_age=3600)
        return response

    def error_page(self, status: int, code: str, message: str, **extra: Any) -> Response:
        return self.render("error.html", status, error_status=status, code=code, message=message, extra=extra)


def cookie_kept(request: Request) -> bool:
    """Whether a browser keeps a ``Secure`` cookie from this page: over HTTPS, or on a loopback host over plain
    http (127.0.0.0/8, ::1 and localhost are "potentially trustworthy" to browsers). Elsewhere over http the
    sign-in page says why signing in cannot work there, instead of silently coming back to it."""
    if request.url.scheme in ("https", "wss"):
        return True
    host = (request.url.hostname or "").lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_next(target: str) -> str:
    """Where to go after signing in: a console path on this server, nothing else (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui") or "\\" in target:
        return "/ui"
    return target


def check_origin(origin: str | None, host: str | None) -> None:
    if origin is None:
        return  # not a browser's cross-site request (browsers always send it on POST and WebSocket)
    parts = urlsplit(origin)
    if origin == "null" or not host or parts.netloc.lower() != host.lower() or parts.scheme not in ("http", "https"):
        raise Refused(403, "origin_refused", "this request came from another site")


Handler = Callable[[Console], Awaitable[Response]]


def console_route(path: str, action: str, methods: tuple[str, ...] = ("GET",)) -> Callable[[Handler], Handler]:
    """Register ``handler`` at ``path``, named after its audit action, with refusals rendered as pages."""

    def register(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            ui = Console(request, action)
            try:
                return await handler(ui)
            except SignInRequired as exc:
                return ui.sign_in_page(exc.message)
            except Refused as exc:
                return ui.error_page(exc.status, exc.code, exc.message)
            except TesseraError as exc:
                return ui.error_page(exc.status, exc.code, exc.message, **exc.extra)

        endpoint.__name__ = handler.__name__
        router.add_api_route(path, endpoint, methods=list(methods), name=action)
        return handler

    return register


STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
