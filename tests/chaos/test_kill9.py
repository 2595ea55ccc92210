"""kill -9 under several writers, round after round (issue 13 §8): no acknowledged write lost, no gaps, every
acknowledged mutation audited, the audit chain verifies after every crash. ``make chaos`` runs 50 rounds."""

from __future__ import annotations

import random
import time

import pytest

from tests.chaos.harness import Writers, audit_verify, check_acknowledged, check_audited, scale
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_chaos-kill9-root-token-0123456789"


def test_kill_9_rounds_under_writers(tmp_path):
    rounds = int(scale(10, 50))
    data = tmp_path / "data"
    rng = random.Random(13)
    writers: Writers | None = None
    revisions = []
    for round_number in range(rounds):
        server = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / f"round{round_number}.log").start(timeout=60)
        if writers is None:
            writers = Writers(server.url, TOKEN, count=4, prefix="chaos")
        writers.url = server.url
        with server.client() as client:
            revision = client.get("/health").json()["revision"]
        assert not revisions or revision >= revisions[-1], (revision, revisions)  # nothing committed went away
        revisions.append(revision)
        before = len(writers.acks)
        threads = writers.run(f"r{round_number}")
        deadline = time.monotonic() + 30
        while len(writers.acks) == before and time.monotonic() < deadline:  # the writers are going (a slow machine)
            time.sleep(0.05)
        assert len(writers.acks) > before, f"round {round_number}: no write acknowledged in 30 s"
        time.sleep(rng.uniform(0.3, 1.2))  # then kill at a random moment, with writes in flight
        server.kill9()
        writers.stop.set()
        for thread in threads:
            thread.join(30)
        audit_verify(data)  # on the crashed store itself, before any restart repairs anything
    assert writers is not None
    final = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "final.log").start(timeout=60)
    try:
        with final.client() as client:
            check_acknowledged(client, writers.acks)
            check_audited(client, writers.acks)
            assert client.get("/health").json()["revision"] >= max(ack.revision for ack in writers.acks)
    finally:
        final.stop()
    audit_verify(data)
    print(f"kill -9: {rounds} rounds, 4 writers, {len(writers.acks)} acknowledged writes, 0 lost, 0 gaps, "
          f"audit chain intact")
