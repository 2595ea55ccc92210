"""``tessera serve``: build the container, settle the root token, import the startup file, run uvicorn."""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import uvicorn

from tessera.core.backends.factory import Container, build
from tessera.core.formats import parse_content
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tessera.local.files import prepare_data_dir
from tessera.local.http_limits import server_options

SAMPLE_CONFIG = Path(__file__).with_name("sample-config.yaml")
DEV_TOKEN_FILE = "root-token"


def settle_root_token(container: Container, settings: Settings) -> tuple[str | None, str]:
    """Returns (token to print or None, a note). Only dev mode keeps the token string on disk (mode 0600)."""
    authenticator = container.authenticator
    if settings.root_token:
        return settings.root_token if settings.dev else None, "root token from --root-token / TESSERA_ROOT_TOKEN"
    token_file = Path(settings.data_dir) / DEV_TOKEN_FILE
    if settings.dev and token_file.exists():
        token = token_file.read_text().strip()
        authenticator.set_root_token(token)
        return token, f"dev mode: root token kept in {token_file}"
    if settings.dev:
        from tessera.core.tokens import generate_token

        token = generate_token()
        authenticator.set_root_token(token)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token, f"dev mode: root token kept in {token_file}"
    generated = authenticator.ensure_root_token()
    if generated is not None:
        return generated, "generated on first start; only its hash is stored: save it now, it is not shown again"
    return None, "the root token was shown at first start and is not stored (pass --root-token to replace it)"


class StartError(Exception):
    """``tessera serve`` cannot start: the message names what to fix (one line, exit status 2)."""


CONFIG_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv"}
SETTING_NAMES = {
    "root_token": "--root-token / TESSERA_ROOT_TOKEN", "backend": "--backend / TESSERA_BACKEND",
    "data_dir": "--data-dir / TESSERA_DATA_DIR", "root_token_sha256": "TESSERA_ROOT_TOKEN_SHA256",
}


def settings_problem(exc: Exception) -> str:
    """A refused setting as one line naming the flag or variable (never the value: it may be a token)."""
    parts = []
    for error in getattr(exc, "errors", lambda: [])():
        field = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if field == "backend":
            message = "must be local or aws"
        name = SETTING_NAMES.get(field) or (f"TESSERA_{field.upper()}" if field else "")
        if not name and "root token" in message:
            name = SETTING_NAMES["root_token"]
        parts.append(f"{name}: {message}" if name else message)
    return "; ".join(parts) or str(exc)


def config_format(path: Path) -> str:
    fmt = CONFIG_FORMATS.get(path.suffix.lower())
    if fmt is None and path.name.startswith(".env"):
        fmt = "dotenv"
    if fmt is None:
        raise StartError(f"--config-file {path}: name it .json, .yaml, .yml or .env (the name says the format)")
    return fmt


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file parsed (refused in one line when missing, unreadable or malformed), before anything starts."""
    from tessera.core.errors import TesseraError

    fmt = config_format(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StartError(f"--config-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartError(f"--config-file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return parse_content(fmt, text)
    except TesseraError as exc:
        cause = exc.__cause__
        mark = getattr(cause, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        if where == "" and isinstance(cause, ValueError) and getattr(cause, "lineno", None):
            where = f" (line {cause.lineno}, column {cause.colno})"  # type: ignore[attr-defined]
        raise StartError(f"--config-file {path}: {exc.message}{where}") from None


def import_config_file(container: Container, path: Path, values: dict[str, Any] | None = None) -> str:
    """Apply the config file by the rule of :mod:`tessera.local.config_file` (never reverting an API change)."""
    from tessera.local.config_file import apply_file

    return apply_file(container, read_config_file(path) if values is None else values).summary()


LOCK_FILE = "serve.lock"
_held_locks: list[Any] = []  # open lock files, held for the process's lifetime


def lock_data_dir(data_dir: Path) -> None:
    """One ``tessera serve`` per data directory: an exclusive ``flock`` on ``serve.lock``, held until the process
    ends (the kernel releases it on any exit, ``kill -9`` included). The workers of one serve do not take it: their
    parent holds it for them. ``tessera keys`` and ``tessera audit verify`` run beside a live server and do not
    take it either."""
    import fcntl

    path = Path(data_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise StartError(f"the data directory {data_dir} is in use by another tessera serve{by}: stop it, or give this "
                         "one another --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks.append(fd)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says "listening" (a taken port is one clear line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        hint = " (another server on that port? pick another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise StartError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    sock.set_inheritable(True)
    return sock


class RequestLines:
    """The dev console's request log: one short line per request (the audit log keeps the full records)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def watch_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "websocket.accept":
                status.append(101)
            await send(message)

        try:
            await self.app(scope, receive, watch_send)
        finally:
            path = scope.get("path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            target = (path + ("?" + query if query else ""))[:120]
            method = scope.get("method", "WS")
            shown = status[0] if status else "-"
            took = (time.perf_counter() - started) * 1000
            print(f"{time.strftime('%H:%M:%S')} {method} {target} {shown} {took:.1f}ms", flush=True)


# The collector's thresholds once the app is built: a young collection after 50,000 net allocations instead of
# 700. A request allocates a few hundred objects (its audit record among them) and frees nearly all by reference
# counting, so the default ran a collection every few requests, each walking the young objects of thousands of
# open connections and parked watchers. Measured under wrk: plain GET ~160 -> ~100-125 µs of CPU per request;
# 10,000 parked watchers released in 1.4 s instead of 2.2-2.7 s. Cyclic garbage waits longer (bounded by the count).
GC_THRESHOLDS = (50_000, 20, 20)


def settle_heap() -> None:
    """Once the app is built: move every object made so far (modules, the app, its routes and models, hundreds of
    thousands) out of the garbage collector's reach with ``gc.freeze``, and space collections out
    (``GC_THRESHOLDS``). A full collection walks every tracked object; with the app's in the walk, each stalled
    the event loop ~40 ms, the p99 of a loaded read (measured: p99 56-64 ms with them, 10 ms without)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def worker_app() -> object:
    """The app of one worker process of ``tessera serve --workers N`` (uvicorn calls this factory in each one).

    Settings come from the environment the parent prepared; the parent has already settled the root token and
    imported the config file. Each worker has its own caches and audit writer over the shared data directory:
    SQLite serializes the writers, the read stamp keeps every cache exact, the change log feeds every watcher.
    """
    from tessera.handlers.app import create_app

    settings = Settings.from_env()
    container = build(settings)
    app = create_app(container)
    app.api.router.on_shutdown.append(container.close)
    settle_heap()
    return RequestLines(app) if settings.dev else app


def serve(
    host: str = "127.0.0.1",
    port: int = 8200,
    data_dir: Path = Path(".tessera"),
    config_file: Path | None = None,
    root_token: str | None = None,
    dev: bool = False,
    backend: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    workers: int = 1,
    watch_config: bool = False,
    docs: bool = True,
) -> None:
    """Start the server. Every setting is checked before anything is opened; a bad one raises :class:`StartError`
    (or ``SystemExit`` with one line). "listening" is printed once the port is bound."""
    from pydantic import ValidationError

    if dev:
        host = "127.0.0.1"
        if config_file is None:
            config_file = SAMPLE_CONFIG
    if not 1 <= port <= 65535:
        raise StartError(f"--port {port}: a port is 1-65535")
    try:
        settings = Settings.from_env(data_dir=data_dir, root_token=root_token, dev=dev or None, backend=backend,
                                     docs=None if docs else False)  # fmt: skip
    except ValidationError as exc:
        raise StartError(settings_problem(exc)) from None
    if watch_config and config_file is None:
        raise StartError("--watch-config watches the --config-file: give one")
    values = read_config_file(Path(config_file)) if config_file is not None else None
    prepare_data_dir(settings.data_dir)  # 0700, files 0600: tightens an older release's, refuses if it cannot
    http_options = server_options(os.environ, tls_cert, tls_key)  # limits, TLS: a bad one refused before anything
    if settings.backend == "local":
        lock_data_dir(Path(settings.data_dir))
    sock = bind(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    container = build(settings)
    token, note = settle_root_token(container, settings)
    if config_file is not None:
        summary = import_config_file(container, Path(config_file), values)
        print(f"Imported {config_file}: {summary}", flush=True)
    url = f"{'https' if tls_cert else 'http'}://{host}:{port}"
    print(f"Tessera ({settings.backend} backend, data in {settings.data_dir}) listening on {url}", flush=True)
    if token is not None:
        print(f"Root token: {token}", flush=True)
    print(f"  ({note})", flush=True)
    print("In another terminal:", flush=True)
    print(f"  export TESSERA_ADDR={url}", flush=True)
    if token is not None:
        print(f"  export TESSERA_TOKEN={token}", flush=True)
    print('  tessera get database.host    # or: curl -H "Authorization: Bearer $TESSERA_TOKEN" '
          "$TESSERA_ADDR/config/database.host", flush=True)
    print(f"Web console: {url}/ui (sign in with a token)", flush=True)
    watcher = None
    if watch_config and config_file is not None:
        from tessera.local.config_file import ConfigWatcher

        watcher = ConfigWatcher(container, Path(config_file), read_config_file).start()
        print(f"Watching {config_file}: edits are applied while running (same rule as at start)", flush=True)
    if workers > 1:
        if watcher is None:
            container.close()  # each worker opens its own (the watcher keeps this one to write the file's changes)
        # The workers read their settings from the environment (never the root token: its digest is in the store).
        os.environ["TESSERA_DATA_DIR"] = str(Path(settings.data_dir).resolve())
        os.environ["TESSERA_BACKEND"] = settings.backend
        os.environ["TESSERA_DOCS"] = "on" if settings.docs else "off"
        if settings.dev:
            os.environ["TESSERA_DEV"] = "1"
        from uvicorn.supervisors import Multiprocess

        from tessera.local.http_limits import EnvironmentHttpProtocol

        config = uvicorn.Config(
            "tessera.local.server:worker_app", factory=True, workers=workers, host=host, port=port,
            log_level="warning", ws="auto", access_log=False, **{**http_options, "http": EnvironmentHttpProtocol},
        )  # fmt: skip
        try:
            supervisor = Multiprocess(config, sockets=[sock])
        except TypeError:  # uvicorn before 0.36 also took the target
            supervisor = Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock])  # type: ignore[call-arg]
        try:
            supervisor.run()
        finally:
            if watcher is not None:
                watcher.stop()
                container.close()
        return
    app: Any = create_app(container)
    if settings.dev:
        app = RequestLines(app)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="auto", access_log=False,
                            **http_options)
    settle_heap()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if watcher is not None:
            watcher.stop()
        container.close()
