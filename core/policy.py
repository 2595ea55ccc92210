"""The policy evaluator: pure, compiled once per policy version, microseconds per decision.

Path syntax (``API.md``, Access control):

- ``database.host``     exactly that key;
- ``auth.*``            every key below ``auth`` at any depth — not ``auth`` itself, not ``authz.x``;
- ``*``                 every key;
- ``services.*.password`` a ``*`` as a whole segment anywhere but last matches exactly one segment.

A rule applies when its capability, path, namespaces and envs all match. Among the rules that apply,
any ``deny`` wins; otherwise any ``allow`` allows; no rule applying means denied. ``admin`` is not about
keys: a rule naming ``admin`` grants (or denies) it whatever its path and scopes say.

>>> rules = (Rule("auth.*", ("read",)),)
>>> policies = compile_policies([PolicyDoc("auth-read", rules)])
>>> policies.decide("read", Scope(), "auth.jwt_secret").allowed, policies.decide("read", Scope(), "authz.x").allowed
(True, False)
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tessera.core.access_model import WILDCARD, PolicyDoc, Rule, check_path
from tessera.core.model import Principal, Scope

ADMIN = "admin"
PathMatcher = Callable[[str], bool]


@functools.lru_cache(maxsize=4096)
def compile_path(path: str) -> PathMatcher:
    """``path`` → a predicate on keys. The common shapes avoid regular expressions entirely. Cached: every watch
    request compiles its patterns, and a fleet of watchers asks for the same few."""
    check_path(path)
    if path == WILDCARD:
        return _always
    segments = path.split(".")
    if WILDCARD not in segments:
        return path.__eq__
    if segments[-1] == WILDCARD and WILDCARD not in segments[:-1]:
        below = ".".join(segments[:-1]) + "."
        return lambda key: key.startswith(below)
    # A middle ``*`` is exactly one segment; a trailing one is one segment or more. Compared segment by segment
    # (no regular expression: a policy of thousands of such rules compiles in milliseconds).
    trailing = segments[-1] == WILDCARD
    length = len(segments)
    fixed = tuple((i, segment) for i, segment in enumerate(segments) if segment != WILDCARD)

    def matches(key: str) -> bool:
        parts = key.split(".")
        if (len(parts) < length) if trailing else (len(parts) != length):
            return False
        return all(parts) and all(parts[i] == segment for i, segment in fixed)

    return matches


def _always(key: str) -> bool:
    return True


@dataclass(frozen=True)
class Decision:
    """The outcome and, when a rule decided, which one (``policy``, its ``index`` in that policy, the rule)."""

    allowed: bool
    policy: str | None = None
    index: int | None = None
    rule: Rule | None = None

    def to_dict(self) -> dict[str, object]:
        if self.rule is None:
            return {"allowed": self.allowed, "rule": None}
        return {"allowed": self.allowed, "rule": {"policy": self.policy, "index": self.index, "rule": self.rule.to_dict()}}


DENIED_BY_DEFAULT = Decision(False)


@dataclass(frozen=True)
class _CompiledRule:
    policy: str
    index: int
    rule: Rule
    deny: bool
    matches_key: PathMatcher
    namespaces: frozenset[str] | None  # None: every namespace
    envs: frozenset[str] | None

    def applies(self, scope: Scope, key: str) -> bool:
        return self.in_scope(scope) and self.matches_key(key)

    def in_scope(self, scope: Scope) -> bool:
        if self.namespaces is not None and scope.namespace not in self.namespaces:
            return False
        return self.envs is None or scope.env in self.envs


def _scope_set(names: Sequence[str]) -> frozenset[str] | None:
    return None if WILDCARD in names else frozenset(names)


def compile_policy(policy: PolicyDoc) -> tuple[_CompiledRule, ...]:
    return tuple(
        _CompiledRule(
            policy=policy.name,
            index=index,
            rule=rule,
            deny=rule.effect == "deny",
            matches_key=compile_path(rule.path),
            namespaces=_scope_set(rule.namespaces),
            envs=_scope_set(rule.envs),
        )
        for index, rule in enumerate(policy.rules)
    )


# Up to this many rules per capability a decision tries each in turn (a few string tests); above it, the rules
# are looked up in a trie of their path segments, so a decision costs the same with 10 rules or 64,000.
LINEAR_RULES = 16


class _Node:
    # Made only when needed (most nodes are leaves holding one rule): tens of thousands of rules index quickly.
    __slots__ = ("children", "exact", "below")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None  # by segment; WILDCARD: a middle ``*``, any one segment
        self.exact: list[tuple[int, _CompiledRule]] | None = None  # paths ending here: the key ends here too
        self.below: list[tuple[int, _CompiledRule]] | None = None  # paths ``<here>.*``: one segment or more follows

    def child(self, segment: str) -> _Node:
        if self.children is None:
            self.children = {}
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = _Node()
        return node


class _RuleTrie:
    """One capability's rules by path segments. ``candidates(key)`` yields exactly the rules whose path matches
    ``key`` (with their order number), visiting one node per key segment (more only along middle ``*`` edges).

    >>> trie = _RuleTrie(compile_policy(PolicyDoc("p", (Rule("a.*", ("read",)), Rule("a.*.c", ("read",))))))
    >>> sorted(rule.rule.path for _, rule in trie.candidates("a.b.c")), list(trie.candidates("b.c"))
    (['a.*', 'a.*.c'], [])
    """

    def __init__(self, rules: Sequence[_CompiledRule]) -> None:
        self.root = _Node()
        for ordinal, rule in enumerate(rules):
            segments = rule.rule.path.split(".")
            trailing = segments[-1] == WILDCARD
            node = self.root
            for segment in segments[:-1] if trailing else segments:
                node = node.child(segment)
            if trailing:
                node.below = node.below or []
                node.below.append((ordinal, rule))
            else:
                node.exact = node.exact or []
                node.exact.append((ordinal, rule))

    def candidates(self, key: str) -> Iterator[tuple[int, _CompiledRule]]:
        frontier = [self.root]
        for segment in key.split("."):
            following = []
            for node in frontier:
                if node.below:
                    yield from node.below  # a segment follows this node: ``<node>.*`` matches
                if node.children:
                    child = node.children.get(segment)
                    if child is not None:
                        following.append(child)
                    child = node.children.get(WILDCARD)
                    if child is not None:
                        following.append(child)
            if not following:
                return
            frontier = following
        for node in frontier:
            if node.exact:
                yield from node.exact


class CompiledPolicies:
    """The rules of several policies, indexed by capability (and by path when there are many); a decision is a
    short loop of string tests whatever the number of rules."""

    def __init__(self, compiled: Iterable[tuple[_CompiledRule, ...]], linear_rules: int = LINEAR_RULES) -> None:
        self._by_capability: dict[str, tuple[_CompiledRule, ...]] = {}
        self._tries: dict[str, _RuleTrie] = {}
        collected: dict[str, list[_CompiledRule]] = {}
        for rules in compiled:
            for rule in rules:
                for capability in rule.rule.capabilities:
                    collected.setdefault(capability, []).append(rule)
        for capability, capability_rules in collected.items():
            # Denies first: the first deny that applies decides, and no allow needs to be looked at.
            denies = tuple(r for r in capability_rules if r.deny)
            ordered = denies + tuple(r for r in capability_rules if not r.deny)
            self._by_capability[capability] = ordered
            if len(ordered) > linear_rules and capability != ADMIN:
                self._tries[capability] = _RuleTrie(ordered)

    def decide(self, capability: str, scope: Scope, key: str) -> Decision:
        rules = self._by_capability.get(capability)
        if not rules:
            return DENIED_BY_DEFAULT
        if capability == ADMIN:
            rule = rules[0]
            return Decision(not rule.deny, rule.policy, rule.index, rule.rule)
        trie = self._tries.get(capability)
        if trie is None:
            for rule in rules:
                if rule.applies(scope, key):
                    return Decision(not rule.deny, rule.policy, rule.index, rule.rule)
            return DENIED_BY_DEFAULT
        # The same answer as the loop above: the first rule in that order (denies first) that applies.
        first: tuple[int, _CompiledRule] | None = None
        for ordinal, rule in trie.candidates(key):
            if (first is None or ordinal < first[0]) and rule.in_scope(scope):
                first = (ordinal, rule)
        if first is None:
            return DENIED_BY_DEFAULT
        rule = first[1]
        return Decision(not rule.deny, rule.policy, rule.index, rule.rule)

    def allowed(self, capability: str, scope: Scope, key: str) -> bool:
        return self.decide(capability, scope, key).allowed


def compile_policies(policies: Iterable[PolicyDoc]) -> CompiledPolicies:
    return CompiledPolicies(compile_policy(policy) for policy in policies)


class PolicySource(Protocol):
    """What the authorizer needs from policy storage (``core.ports.PolicyStore`` satisfies it). A store that can
    also answer ``policy_versions() -> {name: version}`` cheaply is refreshed with that, loading only what changed."""

    def list_policies(self) -> list[PolicyDoc]: ...

    def get_policy(self, name: str) -> PolicyDoc | None: ...


class PolicyAuthorizer:
    """``core.access.Authorizer`` backed by stored policies. The root principal may do everything.

    Policies are re-listed at most every ``refresh_seconds`` (one small query per node per second) and
    each policy is compiled once per version; a principal's set of policies is combined once per
    combination of versions. So a change to a policy reaches every node within ``refresh_seconds``.
    """

    def __init__(
        self, source: PolicySource, refresh_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._fresh_until = float("-inf")
        self._policies: dict[str, tuple[int, tuple[_CompiledRule, ...], PolicyDoc]] = {}
        self._sets: dict[tuple[tuple[str, int], ...], CompiledPolicies] = {}

    def invalidate(self) -> None:
        """Forget the snapshot (this node just changed a policy: its own next request sees the change)."""
        with self._lock:
            self._fresh_until = float("-inf")

    def _snapshot(self) -> dict[str, tuple[int, tuple[_CompiledRule, ...], PolicyDoc]]:
        now = self.clock()
        if now < self._fresh_until:
            return self._policies
        with self._lock:
            if now < self._fresh_until:
                return self._policies
            current = self._policies
            fresh: dict[str, tuple[int, tuple[_CompiledRule, ...], PolicyDoc]] = {}
            versions = getattr(self.source, "policy_versions", None)
            if versions is not None:
                # One small read of (name, version); only policies that changed are loaded and compiled again.
                for name, version in versions().items():
                    known = current.get(name)
                    if known is not None and known[0] == version:
                        fresh[name] = known
                        continue
                    doc = self.source.get_policy(name)
                    if doc is not None:
                        fresh[name] = (doc.version, compile_policy(doc), doc)
            else:
                for doc in self.source.list_policies():
                    known = current.get(doc.name)
                    if known is not None and known[0] == doc.version:
                        fresh[doc.name] = known
                    else:
                        fresh[doc.name] = (doc.version, compile_policy(doc), doc)
            self._policies = fresh
            if len(self._sets) > 10_000:
                self._sets.clear()
            self._fresh_until = self.clock() + self.refresh_seconds
            return fresh

    def _signature(self, names: Sequence[str]) -> tuple[dict[str, tuple[int, tuple[_CompiledRule, ...], PolicyDoc]], tuple[tuple[str, int], ...]]:
        snapshot = self._snapshot()
        # Unknown policy names contribute nothing (a token may name a policy created later).
        return snapshot, tuple((name, snapshot[name][0]) for name in names if name in snapshot)

    def decision_key(self, principal: Principal) -> Hashable:
        """The principal's policies at their current versions (root: ``True``): equal keys, equal decisions."""
        if principal.is_root:
            return True
        return self._signature(principal.policies)[1]

    def policies_for(self, names: Sequence[str]) -> CompiledPolicies:
        snapshot, signature = self._signature(names)
        compiled = self._sets.get(signature)
        if compiled is None:
            compiled = CompiledPolicies(snapshot[name][1] for name, _ in signature)
            self._sets[signature] = compiled
        return compiled

    def allowed(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool:
        if principal.is_root:
            return True
        return self.policies_for(principal.policies).decide(capability, scope, key).allowed

    def explain(self, policies: Sequence[str], capability: str, scope: Scope, key: str) -> Decision:
        return self.policies_for(policies).decide(capability, scope, key)
