"""Policy evaluation does not degrade with the number of rules (issue 13 §3): 64 policies × 1,000 rules once made
one list of 2,000 keys take 115 s. The real SQLite policy store, the real authorizer (its clock held, so refreshes
happen exactly when the test says), the real config service."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tessera.core.backends.keyring import LocalKeyring
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.backends.sqlite_access import SQLiteAccessStore
from tessera.core.crypto import CachingKeyService
from tessera.core.model import ROOT, Principal, Scope
from tessera.core.policy import PolicyAuthorizer
from tessera.core.service import ConfigService
from tests.access.test_policy import _many_rules

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two stores, same 2,000 keys: one holds 64 policies × 1,000 rules (and a 10-rule one), the other only the
    10-rule policy."""
    base = tmp_path_factory.mktemp("policy-scale")
    worlds = {}
    for name, big in (("big", True), ("small", False)):
        store = SQLiteStore(base / name / "tessera.db")
        access = SQLiteAccessStore(store)
        keys = CachingKeyService(LocalKeyring.load_or_create(base / name / "keyring.json"))
        values = {f"team{t}": {f"svc{s}": {"k1": 1, "password": "x"} for s in range(25)} for t in range(40)}
        assert ConfigService(store, keys).import_values(ROOT, Scope(), values).created == 2000
        now = datetime.now(UTC)
        if big:
            for p in range(64):
                access.put_policy(f"big{p}", _many_rules(p, 1000), now)
        access.put_policy("small", _many_rules(0, 10), now)
        clock = [0.0]
        authorizer = PolicyAuthorizer(access, refresh_seconds=1.0, clock=lambda clock=clock: clock[0])
        worlds[name] = (ConfigService(store, keys, authorizer=authorizer), authorizer, clock)
    yield worlds
    for service, _, _ in worlds.values():
        service.store.close()


def best_of(action, runs: int = 2) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def test_a_list_of_2000_keys_through_64000_rules_costs_what_it_does_through_10(world):
    service, _, _ = world["big"]
    big = Principal("tok_big", "big", tuple(f"big{p}" for p in range(64)))
    small = Principal("tok_small", "small", ("small",))
    counts = {}

    def listing(principal):
        def run():
            counts[principal.service] = len(service.list(principal, Scope(), None))
        return run

    listing(big)(), listing(small)()  # policies listed, compiled and indexed once, outside the timing
    small_seconds = best_of(listing(small))
    big_seconds = best_of(listing(big))
    assert 0 < counts["small"] < counts["big"] < 2000, counts  # the rules decide what is listed
    # The listing's resolution is cached (core/service.py ReadCache), so this compares policy decisions alone:
    # 6,400 times the rules may cost a few times more per decision (bigger index buckets), never in proportion.
    assert big_seconds < 10 * small_seconds, f"64,000 rules: {big_seconds:.3f} s, 10 rules: {small_seconds:.3f} s"


def test_a_refresh_costs_the_same_whatever_the_rules_stored(world):
    small = Principal("tok_small", "small", ("small",))

    def refresh_then_decide(name):
        service, authorizer, clock = world[name]

        def run():
            clock[0] += 2.0  # past refresh_seconds: this decision re-reads the policies
            authorizer.allowed(small, "read", Scope(), "team0.svc0.k1")
        return run

    refresh_then_decide("small")()
    small_seconds = best_of(refresh_then_decide("small"), runs=3)
    big_seconds = best_of(refresh_then_decide("big"), runs=1)
    # 65 policies stored against 1: a refresh reads each policy's (name, version) from an index — in proportion to
    # the policies, never to their 64,000 rules (which made it take seconds).
    assert big_seconds < 30 * small_seconds, f"with 64,000 rules stored: {big_seconds:.4f} s, with 10: {small_seconds:.4f} s"
