"""``tessera serve``: build the container, settle the root token, import the startup file, run uvicorn."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import uvicorn

from tessera.core.backends.factory import Container, build
from tessera.core.formats import parse_content
from tessera.core.model import CONFIG_FILE, Scope
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


def import_config_file(container: Container, path: Path) -> str:
    fmt = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv"}.get(path.suffix.lower(), "yaml")
    values = parse_content(fmt, path.read_text())
    result = container.service.import_values(CONFIG_FILE, Scope(), values)
    for error in result.errors:
        print(f"  config file: {error['key']}: {error['code']}: {error['message']}", file=sys.stderr)
    return f"{result.created} created, {result.updated} updated, {result.unchanged} unchanged, {len(result.errors)} errors"


def worker_app() -> object:
    """The app of one worker process of ``tessera serve --workers N`` (uvicorn calls this factory in each one).

    Settings come from the environment the parent prepared; the parent has already settled the root token and
    imported the config file. Each worker has its own caches and audit writer over the shared data directory:
    SQLite serializes the writers, the read stamp keeps every cache exact, the change log feeds every watcher.
    """
    from tessera.handlers.app import create_app

    container = build(Settings.from_env())
    app = create_app(container)
    app.api.router.on_shutdown.append(container.close)
    return app


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
) -> None:
    if dev:
        host = "127.0.0.1"
        if config_file is None:
            config_file = SAMPLE_CONFIG
    settings = Settings.from_env(data_dir=data_dir, root_token=root_token, dev=dev or None, backend=backend)
    prepare_data_dir(settings.data_dir)  # 0700, files 0600: tightens an older release's, refuses if it cannot
    http_options = server_options(os.environ, tls_cert, tls_key)  # limits, TLS: a bad one refused before anything
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    container = build(settings)
    token, note = settle_root_token(container, settings)
    if config_file is not None:
        summary = import_config_file(container, Path(config_file))
        print(f"Imported {config_file}: {summary}", flush=True)
    url = f"{'https' if tls_cert else 'http'}://{host}:{port}"
    print(f"Tessera ({settings.backend} backend, data in {settings.data_dir}) listening on {url}", flush=True)
    if token is not None:
        print(f"Root token: {token}", flush=True)
    print(f"  ({note})", flush=True)
    print(f'Try: curl -H "Authorization: Bearer $TOKEN" {url}/config/database.host', flush=True)
    print(f"Web console: {url}/ui (sign in with a token)", flush=True)
    if workers > 1:
        container.close()  # each worker opens its own
        # The workers read their settings from the environment (never the root token: its digest is in the store).
        os.environ["TESSERA_DATA_DIR"] = str(Path(settings.data_dir).resolve())
        os.environ["TESSERA_BACKEND"] = settings.backend
        from tessera.local.http_limits import EnvironmentHttpProtocol

        uvicorn.run(
            "tessera.local.server:worker_app", factory=True, workers=workers, host=host, port=port,
            log_level="warning", ws="auto", access_log=False, **{**http_options, "http": EnvironmentHttpProtocol},
        )  # fmt: skip
        return
    app = create_app(container)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="auto", access_log=False,
                            **http_options)
    try:
        uvicorn.Server(config).run()
    finally:
        container.close()
