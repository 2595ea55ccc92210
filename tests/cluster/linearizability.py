"""A linearizability checker for one versioned register (a Tessera key): reads, writes and compare-and-sets with
invocation and completion times, some of whose outcomes are unknown.

The algorithm is Wing & Gong's search with Lowe's memoization, as Porcupine implements it (P-compositionality: check
each key on its own). The register's state is ``(version, value)``; version 0 is "no value". The model is
nondeterministic over a *set* of states, so an operation whose outcome is unknown (its node died, its reply was
lost) is allowed to have happened or not: its completion is at +infinity, a write of it may take effect at any
point after its invocation (or, placed last, never visibly), and a compare-and-set of it may succeed or fail.

Example::

    history = [
        Op.write(client=1, value="a", call=0.0, ret=1.0, version=1),
        Op.read(client=2, call=1.5, ret=2.0, value="a", version=1),
    ]
    assert check(history).ok
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

State = tuple[int, Any]  # (version, value); (0, None) before the first write
INITIAL: State = (0, None)


@dataclass(frozen=True)
class Op:
    """One client operation. ``known`` False: the outcome is unknown (``ret`` is then +inf and outputs unused).

    kind ``read``: observed ``version``/``value`` (version 0, value None: not found).
    kind ``write``: unconditional; ``version`` is the one the server said it created.
    kind ``cas``: ``expected`` version; ``ok`` True with the created ``version``, or False with ``version`` the
    server reported as current (``409 version_conflict``'s ``current_version``), or None if it did not say.
    """

    client: int
    kind: str
    call: float
    ret: float
    value: Any = None
    version: int | None = None
    expected: int | None = None
    ok: bool | None = None
    known: bool = True

    @classmethod
    def read(cls, client: int, call: float, ret: float, value: Any, version: int) -> Op:
        return cls(client, "read", call, ret, value=value, version=version)

    @classmethod
    def write(cls, client: int, value: Any, call: float, ret: float | None, version: int | None = None) -> Op:
        return cls(client, "write", call, math.inf if ret is None else ret, value=value, version=version, known=ret is not None)

    @classmethod
    def cas(cls, client: int, expected: int, value: Any, call: float, ret: float | None, ok: bool | None = None,
            version: int | None = None) -> Op:
        return cls(client, "cas", call, math.inf if ret is None else ret, value=value, version=version, expected=expected,
                   ok=ok, known=ret is not None)


def step(state: State, op: Op) -> list[State]:
    """The states ``op`` may lead to from ``state`` (empty: it cannot be linearized there)."""
    version, value = state
    if op.kind == "read":
        return [state] if (op.version, op.value) == (version, value) or (op.version == 0 and version == 0) else []
    if op.kind == "write":
        if op.known and op.version is not None and op.version != version + 1:
            return []
        return [(version + 1, op.value)]
    if op.kind == "cas":
        succeeded = [(version + 1, op.value)] if op.expected == version else []
        failed = [state] if op.expected != version else []
        if not op.known:
            return succeeded + failed
        if op.ok:
            return succeeded if op.version in (None, version + 1) else []
        return failed if op.version in (None, version) else []
    raise ValueError(f"unknown operation kind {op.kind!r}")


@dataclass
class Result:
    ok: bool
    operations: int
    # When not linearizable: the most operations any attempt managed to order, and the first operation (by
    # invocation) that no attempt could place: where to start reading the history.
    longest_prefix: int = 0
    stuck_at: Op | None = None
    explored: int = 0


@dataclass
class _Entry:
    op_index: int
    is_call: bool
    time: float
    match: _Entry | None = None
    prev: _Entry | None = field(default=None, repr=False)
    next: _Entry | None = field(default=None, repr=False)


def _linked_entries(ops: Sequence[Op]) -> _Entry:
    events: list[_Entry] = []
    for index, op in enumerate(ops):
        call = _Entry(index, True, op.call)
        ret = _Entry(index, False, op.ret)
        call.match = ret
        events += [call, ret]
    # At equal times a call sorts before a return: the two overlap (the permissive reading of a tie).
    events.sort(key=lambda e: (e.time, 0 if e.is_call else 1))
    head = _Entry(-1, False, -math.inf)
    previous = head
    for entry in events:
        previous.next, entry.prev = entry, previous
        previous = entry
    return head


def _lift(entry: _Entry) -> None:
    assert entry.prev is not None and entry.match is not None
    entry.prev.next = entry.next
    if entry.next is not None:
        entry.next.prev = entry.prev
    match = entry.match
    assert match.prev is not None
    match.prev.next = match.next
    if match.next is not None:
        match.next.prev = match.prev


def _unlift(entry: _Entry) -> None:
    match = entry.match
    assert match is not None and match.prev is not None and entry.prev is not None
    match.prev.next = match
    if match.next is not None:
        match.next.prev = match
    entry.prev.next = entry
    if entry.next is not None:
        entry.next.prev = entry


def check(history: Iterable[Op], initial: State = INITIAL, max_steps: int = 5_000_000) -> Result:
    """Whether ``history`` (one key's operations) is linearizable from ``initial``. Unknown-outcome reads carry no
    information and are dropped. Raises ``RuntimeError`` past ``max_steps`` (a bound on the search, not a verdict)."""
    ops = [op for op in history if op.known or op.kind != "read"]
    head = _linked_entries(ops)
    states: frozenset[State] = frozenset({initial})
    linearized = 0
    cache: set[tuple[int, frozenset[State]]] = set()
    calls: list[tuple[_Entry, frozenset[State]]] = []
    longest, best, steps = 0, 0, 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"linearizability search passed {max_steps} steps")
        assert entry is not None
        if entry.is_call:
            op = ops[entry.op_index]
            successors = frozenset(s for state in states for s in step(state, op))
            if successors:
                candidate = linearized | (1 << entry.op_index)
                if (candidate, successors) not in cache:
                    cache.add((candidate, successors))
                    calls.append((entry, states))
                    states, linearized = successors, candidate
                    if len(calls) > longest:
                        longest, best = len(calls), linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A completion whose operation could not be placed before it: undo the last choice.
            if not calls:
                stuck = min((ops[i] for i in range(len(ops)) if not best >> i & 1), key=lambda o: o.call, default=None)
                return Result(False, len(ops), longest, stuck, steps)
            entry, states = calls.pop()
            linearized &= ~(1 << entry.op_index)
            _unlift(entry)
            entry = entry.next
    return Result(True, len(ops), len(ops), None, steps)
