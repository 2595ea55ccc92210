"""The ``tessera`` command line. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from tessera.client import audit_cli, aws_cli, keys_cli

# No local variables in tracebacks: they could hold a token or key material.
app = typer.Typer(
    help="Tessera: versioned, encrypted configuration and secrets.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
app.add_typer(aws_cli.app, name="aws", help="Create and tend the AWS resources of the aws backend.")
app.add_typer(keys_cli.app, name="keys", help="Master keys: status, rotate, rewrap, retire.")
app.add_typer(audit_cli.app, name="audit", help="The audit log: verify its hash chain.")
# `tessera gc` is the same command as `tessera aws gc`: only the aws backend can leave orphaned value objects.
app.command(name="gc", help="Delete orphaned S3 value objects of the aws backend (same as `tessera aws gc`).")(aws_cli.gc)


@app.callback()
def tessera() -> None:
    """Tessera: versioned, encrypted configuration and secrets."""


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8200, help="port to listen on"),
    data_dir: Path = typer.Option(Path(".tessera"), envvar="TESSERA_DATA_DIR", help="where the embedded store keeps its files"),
    config_file: Path | None = typer.Option(None, help="JSON or YAML file imported at start (namespace/env default)"),
    root_token: str | None = typer.Option(None, envvar="TESSERA_ROOT_TOKEN", help="the root token to accept"),
    dev: bool = typer.Option(False, "--dev", help="dev mode: 127.0.0.1, sample config, root token shown on every start"),
    backend: str | None = typer.Option(None, envvar="TESSERA_BACKEND", help="local (default) or aws"),
    tls_cert: str | None = typer.Option(None, envvar="TESSERA_TLS_CERT", help="PEM certificate (chain): serve HTTPS"),
    tls_key: str | None = typer.Option(None, envvar="TESSERA_TLS_KEY", help="PEM private key of --tls-cert"),
    workers: int = typer.Option(1, min=1, max=64, envvar="TESSERA_WORKERS", help="server processes sharing the data directory"),
) -> None:
    """Run the Tessera server."""
    try:
        from tessera.local.server import serve as run_server
    except ImportError as exc:  # the base install and [cli] alone have no server stack
        _fail(f"tessera serve needs the server extra: pip install 'tessera-config[server]' ({exc.name} is missing)")

    from tessera.core.errors import TesseraError

    try:
        run_server(
            host=host, port=port, data_dir=data_dir, config_file=config_file, root_token=root_token, dev=dev, backend=backend,
            tls_cert=tls_cert, tls_key=tls_key, workers=workers,
        )  # fmt: skip
    except TesseraError as exc:  # a store that cannot be reached or loaded: one clear line, not a trace
        _fail(f"cannot start: {exc.message}")


# ---------------------------------------------------------------------- talking to a server
def _client(namespace: str | None, env: str | None):
    from tessera.client.sdk import Client, ConfigurationError

    urls = os.environ.get("TESSERA_URL", "http://127.0.0.1:8200")
    token = os.environ.get("TESSERA_TOKEN")
    if not token:
        _fail("set TESSERA_TOKEN (and TESSERA_URL, comma-separated for several nodes)")
    try:
        return Client(urls, token, namespace=namespace or "default", env=env or "default")
    except ConfigurationError as exc:
        _fail(f"TESSERA_URL: {exc.message}", 2)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _exit_code(exc: Exception) -> int:
    """2 for what the caller can fix (a refusal, a missing key, a wrong URL), 1 when the service failed."""
    from tessera.client.sdk import ServerError, Unavailable

    return 1 if isinstance(exc, Unavailable | ServerError) else 2


def _call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    from tessera.client.sdk import TesseraError

    try:
        return fn(*args, **kwargs)
    except TesseraError as exc:
        _fail(str(exc), _exit_code(exc))


NamespaceOpt = typer.Option(None, "--namespace", "-n", envvar="TESSERA_NAMESPACE")
EnvOpt = typer.Option(None, "--env", "-e", envvar="TESSERA_ENV")
JsonOpt = typer.Option(False, "--json", help="machine-readable output")


@app.command()
def get(key: str, version: int | None = None, namespace: str | None = NamespaceOpt, env: str | None = EnvOpt, as_json: bool = JsonOpt) -> None:
    """Print a key's value (a subtree prints as an object)."""
    with _client(namespace, env) as client:
        entry = _call(client.get, key, version=version)
    if as_json:
        typer.echo(json.dumps(entry.to_json()))
    else:
        value = entry.value
        typer.echo(value if isinstance(value, str) else json.dumps(value, indent=2))


@app.command()
def put(
    key: str,
    value: str,
    secret: bool | None = typer.Option(None, "--secret/--plain", help="mark the key secret when it is created"),
    raw: bool = typer.Option(False, "--raw", help="store VALUE as a string even if it parses as JSON"),
    expected_version: int | None = typer.Option(None, help="compare-and-set: the version you expect (0: none)"),
    namespace: str | None = NamespaceOpt,
    env: str | None = EnvOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Write a key. VALUE is parsed as JSON when it can be (42, true, [1,2]), else stored as a string.

    VALUE `-` reads it from standard input (one trailing newline dropped), which keeps a secret out of the
    process list and the shell history: `tessera put db.password - --secret < password.txt`.
    """
    if value == "-":
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    parsed: object = value
    if not raw:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
    with _client(namespace, env) as client:
        result = _call(client.put, key, parsed, secret=secret, expected_version=expected_version)
    typer.echo(json.dumps(result.to_json()) if as_json else f"{result.key} version {result.version} ({result.action})")


@app.command()
def export(
    fmt: str = typer.Option("dotenv", "--format", "-f", help="json, yaml or dotenv"),
    prefix: str | None = None,
    namespace: str | None = NamespaceOpt,
    env: str | None = EnvOpt,
) -> None:
    """Print the resolved config (secrets included where the token may read them)."""
    with _client(namespace, env) as client:
        typer.echo(_call(client.export, fmt, prefix), nl=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    prefix: str | None = typer.Option(None, help="inject only keys below this prefix"),
    namespace: str | None = NamespaceOpt,
    env: str | None = EnvOpt,
) -> None:
    """Run a command with the config injected as environment variables: tessera run -- ./server.

    Names follow the dotenv export (database.host → DATABASE_HOST); injected values replace variables of the
    same name that the calling shell already has.
    """
    from tessera.core.formats import dotenv_name, flatten

    command = list(ctx.args)
    if not command:
        _fail("give a command after --, e.g. tessera run -- env")
    with _client(namespace, env) as client:
        tree = json.loads(_call(client.export, "json", prefix))
    environment = dict(os.environ)
    for key, value in flatten(tree):
        environment[dotenv_name(key)] = value if isinstance(value, str) else json.dumps(value)
    try:
        os.execvpe(command[0], command, environment)
    except FileNotFoundError:
        _fail(f"command not found: {command[0]}", 127)


@app.command()
def watch(
    keys: str = typer.Argument("*", help="key patterns, comma-separated: auth.*,database.host"),
    since: int | None = None,
    namespace: str | None = NamespaceOpt,
    env: str | None = EnvOpt,
    count: int | None = typer.Option(None, help="stop after this many events"),
) -> None:
    """Print change events as JSON lines, as they happen.

    Passing trouble (a node down, a reconnect) is printed as `warning: ...` lines on stderr; when the watch cannot
    continue (not a Tessera server, token refused) it exits non-zero with one `error: ...` line.
    """
    import threading

    from tessera.client.sdk.watch import is_fatal

    done = threading.Event()
    seen = 0

    def show(event) -> None:  # type: ignore[no-untyped-def]
        nonlocal seen
        typer.echo(json.dumps(event.to_json()))
        seen += 1
        if count is not None and seen >= count:
            done.set()

    def warn(exc: BaseException) -> None:
        if not is_fatal(exc):  # the fatal one is printed once, as the error line, below
            typer.echo(f"warning: {exc}", err=True)

    with _client(namespace, env) as client:
        handle = client.watch(keys, show, since=since, on_error=warn)
        try:
            while not done.wait(0.2):
                if not handle.alive:
                    error = handle.error
                    _fail(str(error) if error else "the watch stopped", _exit_code(error) if isinstance(error, Exception) else 1)
        except KeyboardInterrupt:
            pass
        finally:
            handle.stop(timeout=0.5)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
