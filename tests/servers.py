"""Real ``tessera serve`` processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TESSERA = [sys.executable, "-m", "tessera.client.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    data_dir: Path
    root_token: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve HTTPS, and clients verify against the certificate
    wrapper: list[str] = field(default_factory=list)  # a command that execs the server, e.g. ["prlimit", "--nofile=1024"]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.port = self.port or free_port()
        args = [*self.wrapper, *TESSERA, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.root_token:
            args += ["--root-token", self.root_token]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        args += self.extra_args
        self.log_path = self.log_path or self.data_dir.parent / f"server-{self.port}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}

        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it until it ends
        self.process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera serve exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tessera serve did not become healthy:\n{self.log()}")

    def worker(self, timeout: float = 30.0) -> ServerProcess:
        """Another process over this server's data directory, on a port of its own: a worker as ``tessera serve
        --workers`` starts them (a second ``tessera serve`` on the directory is refused; the serve holding its lock
        shares it with its workers). Same environment; its output goes to its own log."""
        worker = ServerProcess(self.data_dir, root_token=self.root_token, env=self.env, port=free_port())
        worker.log_path = self.data_dir.parent / f"worker-{worker.port}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env,
                       "TESSERA_DATA_DIR": str(Path(self.data_dir).resolve()), "TESSERA_BACKEND": "local"}
        log = open(worker.log_path, "ab")  # noqa: SIM115 - the process owns it until it ends
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "tessera.local.server:worker_app", "--host", "127.0.0.1",
             "--port", str(worker.port), "--log-level", "warning"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise RuntimeError(f"the worker exited early:\n{worker.log()}")
            try:
                if httpx.get(worker.url + "/health", timeout=1).status_code == 200:
                    return worker
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        worker.stop()
        raise RuntimeError(f"the worker did not become healthy:\n{worker.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill9(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        token = token or self.root_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs.setdefault("verify", self.verify)
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)
