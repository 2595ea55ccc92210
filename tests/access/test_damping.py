"""Brute-force damping limits (``core/damping.py``) with a fake clock."""

from __future__ import annotations

from tessera.core.damping import FailureDamper


def test_limits_window_and_penalty():
    now = [0.0]
    damper = FailureDamper(limit=3, window=60, penalty=30, clock=lambda: now[0])
    assert [damper.failure("a") for _ in range(3)] == [False] * 3
    assert damper.failure("b") is False  # per address
    assert damper.failure("a") is True  # the 4th within the window starts the penalty
    assert damper.retry_after("a") == 30
    now[0] = 20.0
    assert damper.failure("a") is True and damper.retry_after("a") == 10  # not extended
    now[0] = 30.5
    assert damper.failure("a") is False  # penalty over, counting starts afresh


def test_old_failures_leave_the_window():
    now = [0.0]
    damper = FailureDamper(limit=2, window=10, penalty=30, clock=lambda: now[0])
    for t in (0.0, 5.0, 11.0, 16.0, 21.0):
        now[0] = t
        assert damper.failure("a") is False  # never more than 2 inside any 10 s
