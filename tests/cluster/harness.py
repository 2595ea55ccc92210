"""Three ``tessera serve --backend aws`` nodes on one emulator, on 127.0.0.1, each one killable (SIGKILL),
pausable (SIGSTOP/SIGCONT) and restartable on its own port.

By hand: ``python -m tests.cluster up`` prints the node URLs and the root token, then waits (Ctrl-C stops all).
In a test::

    with Cluster(tmp_path) as cluster:
        a, b, c = cluster.nodes
        httpx.put(f"{a.url}/config/x", json={"value": 1}, headers=cluster.headers)
        a.kill(); a.restart()
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.aws.support import REGION
from tests.cluster.emulator import REPO, Emulator, free_port

TESSERA = [sys.executable, "-m", "tessera.client.cli"]


def base_env(endpoint: str, suffix: str) -> dict[str, str]:
    """A node's environment: the emulator's endpoint, fake credentials, names of its own table/bucket/key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "AWS_"))}
    env.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "TESSERA_BACKEND": "aws",
        "TESSERA_BUCKET": f"tessera-cluster-{suffix}",
        "TESSERA_TABLE": f"tessera-cluster-{suffix}",
        "TESSERA_KMS_KEY_ID": f"alias/tessera-cluster-{suffix}",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def parse_exports(text: str) -> dict[str, str]:
    exports = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            exports[name] = shlex.split(value)[0]
    return exports


@dataclass
class Node:
    """One ``tessera serve --backend aws`` process; its port stays the same across restarts."""

    name: str
    env: dict[str, str]
    root_token: str
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Node:
        args = [*TESSERA, "serve", "--backend", "aws", "--host", "127.0.0.1", "--port", str(self.port),
                "--root-token", self.root_token, "--data-dir", str(self.log_path.parent / f"{self.name}-data")]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it until it ends
        self.process = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited at start:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"node {self.name} did not become healthy:\n{self.log()[-3000:]}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, requests in flight get a reset connection."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)  # a paused process dies as well, but let it see the kill
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections and answers nothing until :meth:`resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> Node:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """The emulator plus ``size`` nodes sharing one table, bucket and KMS key (made by ``tessera aws init``)."""

    def __init__(self, workdir: Path, size: int = 3, root_token: str | None = None, emulator_port: int = 0) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.root_token = root_token or "tsr_cluster-" + secrets.token_hex(16)
        self.emulator = Emulator(emulator_port, log_path=workdir / "emulator.log")
        self.nodes: list[Node] = []

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.root_token}"}

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> Cluster:
        try:
            self.emulator.start()
            env = base_env(self.emulator.url, secrets.token_hex(4))
            init = subprocess.run([*TESSERA, "aws", "init"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            if init.returncode != 0:
                raise RuntimeError(f"tessera aws init failed:\n{init.stderr}")
            env.update(parse_exports(init.stdout))
            self.nodes = [Node(name, env, self.root_token, self.workdir / f"{name}.log") for name in "abcdefghij"[: self.size]]
            # The first node stores the root token's digest; the others then start side by side.
            self.nodes[0].start()
            with ThreadPoolExecutor(max(1, self.size - 1)) as pool:
                list(pool.map(Node.start, self.nodes[1:]))
        except BaseException:
            self.stop()
            raise
        return self

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.emulator.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def up(workdir: Path, size: int = 3, emulator_port: int = 0) -> None:
    """``python -m tests.cluster up``: start, print where everything is, wait for Ctrl-C or SIGTERM."""
    cluster = Cluster(workdir, size, emulator_port=emulator_port)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with cluster:
        print(f"emulator  {cluster.emulator.url}  (pid {cluster.emulator.pid})")
        for node in cluster.nodes:
            assert node.process is not None
            print(f"node {node.name}    {node.url}  (pid {node.process.pid}; kill -9 / kill -STOP / kill -CONT it)")
        print(f"root token {cluster.root_token}")
        print(f"TESSERA_URLS={','.join(cluster.urls)}")
        print(f"logs in {workdir}; Ctrl-C stops everything", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", flush=True)
