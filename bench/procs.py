"""Processes the harness starts: each in its own process group, every one stopped on the way out.

Every server or helper the bench starts goes through :class:`Processes`, a context manager that kills the whole
process group of each child (SIGTERM, then SIGKILL after a grace period) when the block ends, normally, on an
exception or on Ctrl-C. Nothing the harness starts outlives it.

    with Processes() as procs:
        server = procs.start("bare", [sys.executable, "-m", "uvicorn", ...], log=tmp / "bare.log")
        wait_http(f"http://127.0.0.1:{port}/", timeout=15)
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _kill_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of an exited leader
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)


@dataclass
class Processes:
    """Owns every child the harness starts; ``stop``/exit kills each one's process group."""

    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> Child:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it until it ends
        try:
            process = subprocess.Popen(
                args, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
                start_new_session=True,  # its own process group: killpg reaches its workers too
            )  # fmt: skip
        finally:
            handle.close()
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        _kill_group(child.process)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_http(url: str, timeout: float, child: Child | None = None, method: str = "GET", body: bytes | None = None) -> None:
    """Until ``url`` answers 2xx; raises (with the child's log) when it exits or the time is up."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited early (rc {child.process.returncode}):\n{child.log_tail()}")
        try:
            response = httpx.request(method, url, content=body, timeout=2)
            if response.status_code < 300:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.1)
    tail = child.log_tail() if child else ""
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s ({last})\n{tail}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    found.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its descendants, summed."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return total


def wait_idle(pid: int, quiet: float = 0.5, timeout: float = 30.0) -> bool:
    """Until the process tree used (almost) no CPU for ``quiet`` seconds; False if ``timeout`` came first."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - last > 0.02:  # more than 20% of a core in the last 100 ms: still busy
            quiet_since = time.monotonic()
        last = now
        if time.monotonic() - quiet_since >= quiet:
            return True
    return False
