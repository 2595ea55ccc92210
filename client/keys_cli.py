"""`tessera keys ...`: master key status, rotation, rewrap and retirement.

These commands open the store and key service directly (the same composition root as ``tessera serve``), so
they run next to a live server on the same data dir or tables: a local server notices a rotated keyring file
within a second, and an aws node reads the active KMS key id from the store's meta.

    tessera keys status                  # versions protected by each master key
    tessera keys rotate                  # local: new master key; aws: --kms-key-id NEW
    tessera keys rewrap [--limit N]      # re-wrap every data key under the active key (resumable)
    tessera keys retire KEY_ID           # refused while anything references KEY_ID
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tessera.core import rotation
from tessera.core.errors import TesseraError
from tessera.core.settings import Settings

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)

DataDirOption = typer.Option(Path(".tessera"), "--data-dir", envvar="TESSERA_DATA_DIR", help="the embedded store's data dir")
BackendOption = typer.Option(None, "--backend", envvar="TESSERA_BACKEND", help="local (default) or aws")
JsonOption = typer.Option(False, "--json", help="print one JSON document on stdout instead of tables")


@dataclass
class KeyTools:
    store: Any  # VersionStore + RewrapStore
    keys: Any  # KeyService that unwraps with any known key and wraps with the active one
    directory: Any  # rotation.KeyDirectory
    backend: str


@contextlib.contextmanager
def open_tools(data_dir: Path, backend: str | None) -> Iterator[KeyTools]:
    from tessera.core.backends import factory as bootstrap

    settings = Settings.from_env(data_dir=data_dir, backend=backend)
    if settings.backend == "local" and not (Path(settings.data_dir) / "tessera.db").exists():
        # Never create a store (and a new master key) where the user meant to tend an existing one.
        raise TesseraError(f"no store in {settings.data_dir}: give the --data-dir of a tessera serve (or TESSERA_DATA_DIR)")
    store = bootstrap.build_store(settings)
    try:
        if settings.backend == "aws":
            from tessera.core.backends.aws import KmsKeyService

            source = functools.partial(store.get_meta, rotation.ACTIVE_KMS_KEY_META)
            keys: Any = KmsKeyService.from_settings(settings, active_key_source=source)
            keys.refresh_seconds = 0.0  # a CLI run must see its own rotation at once
            directory: Any = rotation.MetaKeyDirectory(store, settings.kms_key_id, resolve=keys.resolve_key_arn)
        else:
            # No data-key cache here: a rewrap touches each data key once, so caching would only hold plaintext keys.
            keyring = bootstrap.build_local_keyring(settings, store)
            directory = keys = keyring
        yield KeyTools(store, keys, directory, settings.backend)
    finally:
        store.close()


def _fail(exc: TesseraError, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"error": {"code": exc.code, "message": exc.message, **exc.extra}}))
    else:
        typer.echo(f"error: {' '.join(exc.message.split())}", err=True)
    raise typer.Exit(1)


@app.command()
def status(data_dir: Path = DataDirOption, backend: str | None = BackendOption, as_json: bool = JsonOption) -> None:
    """How many stored versions each master key protects."""
    try:
        with open_tools(data_dir, backend) as tools:
            rows = rotation.status(tools.store, tools.directory)
            cursor = rotation.pending_cursor(tools.store)
    except TesseraError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        typer.echo(json.dumps({"keys": [row.as_dict() for row in rows], "rewrap_in_progress": cursor}))
        return
    table = Table(title=f"Master keys ({tools.backend} backend)")
    table.add_column("key id")
    table.add_column("versions", justify="right")
    table.add_column("state")
    for row in rows:
        state = "active" if row.active else "retired" if row.retired else ""
        table.add_row(row.key_id, str(row.versions), state)
    Console().print(table)
    if cursor is not None:
        console.print(f"A rewrap to {cursor.get('target')} stopped part-way; 'tessera keys rewrap' resumes it.")


@app.command()
def rotate(
    kms_key_id: str | None = typer.Option(None, "--kms-key-id", help="aws backend: the new KMS key (ARN, id or alias)"),
    data_dir: Path = DataDirOption,
    backend: str | None = BackendOption,
    as_json: bool = JsonOption,
) -> None:
    """Make a new master key active for new writes; older keys keep unwrapping what they wrapped."""
    try:
        with open_tools(data_dir, backend) as tools:
            previous = tools.directory.active_key_id
            if tools.backend == "aws":
                if not kms_key_id:
                    raise rotation.RotationError("the aws backend rotates to a KMS key you name: --kms-key-id")
                new_id = tools.directory.rotate(_resolve_kms_key(tools.keys, kms_key_id))
            else:
                if kms_key_id:
                    raise rotation.RotationError("--kms-key-id applies to the aws backend only")
                new_id = tools.directory.rotate()
    except TesseraError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        typer.echo(json.dumps({"previous_key_id": previous, "active_key_id": new_id}))
        return
    console.print(f"Active master key: [bold]{new_id}[/bold] (was {previous}).")
    console.print("New writes use it now (a running server picks it up within a second or so).")
    console.print("Next: 'tessera keys rewrap', then 'tessera keys retire " + previous + "'.")


def _resolve_kms_key(keys: Any, key_id: str) -> str:
    """KMS reports the key ARN on every data key, so the active id is kept as an ARN, not an alias."""
    resolve = getattr(keys, "resolve_key_arn", None)
    return resolve(key_id) if callable(resolve) else key_id


@app.command()
def rewrap(
    limit: int | None = typer.Option(None, "--limit", min=1, help="stop after re-wrapping this many versions"),
    batch_size: int = typer.Option(rotation.DEFAULT_BATCH, "--batch-size", min=1, help="versions per page"),
    data_dir: Path = DataDirOption,
    backend: str | None = BackendOption,
    as_json: bool = JsonOption,
) -> None:
    """Re-wrap every stored data key under the active master key. Values and versions are not changed.

    Resumable: the position is saved in the store after every page, so an interrupted run (or one stopped
    by --limit) continues where it left off; running it again when all is done changes nothing.
    """
    try:
        with open_tools(data_dir, backend) as tools:
            if as_json:
                report = rotation.rewrap(tools.store, tools.keys, limit=limit, batch_size=batch_size)
            else:
                with _progress() as progress:
                    task = progress.add_task("rewrap", total=None)

                    def show(current: rotation.RewrapReport) -> None:
                        progress.update(task, total=current.total, completed=current.scanned)

                    report = rotation.rewrap(
                        tools.store, tools.keys, limit=limit, batch_size=batch_size, on_progress=show
                    )
            remaining = {k: n for k, n in tools.store.versions_by_key_id().items() if k != report.target_key_id and n}
    except TesseraError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        typer.echo(json.dumps({**report.as_dict(), "remaining_on_other_keys": remaining}))
    else:
        verb = "Finished" if report.finished else "Stopped (run again to continue)"
        console.print(
            f"{verb}: {report.rewrapped} re-wrapped, {report.already} already under {report.target_key_id}, "
            f"{len(report.failed)} failed."
        )
        for failure in report.failed:
            console.print(
                f"  [red]{failure['code']}[/red] {failure['namespace']}/{failure['env']} {failure['key']} "
                f"v{failure['version']}: {failure['message']}"
            )
        if report.finished and remaining:
            console.print(f"Still on other keys (written by a node that had not seen the rotation?): {remaining}; run again.")
    if report.failed:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]rewrap[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command()
def retire(
    key_id: str = typer.Argument(..., help="the master key id, as 'tessera keys status' shows it"),
    data_dir: Path = DataDirOption,
    backend: str | None = BackendOption,
    as_json: bool = JsonOption,
) -> None:
    """Retire a master key. Refused while it is active or any stored version references it."""
    try:
        with open_tools(data_dir, backend) as tools:
            rotation.retire(tools.store, tools.directory, key_id)
    except TesseraError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        typer.echo(json.dumps({"retired": key_id}))
        return
    if tools.backend == "aws":
        console.print(f"Retired {key_id}: nothing stored needs it. You may now schedule its deletion in KMS.")
    else:
        console.print(f"Retired {key_id}: its key material is deleted from the keyring.")
