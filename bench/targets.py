"""The servers under test, each started on 127.0.0.1 on a free port by the harness (and stopped by it).

- :func:`start_asgi`: a baseline app of ``bench.apps`` under uvicorn with uvloop and httptools;
- :func:`start_etcd`: a one-member etcd (Debian's ``etcd-server``, 3.4) in a temp dir; its HTTP gateway serves
  ``POST /v3/kv/range`` with base64 keys;
- :func:`start_tessera`: ``tessera serve`` from this checkout on the embedded backend, optionally with
  ``--workers N`` (when the CLI has it) and extra environment (``TESSERA_AUDIT=off``).

:func:`seed_reads` gives a Tessera server what the read targets read, and a service token whose policy the server
evaluates on every read (allow and deny rules), as real clients read.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import REPO, Child, Processes, free_port, wait_http

ROOT_TOKEN = "tsr_bench-root-token-0123456789abcdef"
TESSERA = [sys.executable, "-m", "tessera.client.cli"]

PLAIN_KEY = "svc.db_url"
SECRET_KEY = "svc.api_key"
SUBTREE = "svc.tree"
SUBTREE_LEAVES = 20
WATCH_KEY = "watch.latency"
PARKED_KEY = "watch.parked"

# The service token's policy: a few rules the server evaluates on every read, a deny among them.
READER_POLICY = {
    "rules": [
        {"path": "svc.*", "capabilities": ["read", "list", "history"]},
        {"path": "svc.internal.*", "capabilities": ["read", "list", "history"], "effect": "deny"},
        {"path": "watch.*", "capabilities": ["read"]},
        {"path": "scale.*", "capabilities": ["read", "list"]},
        {"path": "teams.*.password", "capabilities": ["read"], "effect": "deny"},
        {"path": "cas.*", "capabilities": ["read", "write"]},
    ]
}


@dataclass
class Server:
    name: str
    url: str
    child: Child

    @property
    def pid(self) -> int:
        return self.child.pid


@dataclass
class TesseraServer(Server):
    data_dir: Path
    workers: int = 1
    root_token: str = ROOT_TOKEN

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.root_token}"}, timeout=timeout)


def start_asgi(procs: Processes, tmp: Path, name: str, app: str, timeout: float = 20.0, health: str = "/health") -> Server:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "--workers", "1"]  # fmt: skip
    child = procs.start(name, args, log=tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + health, timeout, child)
    return Server(name, url, child)


def etcd_available() -> bool:
    return shutil.which("etcd") is not None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def start_etcd(procs: Processes, tmp: Path, timeout: float = 30.0) -> Server:
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / "etcd-data"
    args = ["etcd", "--name", "bench", "--data-dir", str(data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"bench={peer_url}", "--log-level", "warn"]  # fmt: skip
    child = procs.start("etcd", args, log=tmp / "etcd.log")
    wait_http(client_url + "/health", timeout, child)
    return Server("etcd", client_url, child)


def etcd_put(server: Server, key: str, value: str) -> None:
    response = httpx.post(server.url + "/v3/kv/put", json={"key": b64(key), "value": b64(value)}, timeout=10)
    response.raise_for_status()


@functools.cache
def tessera_has_workers() -> bool:
    """Whether ``tessera serve`` has ``--workers`` (the lead is adding it: issue 8 §3)."""
    completed = subprocess.run([*TESSERA, "serve", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO,
                               env={**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})  # fmt: skip
    return "--workers" in completed.stdout


def start_tessera(procs: Processes, tmp: Path, name: str, workers: int = 1, env: dict[str, str] | None = None,
                  data_dir: Path | None = None, timeout: float = 60.0) -> TesseraServer:  # fmt: skip
    port = free_port()
    data_dir = data_dir or tmp / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [*TESSERA, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
            "--root-token", ROOT_TOKEN]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]
    # The benchmarks park 10,000 watchers on one token: above the per-token caps a production server keeps.
    caps = {"TESSERA_MAX_LONG_POLLS": "1000000", "TESSERA_MAX_WEBSOCKETS": "1000000", "TESSERA_MAX_SUBSCRIPTIONS": "1000000"}
    child = procs.start(name, args, log=tmp / f"{name}.log", env={**caps, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout, child)
    return TesseraServer(name, url, child, data_dir, workers)


def create_service_token(server: TesseraServer, service: str = "bench-reader", policy: str = "bench-reader") -> str:
    """The policy (allow and deny rules) and a token for it, made through the API."""
    with server.client() as root:
        root.put(f"/policies/{policy}", json=READER_POLICY).raise_for_status()
        created = root.post("/auth/tokens", json={"service": service, "policies": [policy], "ttl_seconds": 86400})
        created.raise_for_status()
        return created.json()["token"]


def seed_reads(server: TesseraServer, minimal: bool = False) -> str:
    """The keys the read targets read (only the plain one when ``minimal``), in one import; returns a service token."""
    values: dict[str, object] = {PLAIN_KEY: "postgres://db.internal:5432/app"}
    if not minimal:
        values |= {SECRET_KEY: "sk_live_0123456789abcdef", "svc.internal.admin_password": "hidden", WATCH_KEY: 0}
        values |= {f"{SUBTREE}.leaf{index:02d}": (index if index % 3 else f"value-{index}") for index in range(SUBTREE_LEAVES)}
    secrets = [SECRET_KEY, "svc.internal.admin_password"] if not minimal else []
    with server.client() as root:
        response = root.post("/config/import", json={"values": values, "secrets": secrets})
        response.raise_for_status()
        if response.json().get("errors"):
            raise RuntimeError(f"seeding {server.name}: {response.json()['errors'][:3]}")
    return create_service_token(server)


def check_read(server: TesseraServer, token: str, path: str) -> None:
    """One read before the load: the target must answer 200 (a 403 would measure the refusal path)."""
    with server.client(token) as client:
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{server.name} {path}: {response.status_code} {response.text[:300]}")


def etcd_range_body(key: str) -> bytes:
    return json.dumps({"key": b64(key)}).encode()
