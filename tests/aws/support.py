"""Shared moto plumbing for the aws tests and the ``aws-moto``/``aws-server`` contract-suite factories.

In-process: one set of boto3 clients for the whole session; each test opens ``mock_aws`` without resetting
it and gets its own table and bucket, so the KMS key (slow to create in moto) is made once per session.
Server: one ``moto_server`` process per test session (per xdist worker) on 127.0.0.1, same scheme.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import moto  # noqa: F401  (before any boto3 session: STACK-NOTES)

from tessera.core.backends.aws import AwsClients, AwsStore, CallCounter, KmsKeyService
from tessera.core.backends.aws_setup import ensure_bucket, ensure_key, ensure_table
from tessera.core.crypto import CachingKeyService

REGION = "us-east-1"
KEY_ALIAS = "alias/tessera"
REPO = Path(__file__).resolve().parents[2]


def unique_names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:12]
    return f"tessera-t-{suffix}", f"tessera-b-{suffix}"


@dataclass
class AwsTarget:
    """Where a test's resources live: clients plus the table, bucket and key names."""

    clients: AwsClients
    table: str
    bucket: str
    key_arn: str
    endpoint_url: str | None = None

    def store(self, calls: CallCounter | None = None, **kwargs: Any) -> AwsStore:
        return AwsStore(table=self.table, bucket=self.bucket, dynamodb=self.clients.dynamodb, s3=self.clients.s3,
                        calls=calls, **kwargs)

    def kms(self, calls: CallCounter | None = None) -> KmsKeyService:
        return KmsKeyService(self.clients.kms, KEY_ALIAS, calls)

    def pair(self) -> tuple[AwsStore, CachingKeyService]:
        calls = CallCounter()
        return self.store(calls), CachingKeyService(self.kms(calls))

    def env(self) -> dict[str, str]:
        """Environment for a process (server, CLI) using these resources."""
        values = {
            "TESSERA_BACKEND": "aws",
            "TESSERA_BUCKET": self.bucket,
            "TESSERA_TABLE": self.table,
            "TESSERA_KMS_KEY_ID": KEY_ALIAS,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        if self.endpoint_url:
            values["AWS_ENDPOINT_URL"] = self.endpoint_url
        return values


def create_resources(clients: AwsClients, *, hardened: bool = False) -> tuple[str, str, str]:
    table, bucket = unique_names()
    arn, _ = ensure_key(clients, KEY_ALIAS)
    ensure_table(clients, table, pitr=hardened)
    ensure_bucket(clients, bucket, arn, REGION, hardened=hardened)
    return table, bucket, arn


# ---------------------------------------------------------------------- in-process moto
_in_process: AwsClients | None = None


def in_process_clients() -> AwsClients:
    global _in_process
    if _in_process is None:
        _in_process = AwsClients.create(REGION, max_attempts=3)
    return _in_process


@contextlib.contextmanager
def mocked_aws() -> Iterator[AwsClients]:
    """``mock_aws`` kept across tests (no reset on entry or exit): the session's KMS key survives."""
    from moto import mock_aws

    mock = mock_aws()
    mock.start(reset=False)
    try:
        yield in_process_clients()
    finally:
        mock.stop(remove_data=False)


@contextlib.contextmanager
def moto_target(*, hardened: bool = False) -> Iterator[AwsTarget]:
    with mocked_aws() as clients:
        table, bucket, arn = create_resources(clients, hardened=hardened)
        yield AwsTarget(clients, table, bucket, arn)


@contextlib.contextmanager
def aws_moto_backend(tmp_path: Path) -> Iterator[tuple[AwsStore, CachingKeyService]]:
    with moto_target() as target:
        yield target.pair()


# ---------------------------------------------------------------------- a real moto_server process
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """A ``moto_server`` subprocess on 127.0.0.1 (``serialized=True``: the project's emulator,
    ``python -m tests.cluster emulator``, whose transactions are atomic under concurrent requests and cost
    what they touch; see tests/cluster/emulator.py)."""

    def __init__(self, serialized: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if serialized:
            command = [sys.executable, "-m", "tests.cluster", "emulator", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("moto_server did not start")
        self._clients: AwsClients | None = None

    def clients(self) -> AwsClients:
        if self._clients is None:
            self._clients = AwsClients.create(REGION, self.url, max_attempts=3)
        return self._clients

    def target(self) -> AwsTarget:
        table, bucket, arn = create_resources(self.clients())
        return AwsTarget(self.clients(), table, bucket, arn, self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_servers: dict[bool, MotoServer] = {}


def shared_server(serialized: bool = False) -> MotoServer:
    """One server of each kind per test process, stopped at exit."""
    server = _servers.get(serialized)
    if server is None or server.process.poll() is not None:
        server = MotoServer(serialized)
        _servers[serialized] = server
        atexit.register(server.stop)
    return server


@contextlib.contextmanager
def aws_server_backend(tmp_path: Path) -> Iterator[tuple[AwsStore, CachingKeyService]]:
    yield shared_server().target().pair()
