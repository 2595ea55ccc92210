"""The ``tessera`` command line. Each command group lives in its own module and is registered here.

:func:`main` is the console script: every failure ends in one ``error: …`` line on stderr and an exit status from
:data:`tessera.client.cli_base.EXIT_CODES` (a traceback only with ``--debug`` or ``TESSERA_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer

from tessera.client import admin_cli, audit_cli, aws_cli, config_cli, keys_cli, run_cli
from tessera.client.cli_base import (
    EXIT_CODES,
    FAILURE,
    USAGE,
    Abort,
    ClickException,
    CliError,
    Exit,
    NoArgsIsHelpError,
    UsageError,
    fail,
    settings_from,
)

EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)
HELP = """Tessera: versioned, encrypted configuration and secrets.

Configured like Vault's CLI: --addr / TESSERA_ADDR (TESSERA_URL is an alias), --token / TESSERA_TOKEN (else the file
`tessera login` keeps), --namespace / TESSERA_NAMESPACE, --env / TESSERA_ENV; --output table|json|yaml (--json).
Any of them may come before the command or after it. --debug prints a traceback with an error."""

# No local variables in tracebacks: they could hold a token or key material.
app = typer.Typer(help=HELP, epilog=EPILOG, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode=None)
app.add_typer(aws_cli.app, name="aws", help="Create and tend the AWS resources of the aws backend.")
app.add_typer(keys_cli.app, name="keys", help="Master keys: status, rotate, rewrap, retire.")
app.add_typer(audit_cli.app, name="audit", help="The audit log: records (ls) and its hash chain (verify).")
# `tessera gc` is the same command as `tessera aws gc`: only the aws backend can leave orphaned value objects.
app.command(name="gc", help="Delete orphaned S3 value objects of the aws backend (same as `tessera aws gc`).")(aws_cli.gc)
config_cli.register(app)
admin_cli.register(app, audit_cli.app)
run_cli.register(app)


@app.callback()
def tessera(
    ctx: typer.Context,
    addr: str | None = typer.Option(None, "--addr", help="server URL(s), comma-separated [env: TESSERA_ADDR, TESSERA_URL]"),
    token: str | None = typer.Option(None, "--token", help="the token [env: TESSERA_TOKEN; else `tessera login`'s file]"),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="namespace [env: TESSERA_NAMESPACE]"),
    env: str | None = typer.Option(None, "--env", "-e", help="environment [env: TESSERA_ENV]"),
    output: str | None = typer.Option(None, "--output", "-o", help="table, json or yaml"),
    as_json: bool = typer.Option(False, "--json", help="same as --output json"),
    debug: bool = typer.Option(False, "--debug", help="print the traceback of an error"),
) -> None:
    ctx.obj = settings_from({"addr": addr, "token": token, "namespace": namespace, "env": env, "output": output,
                             "as_json": as_json})


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8200, min=1, max=65535, help="port to listen on (1-65535)"),
    data_dir: Path = typer.Option(Path(".tessera"), envvar="TESSERA_DATA_DIR", help="where the embedded store keeps its files"),
    config_file: Path | None = typer.Option(None, help="JSON, YAML or .env file imported at start (namespace/env default); "
                                            "a key changed through the API is never reverted by it (docs/cli.md)"),
    watch_config: bool = typer.Option(False, "--watch-config", help="apply edits of --config-file while running"),
    root_token: str | None = typer.Option(None, envvar="TESSERA_ROOT_TOKEN", help="the root token to accept"),
    dev: bool = typer.Option(False, "--dev", help="dev mode: 127.0.0.1, sample config, root token shown on every start"),
    backend: str | None = typer.Option(None, envvar="TESSERA_BACKEND", help="local (default) or aws"),
    tls_cert: str | None = typer.Option(None, envvar="TESSERA_TLS_CERT", help="PEM certificate (chain): serve HTTPS"),
    tls_key: str | None = typer.Option(None, envvar="TESSERA_TLS_KEY", help="PEM private key of --tls-cert"),
    workers: int = typer.Option(1, min=1, max=64, envvar="TESSERA_WORKERS", help="server processes sharing the data directory"),
    no_docs: bool = typer.Option(False, "--no-docs", help="do not serve /docs and /openapi.json (public otherwise)"),
) -> None:
    """Run the Tessera server."""
    try:
        from tessera.local.server import StartError
        from tessera.local.server import serve as run_server
    except ImportError as exc:  # the base install and [cli] alone have no server stack
        fail(f"tessera serve needs the server extra: pip install 'tessera-config[server]' ({exc.name} is missing)")

    from tessera.core.errors import TesseraError

    try:
        run_server(
            host=host, port=port, data_dir=data_dir, config_file=config_file, root_token=root_token, dev=dev, backend=backend,
            tls_cert=tls_cert, tls_key=tls_key, workers=workers, watch_config=watch_config, docs=not no_docs,
        )  # fmt: skip
    except StartError as exc:  # a setting, file, port or data directory to fix
        fail(str(exc), USAGE)
    except TesseraError as exc:  # a store that cannot be reached or loaded: one clear line, not a trace
        fail(f"cannot start: {exc.message}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """The console script: run the command, turn every failure into one ``error:`` line and an exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)  # what follows -- belongs to `tessera run`'s command
    debug = "--debug" in args[:cut] or os.environ.get("TESSERA_DEBUG", "").lower() in ("1", "true", "yes", "on")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="tessera", standalone_mode=False)
    except CliError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {_one_line(exc.message)}", err=True)
        code = exc.code
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        code = USAGE
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "tessera"
        typer.echo(f"error: {where}: {_one_line(exc.format_message())} (see {where} --help)", err=True)
        code = USAGE
    except ClickException as exc:  # a bad file argument and the like
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        code = exc.exit_code or USAGE
    except (Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        code = 130
    except Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        typer.echo(f"error: {_one_line(exc.code)}", err=True)  # a refusal with its one line (tessera serve's checks)
        code = USAGE
    except BaseException as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        typer.echo(f"error: {type(exc).__name__}: {_one_line(str(exc))}{hint}", err=True)
        code = FAILURE
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
