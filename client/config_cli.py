"""The config commands: get, put, rm, ls, history, rollback, diff, promote, import, export, watch.

Each is one or a few SDK calls (``tessera.Client``); the connection options and output come from
:mod:`tessera.client.cli_base`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from tessera.client.cli_base import (
    CONFLICT,
    NOT_FOUND,
    USAGE,
    Cli,
    call,
    describe,
    exit_code_for,
    fail,
    remote,
    stdin_text,
    value_text,
)

IMPORT_BATCH_KEYS = 500
IMPORT_BATCH_BYTES = 512 * 1024  # well under the server's 1 MiB body limit


def register(app: typer.Typer) -> None:
    for name, fn in (("get", get), ("put", put), ("rm", rm), ("ls", ls), ("history", history), ("rollback", rollback),
                     ("diff", diff), ("promote", promote), ("import", import_file), ("export", export), ("watch", watch)):
        app.command(name=name)(remote(fn))


# ---------------------------------------------------------------------- reading
def get(
    cli: Cli,
    key: str = typer.Argument(..., help="dot-separated key, or a prefix (prints its subtree)"),
    version: int | None = typer.Option(None, "--version", min=1, help="a historical version of the key in this env"),
    explain: bool = typer.Option(False, "--explain", help="show each environment the read walked and what it held"),
) -> None:
    """Print a key's value (a subtree prints as an object); `-o json` prints the whole entry."""
    with cli.client() as client:
        if explain:
            if version is not None:
                fail("--explain explains the latest value: leave out --version", USAGE)
            explanation = call(client.explain, key)
            data = {"key": key, "chain": [{"env": layer.env, "state": layer.state, "version": layer.version}
                                          for layer in explanation.chain],
                    "entry": explanation.entry.to_json() if explanation.entry else None}
            cli.show(data, ["env", "state", "version"],
                     [(layer.env, layer.state, layer.version) for layer in explanation.chain])
            if explanation.entry is None:
                typer.echo(f"error: not_found: no environment of the chain holds {key}", err=True)
                raise typer.Exit(NOT_FOUND)
            return
        entry = call(client.get, key, version=version)
    cli.show(entry.to_json(), text=value_text(entry.value))


def ls(
    cli: Cli,
    prefix: str | None = typer.Option(None, "--prefix", "-p", help="keys below this prefix (whole segments)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="at most this many keys (pages are followed)"),
) -> None:
    """List keys (metadata, never values), in key order."""
    with cli.client() as client:
        keys = call(client.list, prefix, limit=limit)
    data = [{"key": k.key, "version": k.version, "secret": k.secret, "updated_at": k.updated_at, "updated_by": k.updated_by}
            for k in keys]
    cli.show({"keys": data}, ["key", "version", "secret", "updated_at", "updated_by"],
             [(k.key, k.version, k.secret, k.updated_at, k.updated_by) for k in keys])


def history(
    cli: Cli,
    key: str = typer.Argument(...),
    limit: int | None = typer.Option(None, "--limit", min=1, max=1000, help="newest N versions (server default 100)"),
) -> None:
    """A key's versions, newest first (secret values are never shown)."""
    with cli.client() as client:
        versions = call(client.history, key, limit=limit)
    data = []
    rows = []
    for v in versions:
        item: dict[str, Any] = {"version": v.version, "action": v.action, "secret": v.secret, "updated_at": v.updated_at,
                                "updated_by": v.updated_by}
        if v.rolled_back_from is not None:
            item["rolled_back_from"] = v.rolled_back_from
        if v.has_value:
            item["value"] = v.value
        data.append(item)
        shown = "<secret>" if v.secret else "(deleted)" if v.action == "delete" else value_text(v.value) if v.has_value else "-"
        action = f"{v.action} from {v.rolled_back_from}" if v.rolled_back_from is not None else v.action
        rows.append((v.version, action, v.updated_at, v.updated_by, shown))
    cli.show({"key": key, "versions": data}, ["version", "action", "updated_at", "updated_by", "value"], rows)


def export(
    cli: Cli,
    fmt: str = typer.Option("dotenv", "--format", "-f", help="json, yaml or dotenv"),
    prefix: str | None = typer.Option(None, "--prefix", "-p", help="only keys below this prefix"),
) -> None:
    """Print the resolved config as a file (secrets included where the token may read them)."""
    if fmt not in ("json", "yaml", "dotenv"):
        fail(f"--format must be json, yaml or dotenv, not {fmt!r}", USAGE)
    with cli.client() as client:
        typer.echo(call(client.export, fmt, prefix), nl=False)


# ---------------------------------------------------------------------- writing
def parse_value(text: str, raw: bool) -> Any:
    if raw:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        fail("VALUE is a JSON object, and a key holds one value: write each leaf (tessera put a.b 1), "
             "use tessera import FILE for a tree, or --raw to store the text as a string", USAGE)
    return value


def put(
    cli: Cli,
    key: str = typer.Argument(...),
    value: str | None = typer.Argument(None, help="JSON when it parses (42, true, [1,2]), else a string; - reads stdin"),
    file: Path | None = typer.Option(None, "--file", help="the value is this file's text, as it is (a certificate, a key)"),
    secret: bool | None = typer.Option(None, "--secret/--plain", help="mark the key secret when it is created"),
    raw: bool = typer.Option(False, "--raw", help="store VALUE as a string even if it parses as JSON"),
    expected_version: int | None = typer.Option(None, "--expected-version", min=0,
                                                help="compare-and-set: the version you expect (0: no live value)"),
) -> None:
    """Write a key. `-` as VALUE reads it from standard input, which keeps a secret out of the process list and the
    shell history: `tessera put db.password - --secret < password.txt`."""
    if (value is None) == (file is None):
        fail("give VALUE (or - for stdin) or --file PATH, one of them", USAGE)
    if file is not None:
        try:
            parsed: Any = file.read_text()
        except OSError as exc:
            fail(f"--file {file}: {exc.strerror or exc}", USAGE)
        except UnicodeDecodeError:
            fail(f"--file {file}: not UTF-8 text (values are JSON strings; base64 it first)", USAGE)
    else:
        assert value is not None
        parsed = parse_value(stdin_text() if value == "-" else value, raw)
    with cli.client() as client:
        result = call(client.put, key, parsed, secret=secret, expected_version=expected_version)
    cli.show(result.to_json(), text=f"{result.key}: version {result.version} ({result.action})")


def rm(
    cli: Cli,
    key: str = typer.Argument(...),
    expected_version: int | None = typer.Option(None, "--expected-version", min=0, help="compare-and-set on the deletion"),
) -> None:
    """Delete a key (a tombstone version; older versions stay readable with get --version)."""
    with cli.client() as client:
        result = call(client.delete, key, expected_version=expected_version)
    cli.show({"key": result.key, "version": result.version}, text=f"{result.key}: deleted (version {result.version})")


def rollback(
    cli: Cli,
    key: str = typer.Argument(...),
    version: int = typer.Option(..., "--version", min=1, help="the version whose value becomes the new version"),
) -> None:
    """Make a new version of KEY whose value is version N's."""
    with cli.client() as client:
        result = call(client.rollback, key, version)
    cli.show({"key": result.key, "version": result.version, "rolled_back_from": result.rolled_back_from},
             text=f"{result.key}: version {result.version} (rolled back from {result.rolled_back_from})")


# ---------------------------------------------------------------------- environments: diff and promote
def _diff_rows(items: Any, change: str) -> list[tuple[Any, ...]]:
    rows = []
    for item in items:
        if item.secret:
            before, after = ("<secret>", "<secret>")
        elif change == "added":
            before, after = None, item.value
        elif change == "removed":
            before, after = item.value, None
        else:
            before, after = item.from_value, item.to_value
        rows.append((change, item.key, before, after, item.to_version))
    return rows


def _diff_json(diff: Any) -> dict[str, Any]:
    def item_json(item: Any, change: str) -> dict[str, Any]:
        body: dict[str, Any] = {"key": item.key, "secret": item.secret, "to_version": item.to_version}
        if not item.secret and item.has_values:
            if change == "changed":
                body.update({"from": item.from_value, "to": item.to_value})
            else:
                body["value"] = item.value
        return body

    return {change: [item_json(item, change) for item in getattr(diff, change)] for change in ("added", "removed", "changed")}


def diff(
    cli: Cli,
    from_env: str = typer.Argument(..., metavar="FROM"),
    to_env: str = typer.Argument(..., metavar="TO"),
    prefix: str | None = typer.Option(None, "--prefix", "-p"),
) -> None:
    """Compare two environments' resolved values: `added` is in TO only, `removed` in FROM only."""
    with cli.client() as client:
        result = call(client.diff, from_env, to_env, prefix=prefix, namespace=cli.scope_namespace)
    rows = _diff_rows(result.added, "added") + _diff_rows(result.removed, "removed") + _diff_rows(result.changed, "changed")
    cli.show(_diff_json(result), ["change", "key", "from", "to", "to_version"], sorted(rows, key=lambda row: row[1]))


def promote(
    cli: Cli,
    from_env: str = typer.Argument(..., metavar="FROM"),
    to_env: str = typer.Argument(..., metavar="TO"),
    prefix: str | None = typer.Option(None, "--prefix", "-p"),
    keys: list[str] | None = typer.Option(None, "--key", "-k", help="promote only this key (repeatable)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Copy FROM's values that differ into TO, all or nothing.

    Shows the diff first, then sends each key's version in TO as it was shown: if anyone changed one of them
    since, nothing is promoted (exit 5, naming the keys that moved)."""
    with cli.client() as client:
        result = call(client.diff, from_env, to_env, prefix=prefix, namespace=cli.scope_namespace)
        # Copied: what FROM has that TO lacks (removed) or holds differently (changed). Keys only in TO are left alone.
        items = {item.key: (item, item.value) for item in result.removed}
        items.update({item.key: (item, item.from_value) for item in result.changed})
        if keys:
            unknown = [k for k in keys if k not in items]
            if unknown:
                typer.echo(f"nothing to promote for {', '.join(unknown)} (equal in both, or only in {to_env})", err=True)
            items = {k: v for k, v in items.items() if k in keys}
        if not items:
            cli.show({"promoted": [], "unchanged": 0}, text=f"nothing to promote: {to_env} already has {from_env}'s values")
            return
        if not cli.machine or not yes:
            out = sys.stdout if not cli.machine else sys.stderr
            print(f"Promote {len(items)} key(s) from {from_env} to {to_env}:", file=out)
            for key, (item, value) in sorted(items.items()):
                shown = "<secret>" if item.secret else json.dumps(value, ensure_ascii=False)
                print(f"  {key} = {shown}  ({to_env} at version {item.to_version})", file=out)
        if not yes:
            if not sys.stdin.isatty():
                fail("promote asks before it writes: pass --yes to confirm without a terminal", USAGE)
            if not typer.confirm("Promote?", default=False, err=cli.machine):
                fail("not promoted", 1)
        expected = {key: item.to_version for key, (item, _) in items.items()}
        outcome = call(client.promote, from_env, to_env, expected=expected, keys=sorted(items), prefix=prefix,
                       namespace=cli.scope_namespace)
    cli.show({"promoted": [{"key": k, "version": v} for k, v in outcome.promoted], "unchanged": outcome.unchanged},
             text=f"promoted {len(outcome.promoted)} key(s) to {to_env}: "
                  + ", ".join(f"{k} (version {v})" for k, v in outcome.promoted))


# ---------------------------------------------------------------------- import
def read_import_file(path: Path, fmt: str | None) -> dict[str, Any]:
    """Parse FILE client-side (the same parsers as the server), flattened to dotted leaves."""
    from tessera.core.errors import TesseraError
    from tessera.core.formats import flatten, parse_content

    fmt = fmt or {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv"}.get(path.suffix.lower())
    if fmt is None and path.name.startswith(".env"):
        fmt = "dotenv"
    if fmt is None:
        fail(f"{path}: cannot tell the format from the name: pass --format json|yaml|dotenv", USAGE)
    if fmt not in ("json", "yaml", "dotenv"):
        fail(f"--format must be json, yaml or dotenv, not {fmt!r}", USAGE)
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", USAGE)
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text", USAGE)
    try:
        tree = parse_content(fmt, text)
    except TesseraError as exc:
        cause = f" ({' '.join(str(exc.__cause__).split())})" if exc.__cause__ else ""
        fail(f"{path}: {exc.message}{cause}", USAGE)
    return dict(flatten(tree))


def batches(values: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    size = 0
    for key, value in values.items():
        encoded = len(key) + len(json.dumps(value, ensure_ascii=False)) + 8
        if out[-1] and (len(out[-1]) >= IMPORT_BATCH_KEYS or size + encoded > IMPORT_BATCH_BYTES):
            out.append({})
            size = 0
        out[-1][key] = value
        size += encoded
    return [batch for batch in out if batch]


def import_file(
    cli: Cli,
    file: Path = typer.Argument(..., help="a JSON, YAML or dotenv file (DATABASE__HOST=x imports database.host)"),
    fmt: str | None = typer.Option(None, "--format", "-f", help="json, yaml or dotenv (default: from the file name)"),
    secrets: list[str] | None = typer.Option(None, "--secret", "-s", help="create this key as a secret (repeatable)"),
) -> None:
    """Import a file's keys (each commits on its own; unchanged values make no new version), with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    values = read_import_file(file, fmt)
    wanted = set(secrets or ())
    missing = sorted(wanted - set(values))
    if missing:
        fail(f"--secret {', '.join(missing)}: not in {file}", USAGE)
    totals = {"created": 0, "updated": 0, "unchanged": 0}
    errors: list[dict[str, Any]] = []
    console = Console(stderr=True)
    with cli.client() as client, Progress(TextColumn("[bold]import[/bold]"), BarColumn(), MofNCompleteColumn(),
                                          TimeRemainingColumn(), console=console, disable=cli.machine) as progress:
        task = progress.add_task("import", total=len(values))
        for batch in batches(values):
            result = call(client.import_values, batch, secrets=sorted(wanted & set(batch)))
            totals["created"] += result.created
            totals["updated"] += result.updated
            totals["unchanged"] += result.unchanged
            errors.extend(result.errors)
            progress.update(task, advance=len(batch))
    summary = {**totals, "errors": errors}
    cli.show(summary, text=f"{file}: {totals['created']} created, {totals['updated']} updated, "
                           f"{totals['unchanged']} unchanged, {len(errors)} errors")
    for error in errors if not cli.machine else []:
        typer.echo(f"error: {error.get('key')}: {error.get('code')}: {error.get('message')}", err=True)
    if errors:
        codes = {str(e.get("code")) for e in errors}
        raise typer.Exit(CONFLICT if codes <= {"version_conflict", "key_conflict", "secret_flag_immutable"} else 1)


# ---------------------------------------------------------------------- watch
def watch(
    cli: Cli,
    patterns: list[str] = typer.Argument(None, help="key patterns: exact, prefix.*, * (default: *)"),
    since: int | None = typer.Option(None, "--since", min=0, help="start after this revision (default: from now)"),
    count: int | None = typer.Option(None, "--count", min=1, help="stop after this many events"),
) -> None:
    """Print change events as they happen: JSON lines by default (`-o table`: one readable line each).

    Passing trouble (a node down, a reconnect) is printed as `warning: ...` lines on stderr; when the watch cannot
    continue (not a Tessera server, token refused) it exits non-zero with one `error: ...` line."""
    import threading

    from tessera.client.sdk.watch import is_fatal

    keys = [p for pattern in (patterns or ["*"]) for p in pattern.split(",") if p.strip()]
    done = threading.Event()
    seen = 0
    human = cli.output == "table" and cli.output_given

    def show(event: Any) -> None:
        nonlocal seen
        if count is not None and seen >= count:
            return  # the rest of the batch that held the last event asked for
        if human:
            shown = "<secret>" if event.secret else "(deleted)" if event.deleted else value_text(event.value)
            typer.echo(f"{event.revision}  {event.action}  {event.key}  v{event.version}  {shown}")
        elif cli.output == "yaml":
            cli.dump([event.to_json()])
        else:
            typer.echo(json.dumps(event.to_json()))
        seen += 1
        if count is not None and seen >= count:
            done.set()

    def warn(exc: BaseException) -> None:
        if not is_fatal(exc):  # the fatal one is printed once, as the error line, below
            typer.echo(f"warning: {' '.join(str(exc).split())}", err=True)

    with cli.client() as client:
        call(client.health)  # a server that is down at the start is an error, not a watch that waits
        handle = call(client.watch, keys, show, since=since, on_error=warn)
        try:
            while not done.wait(0.2):
                if not handle.alive:
                    error = handle.error
                    if error is None:
                        fail("the watch stopped")
                    fail(describe(error), exit_code_for(error))
        except KeyboardInterrupt:
            pass
        finally:
            handle.stop(timeout=0.5)
