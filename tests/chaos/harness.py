"""What the chaos and soak tests share: their scale (short in ``make test``, long under ``make chaos``), the
contract-level invariants, and ``tessera audit verify`` run on the store itself.

The invariants are the contract's (``API.md``), not today's internals: every acknowledged write is readable with
its version and value after any crash; a key's versions have no gaps; every acknowledged mutation has its audit
record (durable together with the mutation); the audit log's hash chains verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import REPO, TESSERA

LONG = os.environ.get("TESSERA_CHAOS") == "long"  # `make chaos`


def scale(short: float, long: float) -> float:
    """A test's size: ``short`` in ``make test``, ``long`` under ``make chaos`` (``TESSERA_CHAOS=long``)."""
    return long if LONG else short


@dataclass
class Ack:
    """One acknowledged write: what the server said it committed."""

    key: str
    value: object
    version: int
    revision: int
    request_id: str


@dataclass
class Writers:
    """``count`` threads writing their own keys as fast as the server takes them, until ``stop`` is set. Each
    acknowledged write is recorded; a write whose answer never came (the server died) is unknown, not lost."""

    url: str
    token: str
    count: int
    prefix: str
    keys_per_writer: int = 5
    acks: list[Ack] = field(default_factory=list)
    refused: list[tuple[str, object, int]] = field(default_factory=list)  # (key, value, status): not applied
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sequence: int = 0

    def run(self, rounds_tag: str, value: Callable[[int, int], object] | None = None) -> list[threading.Thread]:
        self.stop.clear()
        threads = [threading.Thread(target=self._write, args=(w, rounds_tag, value), daemon=True) for w in range(self.count)]
        for thread in threads:
            thread.start()
        return threads

    def _write(self, writer: int, tag: str, value: Callable[[int, int], object] | None) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                key = f"{self.prefix}.w{writer}.k{n % self.keys_per_writer}"
                body = value(writer, n) if value is not None else f"{tag}-w{writer}-n{n}"
                request_id = f"{tag}-w{writer}-n{n}"
                n += 1
                try:
                    response = client.put(f"/config/{key}", json={"value": body}, headers={"X-Request-Id": request_id})
                except httpx.HTTPError:
                    time.sleep(0.05)  # the server is down: the outcome of this write is unknown
                    continue
                if response.status_code in (200, 201):
                    answer = response.json()
                    with self._lock:
                        self.acks.append(Ack(key, body, answer["version"], answer["revision"], request_id))
                else:
                    with self._lock:
                        self.refused.append((key, body, response.status_code))
                    time.sleep(0.05)


def audit_verify(data_dir: Path, prefix: list[str] | None = None) -> dict:
    """``tessera audit verify --json`` on the store (no server involved); ``prefix`` runs it inside another
    command (``nsenter`` into a mount namespace)."""
    result = subprocess.run([*(prefix or []), *TESSERA, "audit", "verify", "--data-dir", str(data_dir), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {"ok": False, "error": result.stderr}
    assert result.returncode == 0 and report.get("ok"), (result.returncode, report, result.stderr[-2000:])
    return report


def check_acknowledged(client: httpx.Client, acks: list[Ack]) -> dict[str, int]:
    """No acknowledged write lost, no gaps: every key's history holds each acknowledged (version, value), its
    versions run 1..N without a hole, and the latest is at least the last acknowledged. Returns versions per key."""
    by_key: dict[str, list[Ack]] = {}
    for ack in acks:
        by_key.setdefault(ack.key, []).append(ack)
    versions: dict[str, int] = {}
    for key, key_acks in by_key.items():
        history: list[dict] = []
        before = None
        while True:
            params = {"limit": 1000, **({"before": before} if before else {})}
            page = client.get(f"/config/history/{key}", params=params)
            assert page.status_code == 200, page.text
            chunk = page.json()["versions"]
            history += chunk
            if len(chunk) < 1000:
                break
            before = chunk[-1]["version"]
        numbers = [v["version"] for v in history]
        assert numbers == list(range(len(numbers), 0, -1)), (key, numbers[:20])  # newest first, no gap
        stored = {v["version"]: v.get("value") for v in history}
        for ack in key_acks:
            assert stored.get(ack.version) == ack.value, (key, ack, stored.get(ack.version))
        versions[key] = len(numbers)
    return versions


def check_audited(client: httpx.Client, acks: list[Ack]) -> None:
    """Every acknowledged mutation has its audit record, with its real status (API.md, Audit)."""
    wanted = {ack.request_id for ack in acks}
    keys = sorted({ack.key for ack in acks})
    found: dict[str, dict] = {}
    for key in keys:
        entries = client.get("/audit", params={"key": key, "limit": 1000}).json()["entries"]
        found.update({e["request_id"]: e for e in entries if e["request_id"] in wanted})
    # /audit shows at most 1,000 entries per key, newest first: check what fits (all of them in the short runs).
    per_key: dict[str, int] = {}
    for ack in acks:
        per_key[ack.key] = per_key.get(ack.key, 0) + 1
    for ack in acks:
        if per_key[ack.key] > 900:
            continue
        entry = found.get(ack.request_id)
        assert entry is not None, f"acknowledged write {ack.request_id} ({ack.key} v{ack.version}) has no audit record"
        assert entry["status"] in (200, 201) and entry["outcome"] == "allowed", entry


def process_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
