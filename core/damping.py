"""Brute-force damping: an address that keeps failing authentication is answered ``429`` for a while.

Limits (defaults; ``TESSERA_AUTH_FAILURE_LIMIT`` / ``_WINDOW`` / ``_PENALTY`` override them):
more than ``limit`` = 100 failed authentications with a presented token (a ``401`` for an unknown, expired or
revoked bearer token, or a refused WebSocket ``auth`` message; a request without any token guesses nothing and is not counted) from one client
address within ``window`` = 60 s put the address in a penalty of ``penalty`` = 30 s. During the penalty every further request from it that fails
authentication is answered ``429 rate_limited`` (with ``Retry-After``); the penalty is not extended by them
(it stays short and predictable, and the next ``limit`` + 1 guesses — 101 by default — start it again). Requests that authenticate are still served, so a legitimate service sharing an address (a NAT, a load balancer)
keeps working. State is per node and in memory.

>>> damper = FailureDamper(limit=2, window=60, penalty=30, clock=lambda: 0.0)
>>> damper.failure("10.0.0.1"), damper.failure("10.0.0.1"), damper.failure("10.0.0.1")
(False, False, True)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache

MAX_TRACKED_ADDRESSES = 100_000


@dataclass
class _Track:
    failures: deque[float] = field(default_factory=deque)
    penalty_until: float = 0.0


class FailureDamper:
    def __init__(
        self, limit: int = 100, window: float = 60.0, penalty: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.penalty = penalty
        self.clock = clock
        # the addresses seen, least recently failing dropped first past the bound (used under the lock only)
        self._tracks: LRUCache[str, _Track] = LRUCache(MAX_TRACKED_ADDRESSES)
        self._lock = threading.Lock()

    def failure(self, address: str) -> bool:
        """Count a failed authentication; True when the address is (now) penalized: answer 429, not 401."""
        now = self.clock()
        with self._lock:
            track = self._tracks.get(address)  # a hit becomes the most recently used
            if track is None:
                track = self._tracks[address] = _Track()
            if now < track.penalty_until:
                return True
            track.failures.append(now)
            while track.failures and track.failures[0] <= now - self.window:
                track.failures.popleft()
            if len(track.failures) > self.limit:
                track.failures.clear()
                track.penalty_until = now + self.penalty
                return True
            return False

    def retry_after(self, address: str) -> int:
        with self._lock:
            track = self._tracks.get(address)
            remaining = (track.penalty_until - self.clock()) if track else 0.0
        return max(1, int(remaining + 0.999))
