"""The local AWS stand-in: moto's server (S3, DynamoDB and its Streams, KMS, ``/moto-api/``), patched to hold load.

Start it with ``python -m tests.cluster emulator --host 127.0.0.1 --port PORT`` from the repository root. It
answers everything ``moto_server`` answers, with two differences, both towards what AWS does:

- ``TransactWriteItems`` costs what the transaction touches, not what the table holds (``moto_patch``):
  flat time and memory over tens of thousands of commits, where plain moto grows by gigabytes in hundreds.
- Each service serves one request at a time. A real DynamoDB request (a conditional put, a transaction, a
  read) is atomic and isolated; moto's handlers are not thread-safe, and under its threaded server a
  ``GetItem`` could read a transaction half-applied, or two conditional puts both pass their condition.
  Requests to different services still run side by side; ``/moto-api/`` calls (reset, the request
  recorder) wait for all of them.

Example (a test that needs its own emulator)::

    emulator = Emulator().start()
    clients = AwsClients.create("us-east-1", emulator.url)
    ...
    emulator.stop()
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("dynamodb", "s3", "kms")


def service_of(environ: dict[str, Any]) -> str | None:
    """The signing service of a SigV4 request (DynamoDB Streams signs as ``dynamodb``); None if unsigned."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0]
        return scope.split("/")[3].lower()
    except IndexError:
        return None


class OneRequestPerService:
    """WSGI middleware: one lock per service; a request of no known service (``/moto-api/``) takes them all."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.locks = {name: threading.Lock() for name in (*SERVICES, "other")}
        self.ordered = [self.locks[name] for name in (*SERVICES, "other")]  # one order: no deadlock

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        service = service_of(environ)
        if service is None:
            locks = self.ordered
        else:
            locks = [self.locks.get(service, self.locks["other"])]
        for lock in locks:
            lock.acquire()
        try:
            # The whole body is produced under the lock: nothing is read from the models after release.
            return list(self.app(environ, start_response))
        finally:
            for lock in reversed(locks):
                lock.release()


def make_app() -> Any:
    """moto's server application with the transaction patch and the per-service locks."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from tests.cluster import moto_patch

    moto_patch.install()
    return OneRequestPerService(DomainDispatcherApplication(create_backend_app))


def serve(host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT (then exit 0), like ``moto_server``."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    # One log line per request costs the emulator CPU and says nothing a test reads; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run_simple(host, port, make_app(), threaded=True, request_handler=MotoRequestHandler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Emulator:
    """The emulator as a subprocess on 127.0.0.1, started exactly as a user starts it."""

    def __init__(self, port: int = 0, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.cluster", "emulator", "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self, timeout: float = 30.0) -> Emulator:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
        # moto's request recorder writes to ./moto_recording by default: keep it out of the repository.
        env.setdefault("MOTO_RECORDER_FILEPATH", os.path.join(tempfile.mkdtemp(prefix="tessera-emulator-"), "recording"))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the emulator exited at start ({self.process.returncode})") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the emulator did not start")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the emulator process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the emulator process has used (its own measure of work done)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def measure(self) -> tuple[int, float]:
        return self.rss_bytes(), self.cpu_seconds()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
