"""Compare-and-set writers in several processes against one moto server: no lost update, contiguous
versions, and store-wide revisions strictly increasing with no gaps."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from tests.aws.support import REGION, shared_server

WORKERS = 3
INCREMENTS = 5


def increment_worker(endpoint: str, table: str, bucket: str, worker: int, increments: int) -> dict:
    """One process = one node: its own clients, caches and retries."""
    from tessera.core.backends.aws import AwsClients, AwsStore, KmsKeyService
    from tessera.core.crypto import CachingKeyService
    from tessera.core.errors import NotFound, VersionConflict
    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    clients = AwsClients.create(REGION, endpoint)
    store = AwsStore(table=table, bucket=bucket, dynamodb=clients.dynamodb, s3=clients.s3, calls=clients.calls)
    service = ConfigService(store, CachingKeyService(KmsKeyService(clients.kms, "alias/tessera", clients.calls)))
    scope = Scope()
    committed, conflicts = [], 0
    for step in range(increments):
        while True:
            try:
                current = service.get(ROOT, scope, "counter")
                value, version = current.value, current.version.version
            except NotFound:
                value, version = 0, 0
            try:
                result = service.put(ROOT, scope, "counter", value + 1, expected_version=version)
            except VersionConflict:
                conflicts += 1
                continue
            committed.append(("counter", result.version.version, result.version.revision))
            break
        # A write to a key of its own: contends only for the revision counter.
        own = service.put(ROOT, scope, f"worker{worker}.step", step)
        committed.append((f"worker{worker}.step", own.version.version, own.version.revision))
    return {"committed": committed, "conflicts": conflicts, "pid": os.getpid()}


@pytest.mark.slow
def test_concurrent_cas_writers_lose_nothing():
    server = shared_server(serialized=True)
    target = server.target()
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as pool:
        results = pool.starmap(
            increment_worker,
            [(server.url, target.table, target.bucket, worker, INCREMENTS) for worker in range(WORKERS)],
        )
    assert len({r["pid"] for r in results}) == WORKERS
    committed = [c for r in results for c in r["committed"]]
    total = WORKERS * INCREMENTS

    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    store, keys = target.pair()
    service = ConfigService(store, keys)
    scope = Scope()
    # No lost update: every increment is in the final value, and versions are 1..total with value == version.
    assert service.get(ROOT, scope, "counter").value == total
    history = service.history(ROOT, scope, "counter", limit=1000)
    assert [entry.version.version for entry in history] == list(range(total, 0, -1))
    assert all(entry.value == entry.version.version for entry in history)
    # Revisions: one per commit, strictly increasing, no gaps, and the change log agrees with what writers saw.
    revisions = sorted(revision for _, _, revision in committed)
    assert revisions == list(range(1, 2 * total + 1))
    assert store.current_revision() == 2 * total
    changes = store.changes_since(0, 10_000)
    assert [c.revision for c in changes] == revisions
    assert {(c.key, c.version, c.revision) for c in changes} == set(committed)
    # The contention was real: some writers lost compare-and-set rounds and retried.
    assert sum(r["conflicts"] for r in results) > 0


def prefix_worker(endpoint: str, table: str, bucket: str, deep: bool, rounds: int, barrier) -> list[bool]:
    """Round i: one process writes ``r<i>.leaf``, the other ``r<i>.leaf.below``, at the same moment."""
    from tessera.core.backends.aws import AwsClients, AwsStore, KmsKeyService
    from tessera.core.crypto import CachingKeyService
    from tessera.core.errors import KeyConflict
    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    clients = AwsClients.create(REGION, endpoint)
    store = AwsStore(table=table, bucket=bucket, dynamodb=clients.dynamodb, s3=clients.s3)
    service = ConfigService(store, CachingKeyService(KmsKeyService(clients.kms, "alias/tessera")))
    won = []
    for round_number in range(rounds):
        key = f"r{round_number}.leaf" + (".below" if deep else "")
        barrier.wait()
        try:
            service.put(ROOT, Scope(), key, round_number)
            won.append(True)
        except KeyConflict:
            won.append(False)
    return won


@pytest.mark.slow
def test_concurrent_writers_cannot_make_a_key_and_its_prefix_both_live():
    server = shared_server(serialized=True)
    target = server.target()
    rounds = 8
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            shallow, deep = pool.starmap(
                prefix_worker,
                [(server.url, target.table, target.bucket, deep, rounds, barrier) for deep in (False, True)],
            )
    store, _ = target.pair()
    from tessera.core.model import Scope

    for round_number in range(rounds):
        live = [v.key for v in store.list_latest(Scope(), f"r{round_number}")]
        assert len(live) == 1, live  # exactly one of the two writes won the round
        assert shallow[round_number] != deep[round_number]
