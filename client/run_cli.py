"""``tessera run -- CMD``: run a command with the resolved config in its environment, and with ``--watch``
restart it when a value it was given changes (as ``envconsul`` does).

Names follow the dotenv export (``database.host`` → ``DATABASE_HOST``); injected values replace variables of the
same name that the calling shell already has.

With ``--watch`` ``tessera run`` stays the parent: it watches the keys it injected (from the revision it read them
at, so no change is missed), and when one changes it reads the config again; if the environment CMD would get is
different, it stops CMD (SIGTERM, then SIGKILL after ``--grace`` seconds) and starts it again with the new one.
Keys matched by ``--no-restart-on`` never cause a restart (CMD gets their new values at its next start). SIGTERM,
SIGINT and SIGHUP sent to ``tessera run`` are passed on to CMD; when CMD exits on its own, ``tessera run`` exits
with its status.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any, NoReturn

import typer

from tessera.client.cli_base import USAGE, Cli, call, describe, exit_code_for, fail, remote

DEBOUNCE_SECONDS = 0.2  # changes arriving together (an import, a promote) cause one restart


def register(app: typer.Typer) -> None:
    app.command(name="run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(remote(run))


def dotenv_name(key: str) -> str:
    """``database.host`` → ``DATABASE_HOST`` (as ``tessera export --format dotenv`` names it)."""
    return key.replace("-", "_").replace(".", "_").upper()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for name, value in tree.items():
        out.update(flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return out


def matches(pattern: str, key: str) -> bool:
    """The policy path syntax: exact, ``prefix.*`` (any depth below), ``*`` alone, ``*`` as one middle segment."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        head = pattern[:-2].split(".")
        parts = key.split(".")
        return len(parts) > len(head) and all(h in ("*", p) for h, p in zip(head, parts, strict=False))
    want, parts = pattern.split("."), key.split(".")
    return len(want) == len(parts) and all(w in ("*", p) for w, p in zip(want, parts, strict=True))


def injected(client: Any, prefix: str | None) -> dict[str, tuple[str, str]]:
    """``{VARIABLE: (key, value as text)}`` for every key the token may read (below ``prefix``)."""
    tree = json.loads(call(client.export, "json", prefix))
    return {dotenv_name(key): (key, value if isinstance(value, str) else json.dumps(value))
            for key, value in flatten(tree).items()}


def environment_of(values: dict[str, tuple[str, str]]) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update({name: value for name, (_, value) in values.items()})
    return environment


def cannot_start(exc: OSError, command: list[str], values: dict[str, tuple[str, str]]) -> NoReturn:
    """One line for a CMD that cannot be started (127: not found, 126: not executable)."""
    if isinstance(exc, FileNotFoundError):
        fail(f"command not found: {command[0]}", 127)
    if isinstance(exc, PermissionError):
        fail(f"command not executable: {command[0]}", 126)
    if exc.errno == errno.E2BIG:
        size = sum(len(k) + len(v) + 2 for k, (_, v) in values.items())
        fail(f"cannot start {command[0]}: the environment is too large for the system ({len(values)} variables, "
             f"{size} bytes of config): inject less with --prefix", USAGE)
    fail(f"cannot start {command[0]}: {exc.strerror or exc}")


def start(command: list[str], values: dict[str, tuple[str, str]]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(command, env=environment_of(values))
    except OSError as exc:
        cannot_start(exc, command, values)


def run(
    cli: Cli,
    ctx: typer.Context,
    prefix: str | None = typer.Option(None, "--prefix", "-p", help="inject only keys below this prefix"),
    watch: bool = typer.Option(False, "--watch", "-w", help="restart CMD when a value it was given changes"),
    no_restart_on: list[str] | None = typer.Option(None, "--no-restart-on", help="a key pattern whose changes never "
                                                   "restart CMD (repeatable; exact, prefix.*, *)"),
    grace: float = typer.Option(10.0, "--grace", min=0.0, help="seconds between SIGTERM and SIGKILL on a restart"),
) -> None:
    """Run a command with the config injected as environment variables: tessera run -- ./server."""
    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        fail("give a command after --, e.g. tessera run -- env", USAGE)
    if command[0].startswith("-"):
        fail(f"tessera run: no such option: {command[0]} (the command goes after --: tessera run [OPTIONS] -- CMD)", USAGE)
    with cli.client() as client:
        if not watch:
            values = injected(client, prefix)
            try:
                os.execvpe(command[0], command, environment_of(values))
            except OSError as exc:
                cannot_start(exc, command, values)
        raise typer.Exit(Supervisor(client, command, prefix, list(no_restart_on or ()), grace).run())


class Supervisor:
    """Keeps CMD running with the current config; see the module docstring."""

    def __init__(self, client: Any, command: list[str], prefix: str | None, quiet: list[str], grace: float) -> None:
        self.client = client
        self.command = command
        self.prefix = prefix
        self.quiet = quiet
        self.grace = grace
        self.changed = threading.Event()
        self.stop_signal: int | None = None
        self.wake = threading.Event()

    def restarting(self, values: dict[str, tuple[str, str]]) -> dict[str, str]:
        """The part of the environment whose change restarts CMD."""
        return {name: value for name, (key, value) in values.items()
                if not any(matches(pattern, key) for pattern in self.quiet)}

    def on_event(self, event: Any) -> None:
        if not any(matches(pattern, event.key) for pattern in self.quiet):
            self.changed.set()
            self.wake.set()

    def on_error(self, exc: BaseException) -> None:
        from tessera.client.sdk.watch import is_fatal

        if not is_fatal(exc):
            typer.echo(f"tessera run: warning: {' '.join(str(exc).split())}", err=True)
        self.wake.set()

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum
        self.wake.set()

    def stop(self, child: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
        if child.poll() is None:
            child.send_signal(signum)
            try:
                child.wait(self.grace)
            except subprocess.TimeoutExpired:
                typer.echo(f"tessera run: {self.command[0]} (pid {child.pid}) still running after {self.grace:g}s: SIGKILL",
                           err=True)
                child.kill()
                child.wait()
        return child.returncode

    def run(self) -> int:
        revision = call(self.client.health).revision  # read before the values: a change after it is seen
        values = injected(self.client, self.prefix)
        patterns = [f"{self.prefix}.*", self.prefix] if self.prefix else ["*"]
        handle = call(self.client.watch, patterns, self.on_event, since=revision, on_error=self.on_error)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        child = start(self.command, values)
        try:
            while True:
                self.wake.wait(0.2)
                self.wake.clear()
                if self.stop_signal is not None:
                    return self.stop(child, self.stop_signal)
                if child.poll() is not None:
                    return child.returncode if child.returncode >= 0 else 128 - child.returncode
                if not handle.alive:
                    error = handle.error
                    self.stop(child)
                    if error is None:
                        fail("the watch stopped")
                    fail(f"the watch stopped: {describe(error)}", exit_code_for(error))
                if not self.changed.is_set():
                    continue
                time.sleep(DEBOUNCE_SECONDS)
                self.changed.clear()
                fresh = injected(self.client, self.prefix)
                if self.restarting(fresh) == self.restarting(values):
                    continue
                names = sorted(set(self.restarting(fresh).items()) ^ set(self.restarting(values).items()))
                shown = ", ".join(sorted({name for name, _ in names}))
                typer.echo(f"tessera run: {shown} changed; restarting {self.command[0]} (pid {child.pid})", err=True)
                self.stop(child)
                values = fresh
                child = start(self.command, values)
        finally:
            handle.stop(timeout=0.5)
            if child.poll() is None:
                self.stop(child)
