"""The checker on histories whose answer is known."""

from __future__ import annotations

import random

import pytest

from tests.cluster.linearizability import Op, check


def test_sequential_history_is_linearizable():
    history = [
        Op.read(1, 0, 1, None, 0),
        Op.write(1, "a", 2, 3, version=1),
        Op.read(2, 4, 5, "a", 1),
        Op.cas(2, 1, "b", 6, 7, ok=True, version=2),
        Op.cas(1, 1, "c", 8, 9, ok=False, version=2),
        Op.read(1, 10, 11, "b", 2),
    ]
    assert check(history).ok


def test_a_read_of_a_value_before_its_write_began_is_not():
    history = [Op.read(2, 0, 1, "a", 1), Op.write(1, "a", 2, 3, version=1)]
    result = check(history)
    assert not result.ok and result.stuck_at == history[0]


def test_a_read_concurrent_with_a_write_may_see_either():
    for seen in ((None, 0), ("a", 1)):
        history = [Op.write(1, "a", 0, 10, version=1), Op.read(2, 2, 3, seen[0], seen[1])]
        assert check(history).ok


def test_a_stale_read_after_a_newer_read_is_not():
    # The write overlaps both reads, but once one read saw "a", a later read cannot see the old state.
    history = [
        Op.write(1, "a", 0, 100, version=1),
        Op.read(2, 10, 20, "a", 1),
        Op.read(3, 30, 40, None, 0),
    ]
    assert not check(history).ok


def test_a_lost_acknowledged_write_is_not():
    history = [Op.write(1, "a", 0, 1, version=1), Op.write(1, "b", 2, 3, version=2), Op.read(2, 4, 5, "a", 1)]
    assert not check(history).ok


def test_two_compare_and_sets_from_the_same_version_cannot_both_win():
    both = [Op.cas(1, 0, "a", 0, 10, ok=True, version=1), Op.cas(2, 0, "b", 1, 9, ok=True, version=1)]
    assert not check(both).ok
    one = [Op.cas(1, 0, "a", 0, 10, ok=True, version=1), Op.cas(2, 0, "b", 1, 9, ok=False, version=1)]
    assert check(one).ok


def test_a_failed_compare_and_set_must_have_seen_a_different_version():
    history = [Op.write(1, "a", 0, 1, version=1), Op.cas(2, 1, "b", 2, 3, ok=False, version=1)]
    assert not check(history).ok


def test_a_write_applied_twice_shows_as_a_skipped_version():
    # The server said version 1, a later read shows version 2 with the same value and nobody else wrote.
    history = [Op.write(1, "a", 0, 1, version=1), Op.read(2, 2, 3, "a", 2)]
    assert not check(history).ok


def test_an_unknown_outcome_may_or_may_not_have_happened():
    happened = [Op.cas(1, 0, "a", 0, None), Op.read(2, 5, 6, "a", 1)]
    did_not = [Op.cas(1, 0, "a", 0, None), Op.read(2, 5, 6, None, 0), Op.write(2, "b", 7, 8, version=1)]
    assert check(happened).ok and check(did_not).ok
    # ...but it cannot take effect before it was invoked.
    too_early = [Op.read(2, 0, 1, "a", 1), Op.write(1, "a", 2, None)]
    assert not check(too_early).ok
    # An unknown write that happened after others read the old state is fine, once.
    late = [Op.write(1, "a", 0, None), Op.read(2, 1, 2, None, 0), Op.read(2, 3, 4, "a", 1), Op.read(3, 5, 6, None, 0)]
    assert not check(late).ok


def simulate(seed: int, clients: int = 5, ops_per_client: int = 12) -> list[Op]:
    """A linearizable history: a real register, operations taking effect at a random instant inside their interval."""
    rng = random.Random(seed)
    plans = []
    for client in range(clients):
        t = rng.random()
        for n in range(ops_per_client):
            start = t + rng.random()
            end = start + rng.random() * 3
            point = rng.uniform(start, end)
            plans.append((point, start, end, client, n))
            t = end + rng.random() * 0.2
    plans.sort()
    version, value, history = 0, None, []
    for _point, start, end, client, n in plans:
        kind = rng.choice(["read", "write", "cas", "cas"])
        if kind == "read":
            history.append(Op.read(client, start, end, value, version))
        elif kind == "write":
            version, value = version + 1, f"{client}-{n}"
            history.append(Op.write(client, value, start, end, version=version))
        else:
            expected = version if rng.random() < 0.6 else max(0, version - 1)
            if rng.random() < 0.15:  # its node died: unknown outcome, maybe applied
                if expected == version and rng.random() < 0.5:
                    version, value = version + 1, f"{client}-{n}"
                    history.append(Op.cas(client, expected, value, start, None))
                else:
                    history.append(Op.cas(client, expected, f"{client}-{n}", start, None))
            elif expected == version:
                version, value = version + 1, f"{client}-{n}"
                history.append(Op.cas(client, expected, value, start, end, ok=True, version=version))
            else:
                history.append(Op.cas(client, expected, f"{client}-{n}", start, end, ok=False, version=version))
    return history


@pytest.mark.parametrize("seed", range(20))
def test_simulated_linearizable_histories_pass(seed):
    assert check(simulate(seed)).ok


@pytest.mark.parametrize("seed", range(20))
def test_a_corrupted_read_is_caught(seed):
    history = simulate(seed)
    reads = [i for i, op in enumerate(history) if op.kind == "read" and op.version]
    if not reads:
        pytest.skip("no read of a written value in this history")
    i = reads[len(reads) // 2]
    bad = history[i]
    history[i] = Op.read(bad.client, bad.call, bad.ret, "never-written", bad.version)
    assert not check(history).ok
