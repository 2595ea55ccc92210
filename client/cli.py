"""The ``tessera`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Tessera: versioned, encrypted configuration and secrets.", no_args_is_help=True)


@app.callback()
def tessera() -> None:
    """Tessera: versioned, encrypted configuration and secrets."""


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8200, help="port to listen on"),
    data_dir: Path = typer.Option(Path(".tessera"), envvar="TESSERA_DATA_DIR", help="where the embedded store keeps its files"),
    config_file: Optional[Path] = typer.Option(None, help="JSON or YAML file imported at start (namespace/env default)"),
    root_token: Optional[str] = typer.Option(None, envvar="TESSERA_ROOT_TOKEN", help="the root token to accept"),
    dev: bool = typer.Option(False, "--dev", help="dev mode: 127.0.0.1, sample config, root token shown on every start"),
    backend: Optional[str] = typer.Option(None, envvar="TESSERA_BACKEND", help="local (default) or aws"),
) -> None:
    """Run the Tessera server."""
    from local.server import serve as run_server

    run_server(host=host, port=port, data_dir=data_dir, config_file=config_file, root_token=root_token, dev=dev, backend=backend)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
