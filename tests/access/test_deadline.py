"""The server-side deadline per request (issue 13 §3): a request past it before its commit point gets
``503 deadline_exceeded`` and nothing changed; a write whose commit itself outlasts the deadline is reported as
what it is, committed. Watches and imports keep their own bounds (no deadline)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.model import ROOT as ROOT_PRINCIPAL
from tessera.core.model import Scope
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.access.conftest import ROOT, ROOT_TOKEN, bearer
from tests.access.test_policy import _many_rules
from tests.access.test_ready import HOLD_LOCK

TEAMS = {f"team{t}": {f"svc{s}": {"k1": 1, "password": "x"} for s in range(25)} for t in range(8)}  # 400 keys


def app_with_deadline(tmp_path, seconds: float):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN, request_deadline=seconds))
    return container, TestClient(create_app(container))


def deadline_exceeded(response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded" and "nothing changed" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_requests_past_the_deadline_end_with_503_and_change_nothing(tmp_path):
    """The issue's case (there: 2,000 keys, 64,000 rules): 400 keys, 10 policies of 1,000 rules. With a deadline far below what a listing costs,
    the listing, an export, a diff and a promote all end with ``503 deadline_exceeded``; the promote
    (a write) changed nothing. The import that seeded the keys has no deadline (it keeps its own bounds)."""
    container, client = app_with_deadline(tmp_path, 0.001)
    with client:
        imported = client.post("/config/import", json={"values": TEAMS}, headers=ROOT)
        assert imported.status_code == 200 and imported.json()["created"] == 400  # no deadline on imports
        for p in range(10):
            rules = [{"path": r.path, "capabilities": list(r.capabilities), "effect": r.effect, "envs": list(r.envs)}
                     for r in _many_rules(p, 1000)]  # fmt: skip
            assert client.put(f"/policies/big{p}", json={"rules": rules}, headers=ROOT).status_code == 201
        policies = [f"big{p}" for p in range(10)]
        created = client.post("/auth/tokens", json={"service": "lister", "policies": policies}, headers=ROOT)
        token = created.json()["token"]
        assert client.put("/envs/prod", json={"parent": "default"}, headers=ROOT).status_code == 201
        started = time.monotonic()
        deadline_exceeded(client.get("/config?limit=10000", headers={**bearer(token), "X-Request-Id": "list-late"}))
        deadline_exceeded(client.get("/config?limit=10000", headers=ROOT))
        deadline_exceeded(client.get("/config/export", headers=ROOT))
        deadline_exceeded(client.get("/diff?from=default&to=prod", headers=ROOT))
        deadline_exceeded(client.post("/config/promote?from=default&to=prod", json={"expected": {}}, headers=ROOT))
        assert time.monotonic() - started < 60  # each ended at its deadline, not after the work (bound: the runner)
        assert container.service.list(ROOT_PRINCIPAL, Scope(env="prod"), None) == container.service.list(
            ROOT_PRINCIPAL, Scope(env="default"), None
        )  # prod inherits; nothing of its own was promoted
        assert all(leaf.env == "default" for leaf in container.service.list(ROOT_PRINCIPAL, Scope(env="prod"), None))
        assert client.get("/watch?timeout=0", headers=ROOT).status_code == 200  # watches have no deadline
        records = container.access.stores.query(key=None, service="lister", since=None, limit=10)
        assert [(e.request_id, e.action, e.status, e.outcome) for e in records] == [("list-late", "config.list", 503, "error")]
    container.close()


@pytest.mark.timeout(120)
def test_a_write_whose_commit_outlasts_the_deadline_is_reported_committed(tmp_path):
    """The deadline is checked before the commit point, never after: a write that waits for the store's write lock
    (held by another process) longer than the deadline commits when the lock is free, and says so."""
    container, client = app_with_deadline(tmp_path, 0.3)
    with client:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(container.store.path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        answers: list = []
        try:
            assert holder.stdout.readline().strip() == "locked"
            writer = threading.Thread(target=lambda: answers.append(client.put("/config/a.b", json={"value": "v"}, headers=ROOT)))
            writer.start()
            time.sleep(1.0)  # > the deadline, well under the store's 30 s busy timeout
            assert writer.is_alive(), "the write did not wait for the lock"
        finally:
            holder.communicate("\n", timeout=10)
        writer.join(60)
        assert answers[0].status_code == 201, answers[0].text
        assert client.get("/config/a.b", headers=ROOT).json()["value"] == "v"
    container.close()
