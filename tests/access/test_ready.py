"""``/ready`` tells the truth (issue 13 §6): ``503 not_ready`` with the reason while the store cannot take writes
(its write lock held by another process, its file system full) or the audit log cannot be written; ``/health`` stays
the cheap liveness answer."""

from __future__ import annotations

import subprocess
import sys
import time

from tessera.core.backends import sqlite as sqlite_backend

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # the write lock, as a backup tool or a forgotten sqlite3 shell would hold it
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def wait_for_ready_status(client, status: int, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/ready")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_ready_is_503_while_another_process_holds_the_store_write_lock(client, container):
    assert client.get("/ready").json() == {"status": "ready"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(container.store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = wait_for_ready_status(client, 503)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "not_ready" and "write lock" in error["message"] and error["request_id"]
        assert client.get("/health").status_code == 200  # liveness is not readiness
    finally:
        holder.communicate("\n", timeout=10)
    assert wait_for_ready_status(client, 200).json() == {"status": "ready"}


def test_ready_is_503_when_the_file_system_is_full(client, container, monkeypatch):
    """The probe's free-space rule (the real disk-full case runs in tests/chaos/test_disk_full.py, as root)."""
    monkeypatch.setattr(sqlite_backend, "MIN_FREE_BYTES", 1 << 62)
    refused = wait_for_ready_status(client, 503)
    assert refused.status_code == 503 and "full" in refused.json()["error"]["message"]
    monkeypatch.setattr(sqlite_backend, "MIN_FREE_BYTES", 1024 * 1024)
    assert wait_for_ready_status(client, 200).status_code == 200
