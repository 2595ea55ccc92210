"""`tessera audit ...` commands.

    tessera audit verify [--data-dir DIR | --backend aws] [--json] [--anchor EARLIER.json]

``verify`` reads the audit log straight from the store (no server needed, and a server cannot lie about it),
re-computes every entry's hash and every link, compares each chain with its recorded head, and reports the
first entry that was edited, inserted or removed. Exit status 0 when intact, 7 (integrity) when not, 2 when the
store cannot be read. ``--json`` prints one JSON document, including each chain's head (seq, hash): keep it somewhere else and pass
it back later with ``--anchor FILE`` to catch even a consistent rewrite of the log (every hash and the stored
head recomputed) up to those heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from tessera.client.cli_base import INTEGRITY
from tessera.core.audit import anchors_from
from tessera.core.audit import verify as verify_chains
from tessera.core.errors import TesseraError
from tessera.core.settings import Settings

app = typer.Typer(no_args_is_help=True)
console = Console()

DataDirOption = typer.Option(Path(".tessera"), "--data-dir", envvar="TESSERA_DATA_DIR", help="the embedded store's data dir")
BackendOption = typer.Option(None, "--backend", envvar="TESSERA_BACKEND", help="local (default) or aws")
JsonOption = typer.Option(False, "--json", help="print one JSON document on stdout")
AnchorOption = typer.Option(
    None, "--anchor", help="an earlier `verify --json` output kept elsewhere: its chain heads must still be in the log, unchanged"
)


@app.callback()
def audit() -> None:
    """The audit log: verify its hash chains."""


@app.command()
def verify(
    data_dir: Path = DataDirOption,
    backend: str | None = BackendOption,
    as_json: bool = JsonOption,
    anchor: Path | None = AnchorOption,
) -> None:
    """Check the audit log's hash chains; name the first edited, inserted or removed entry."""
    from tessera.core.backends import factory as bootstrap
    from tessera.core.backends.factory import build_access_stores

    try:
        anchors = anchors_from(json.loads(anchor.read_text())) if anchor is not None else None
        settings = Settings.from_env(data_dir=data_dir, backend=backend)
        if settings.backend == "local" and not (Path(settings.data_dir) / "tessera.db").exists():
            raise TesseraError(f"no store in {settings.data_dir}")
        store = bootstrap.build_store(settings)
        try:
            report = verify_chains(build_access_stores(settings, store), anchors=anchors)
        finally:
            store.close()
    except (TesseraError, ValueError, OSError, KeyError, TypeError) as exc:
        message = getattr(exc, "message", str(exc))
        if as_json:
            print(json.dumps({"ok": False, "error": message}))
        else:
            typer.echo(f"error: cannot read the audit log: {' '.join(str(message).split())}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        heads = ", ".join(f"{name} at {seq} ({digest[:12]}…)" for name, (seq, digest) in sorted(report.chains.items()))
        console.print(f"[green]audit log intact[/green]: {report.entries} entries in {len(report.chains)} chain(s){': ' + heads if heads else ''}")
    else:
        problem = report.problem
        assert problem is not None
        console.print(f"[red]audit log TAMPERED[/red]: entry {problem.id} was {problem.kind}")
        console.print(f"  {problem.detail}")
        console.print(f"  ({report.entries} entries checked up to there)")
    raise typer.Exit(0 if report.ok else INTEGRITY)
