"""The ``tessera`` command line. Each command group lives in its own module and is registered here."""

from __future__ import annotations

from pathlib import Path

import typer

from client import audit_cli, aws_cli, keys_cli

app = typer.Typer(help="Tessera: versioned, encrypted configuration and secrets.", no_args_is_help=True)
app.add_typer(aws_cli.app, name="aws", help="Create and tend the AWS resources of the aws backend.")
app.add_typer(keys_cli.app, name="keys", help="Master keys: status, rotate, rewrap, retire.")
app.add_typer(audit_cli.app, name="audit", help="The audit log: verify its hash chain.")


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
) -> None:
    """Run the Tessera server."""
    from local.server import serve as run_server

    run_server(host=host, port=port, data_dir=data_dir, config_file=config_file, root_token=root_token, dev=dev, backend=backend)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
