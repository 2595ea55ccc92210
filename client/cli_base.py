"""What every ``tessera`` command shares: exit codes, the one-line error, the connection settings and output.

Connection settings, as Vault's CLI reads them (a flag beats the environment, which beats the login file):

- ``--addr`` / ``TESSERA_ADDR`` (``TESSERA_URL`` is an alias): one URL or several, comma-separated;
- ``--token`` / ``TESSERA_TOKEN``, else the file ``tessera login`` wrote (``~/.tessera-token``, mode 0600;
  ``TESSERA_TOKEN_FILE`` names another);
- ``--namespace`` / ``TESSERA_NAMESPACE`` and ``--env`` / ``TESSERA_ENV`` (both ``default`` when unset);
- ``--output table|json|yaml`` (``--json`` is ``--output json``).

Each can be given before the command (``tessera --env prod get x``) or after it (``tessera get x --env prod``).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer import Abort as Abort  # typer.Exit and typer.Abort are click's own on older typer
from typer import Exit as Exit

try:  # typer 0.2x carries its own copy of click: its exceptions and context are the ones raised here
    from typer._click.exceptions import ClickException as ClickException
    from typer._click.exceptions import NoArgsIsHelpError as NoArgsIsHelpError
    from typer._click.exceptions import UsageError as UsageError
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer on click itself
    from click import get_current_context  # type: ignore[no-redef,assignment]
    from click.exceptions import ClickException as ClickException  # type: ignore[no-redef,assignment]
    from click.exceptions import NoArgsIsHelpError as NoArgsIsHelpError  # type: ignore[no-redef,assignment]
    from click.exceptions import UsageError as UsageError  # type: ignore[no-redef,assignment]

# ---------------------------------------------------------------------- exit codes (README, `tessera --help`)
OK, FAILURE, USAGE, NOT_FOUND, DENIED, CONFLICT, UNAVAILABLE, INTEGRITY = range(8)
EXIT_CODES = (
    (OK, "ok"),
    (FAILURE, "any other failure"),
    (USAGE, "usage: a bad flag, argument, setting or file; a request refused as invalid (400, 413); not Tessera's URL"),
    (NOT_FOUND, "not found: key, version, environment, policy or token"),
    (DENIED, "unauthenticated (no token, unknown, expired or revoked) or forbidden"),
    (CONFLICT, "conflict: version (current_version printed), key, secret flag, idempotency"),
    (UNAVAILABLE, "unavailable: no server reachable, 503, timeout"),
    (INTEGRITY, "integrity: tampering found, `audit verify` failed"),
)
DEFAULT_ADDR = "http://127.0.0.1:8200"
OUTPUTS = ("table", "json", "yaml")


class CliError(ClickException):
    """Ends the command with one ``error: …`` line on stderr and ``code`` as the exit status."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = self.exit_code = code


def fail(message: str, code: int = FAILURE) -> NoReturn:
    raise CliError(message, code)


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an SDK error (see :data:`EXIT_CODES`)."""
    from tessera.client.sdk import (
        ConfigurationError,
        Conflict,
        Forbidden,
        InvalidRequest,
        NotFound,
        Unauthenticated,
        Unavailable,
    )
    from tessera.client.sdk import TesseraError as SdkError

    if not isinstance(exc, SdkError):
        return FAILURE
    if isinstance(exc, Unavailable) or exc.status in (502, 503, 504) or exc.code in ("deadline_exceeded", "not_ready"):
        return UNAVAILABLE
    if exc.code == "integrity_error":
        return INTEGRITY
    if isinstance(exc, ConfigurationError | InvalidRequest) or exc.status == 413:
        return USAGE
    if isinstance(exc, NotFound):
        return NOT_FOUND
    if isinstance(exc, Unauthenticated | Forbidden):
        return DENIED
    if isinstance(exc, Conflict) or exc.status in (409, 422) or exc.code.startswith("idempotency"):
        return CONFLICT
    return FAILURE


def describe(exc: BaseException) -> str:
    """One line for an SDK error, with the facts a caller acts on (``current_version``, the keys that moved)."""
    from tessera.client.sdk import TesseraError as SdkError
    from tessera.client.sdk import VersionConflict

    text = str(exc)
    if isinstance(exc, VersionConflict) and exc.current_version is not None:
        text += f"; current_version: {exc.current_version}"
    if isinstance(exc, SdkError):
        keys = exc.details.get("keys")
        if isinstance(keys, list) and keys:
            text += "; keys that moved: " + ", ".join(str(k) for k in keys)
        elif exc.code == "version_conflict" and isinstance(exc.details.get("current_version"), int) and "current_version" not in text:
            text += f"; current_version: {exc.details['current_version']}"
    return " ".join(text.split())


# ---------------------------------------------------------------------- the login file
def token_file() -> Path:
    """Where ``tessera login`` keeps the token (``TESSERA_TOKEN_FILE``, else ``~/.tessera-token``)."""
    named = os.environ.get("TESSERA_TOKEN_FILE")
    return Path(named).expanduser() if named else Path.home() / ".tessera-token"


def read_token_file() -> str | None:
    path = token_file()
    try:
        info = path.stat()
    except OSError:
        return None
    if stat.S_IMODE(info.st_mode) & 0o077:
        fail(f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it, or run tessera login again",
             USAGE)
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", USAGE)


def write_token_file(token: str) -> Path:
    """Write the token with mode 0600 from the start (a new file replaces the old one atomically)."""
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.replace(partial, path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc} (set TESSERA_TOKEN_FILE to write elsewhere)", FAILURE)
    return path


# ---------------------------------------------------------------------- connection settings and output
@dataclass
class Cli:
    """The settings of one command run: where, who, which scope, how to print."""

    addr: str | None = None
    token: str | None = None
    namespace: str | None = None
    env: str | None = None
    output: str = "table"
    output_given: bool = False  # --output or --json was given (watch prints JSON lines unless asked for a table)

    @property
    def endpoints(self) -> list[str]:
        raw = self.addr or os.environ.get("TESSERA_ADDR") or os.environ.get("TESSERA_URL") or DEFAULT_ADDR
        endpoints = [part.strip() for part in raw.split(",") if part.strip()]
        if not endpoints:
            fail("--addr / TESSERA_ADDR is empty: give the server's URL, e.g. http://127.0.0.1:8200", USAGE)
        return endpoints

    def resolved_token(self, required: bool = True) -> str | None:
        token = self.token or os.environ.get("TESSERA_TOKEN") or read_token_file()
        if not token and required:
            fail("no token: pass --token, set TESSERA_TOKEN, or run `tessera login`", DENIED)
        return token

    @property
    def scope_namespace(self) -> str:
        return self.namespace or os.environ.get("TESSERA_NAMESPACE") or "default"

    @property
    def scope_env(self) -> str:
        return self.env or os.environ.get("TESSERA_ENV") or "default"

    def client(self, *, token_required: bool = True) -> Any:
        from tessera.client.sdk import Client, ConfigurationError

        try:
            return Client(self.endpoints, self.resolved_token(token_required) or "", namespace=self.scope_namespace,
                          env=self.scope_env, last_known_good=False, retries=1)
        except ConfigurationError as exc:
            message = exc.message
            if "endpoint" in message:
                message = f"--addr / TESSERA_ADDR: {message}"
            elif "namespace" in message:
                message = f"--namespace / TESSERA_NAMESPACE: {message}"
            elif "env" in message:
                message = f"--env / TESSERA_ENV: {message}"
            fail(message, USAGE)

    # ------------------------------------------------------------------ printing
    @property
    def machine(self) -> bool:
        return self.output in ("json", "yaml")

    def dump(self, data: Any) -> None:
        """Print ``data`` as JSON or YAML (``--output``)."""
        if self.output == "yaml":
            import yaml

            data = json.loads(json.dumps(data, default=cell))  # times as RFC 3339 text, like the JSON
            typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False), nl=False)
        else:
            typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=cell))

    def show(self, data: Any, headers: Sequence[str] | None = None, rows: Iterable[Sequence[Any]] | None = None,
             text: str | None = None) -> None:
        """``data`` for ``--output json|yaml``; else a table of ``rows`` (or ``text`` as it is)."""
        if self.machine:
            self.dump(data)
        elif text is not None:
            typer.echo(text)
        else:
            print_table(headers or (), rows or ())


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    return json.dumps(value, ensure_ascii=False, default=str)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Plain aligned columns (``kubectl`` style): no colours, no wrapping, so ``grep`` and ``awk`` work on it."""
    table = [[cell(value) for value in row] for row in rows]
    header = [h.upper() for h in headers]
    widths = [max([len(header[i])] + [len(row[i]) for row in table]) for i in range(len(header))]
    for row in [header, *table]:
        typer.echo("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip())


def value_text(value: Any) -> str:
    """A value as ``get`` prints it: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an SDK call; its error becomes the one line and the exit status of :data:`EXIT_CODES`."""
    from tessera.client.sdk import TesseraError as SdkError

    try:
        return fn(*args, **kwargs)
    except SdkError as exc:
        fail(describe(exc), exit_code_for(exc))


# ---------------------------------------------------------------------- the shared options
def _common_options() -> dict[str, tuple[Any, Any]]:
    return {
        "addr": (str | None, typer.Option(None, "--addr", help="server URL(s), comma-separated [env: TESSERA_ADDR, TESSERA_URL]",
                                          show_default=False)),
        "token": (str | None, typer.Option(None, "--token", help="the token [env: TESSERA_TOKEN; else `tessera login`'s file]",
                                           show_default=False)),
        "namespace": (str | None, typer.Option(None, "--namespace", "-n", help="namespace [env: TESSERA_NAMESPACE; default]",
                                               show_default=False)),
        "env": (str | None, typer.Option(None, "--env", "-e", help="environment [env: TESSERA_ENV; default]", show_default=False)),
        "output": (str | None, typer.Option(None, "--output", "-o", help="table, json or yaml", show_default=False)),
        "as_json": (bool, typer.Option(False, "--json", help="same as --output json")),
    }


COMMON_NAMES = tuple(_common_options())


def settings_from(values: dict[str, Any], parent: Cli | None = None) -> Cli:
    """Merge a command's options over the ones given before the command."""
    base = parent or Cli()
    output = "json" if values.get("as_json") else values.get("output") or base.output
    if output not in OUTPUTS:
        fail(f"--output must be table, json or yaml, not {output!r}", USAGE)
    return Cli(
        addr=values.get("addr") or base.addr,
        token=values.get("token") or base.token,
        namespace=values.get("namespace") or base.namespace,
        env=values.get("env") or base.env,
        output=output,
        output_given=bool(values.get("as_json") or values.get("output")) or base.output_given,
    )


def current_parent() -> Cli | None:
    context = get_current_context(silent=True)
    root = context.find_root() if context else None
    return root.obj if root is not None and isinstance(root.obj, Cli) else None


def remote(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the connection and output options; it receives them as its first argument, a :class:`Cli`."""
    signature = inspect.signature(fn)
    own = [p for p in signature.parameters.values() if p.name != "cli"]
    options = _common_options()
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
             for name, (annotation, option) in options.items()]
    hints = typing_hints(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        common = {name: kwargs.pop(name, None) for name in options}
        return fn(settings_from(common, current_parent()), *args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: hints.get(p.name, p.annotation) for p in own},
                               **{name: annotation for name, (annotation, _) in options.items()}}
    del wrapper.__wrapped__  # typer must read the signature above, not the function's own
    return wrapper


def typing_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(fn)


def stdin_text() -> str:
    """Standard input, one trailing newline dropped (``echo secret | tessera put k -``)."""
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text
