"""The policy evaluator: path syntax, deny wins, no rule → deny, scopes, explain; a hypothesis matrix."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.access_model import PolicyDoc, Rule
from tessera.core.errors import InvalidRequest
from tessera.core.model import ROOT, Principal, Scope
from tessera.core.policy import CompiledPolicies, PolicyAuthorizer, compile_path, compile_policies, compile_policy

segment = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=6)
keys = st.lists(segment, min_size=1, max_size=5).map(".".join)
names = st.sampled_from(["default", "prod", "staging", "payments", "auth"])
capabilities = st.sampled_from(["read", "list", "history", "write", "delete", "rollback"])


def policies(*rules: Rule, name: str = "p"):
    return compile_policies([PolicyDoc(name, tuple(rules))])


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    [
        ("auth.*", "auth.jwt_secret", True),
        ("auth.*", "auth.a.b.c", True),
        ("auth.*", "auth", False),
        ("auth.*", "authz.x", False),
        ("auth.*", "xauth.y", False),
        ("*", "anything.at.all", True),
        ("*", "x", True),
        ("database.host", "database.host", True),
        ("database.host", "database.hostname", False),
        ("database.host", "database.host.x", False),
        ("services.*.password", "services.billing.password", True),
        ("services.*.password", "services.billing.x.password", False),
        ("services.*.password", "services.password", False),
        ("services.*.password", "services.billing.password.old", False),
        ("a.*.c.*", "a.b.c.d.e", True),
        ("a.*.c.*", "a.b.c", False),
        ("*.password", "db.password", True),
        ("*.password", "a.db.password", False),
    ],
)
def test_path_syntax(path, key, expected):
    assert compile_path(path)(key) is expected


@pytest.mark.parametrize("bad", ["", "a..b", "a.*x", "a b", "a/b", ".a", "a.", "ä"])
def test_bad_paths_are_invalid_request(bad):
    with pytest.raises(InvalidRequest):
        compile_path(bad)


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        {"path": "a.*"},
        {"path": "a.*", "capabilities": []},
        {"path": "a.*", "capabilities": ["fly"]},
        {"path": "a.*", "capabilities": ["read"], "effect": "maybe"},
        {"path": "a.*", "capabilities": ["read"], "namespaces": "prod"},
        {"path": "a.*", "capabilities": ["read"], "envs": ["Prod!"]},
        {"path": "a.*", "capabilities": ["read"], "colour": "blue"},
        {"path": 3, "capabilities": ["read"]},
    ],
)
def test_rule_validation(raw):
    with pytest.raises(InvalidRequest):
        Rule.from_dict(raw)


def test_rule_defaults():
    rule = Rule.from_dict({"path": "auth.*", "capabilities": ["read"]})
    assert (rule.effect, rule.namespaces, rule.envs) == ("allow", ("*",), ("*",))


def test_no_rule_denies_and_deny_beats_allow_and_explain_names_the_rule():
    compiled = compile_policies(
        [
            PolicyDoc("wide", (Rule("*", ("read",)),)),
            PolicyDoc("narrow", (Rule("auth.*", ("list",)), Rule("billing.*", ("read",), effect="deny"))),
        ]
    )
    decision = compiled.decide("read", Scope(), "billing.stripe_key")
    assert not decision.allowed and (decision.policy, decision.index) == ("narrow", 1)
    assert compiled.decide("read", Scope(), "auth.x").to_dict() == {
        "allowed": True,
        "rule": {"policy": "wide", "index": 0, "rule": Rule("*", ("read",)).to_dict()},
    }
    assert compiled.decide("write", Scope(), "auth.x").to_dict() == {"allowed": False, "rule": None}


def test_scopes():
    compiled = policies(Rule("db.*", ("read",), namespaces=("payments",), envs=("prod", "staging")))
    assert compiled.allowed("read", Scope("payments", "prod"), "db.host")
    assert not compiled.allowed("read", Scope("payments", "dev"), "db.host")
    assert not compiled.allowed("read", Scope("default", "prod"), "db.host")


def test_admin_ignores_path_and_scope():
    assert policies(Rule("*", ("admin",))).allowed("admin", Scope(), "*")
    assert policies(Rule("auth.*", ("admin",), namespaces=("x",))).allowed("admin", Scope(), "*")
    assert not policies(Rule("*", ("read", "write"))).allowed("admin", Scope(), "*")


@settings(max_examples=300, deadline=None)
@given(prefix=keys, rest=keys, other=segment)
def test_prefix_star_never_matches_the_prefix_or_a_longer_sibling(prefix, rest, other):
    compiled = policies(Rule(prefix + ".*", ("read",)))
    assert compiled.allowed("read", Scope(), f"{prefix}.{rest}")
    assert not compiled.allowed("read", Scope(), prefix)
    assert not compiled.allowed("read", Scope(), f"{prefix}{other}.{rest}")  # auth.* vs authz.x
    assert not compiled.allowed("read", Scope(), f"{other}{prefix}.{rest}")


# Small alphabets on purpose: rules generated independently of each other then overlap (share prefixes, shadow
# each other), and keys drawn from the rules below hit them, their neighbours and their near misses.
short_segment = st.sampled_from(["a", "b", "c", "ab", "a-b", "b_1"])
rule_path = st.lists(st.one_of(short_segment, st.just("*")), min_size=1, max_size=4).map(".".join)
rule_strategy = st.builds(
    Rule,
    path=rule_path,
    capabilities=st.lists(capabilities, min_size=1, max_size=3, unique=True).map(tuple),
    effect=st.sampled_from(["allow", "deny"]),
    namespaces=st.one_of(st.just(("*",)), st.lists(names, min_size=1, max_size=2).map(tuple)),
    envs=st.one_of(st.just(("*",)), st.lists(names, min_size=1, max_size=2).map(tuple)),
)


def _path_matches(path: str, key: str) -> bool:
    """A slow, obviously-correct reference of API.md's path syntax, segment by segment."""
    if path == "*":
        return True
    pattern, segments = path.split("."), key.split(".")
    if pattern[-1] == "*":  # a trailing * matches one segment or more
        if len(segments) < len(pattern):
            return False
        pattern, segments = pattern[:-1], segments[: len(pattern) - 1]
    elif len(segments) != len(pattern):
        return False
    return all(p == "*" or p == s for p, s in zip(pattern, segments, strict=True))


def _applies(rule: Rule, capability: str, scope: Scope, key: str) -> bool:
    """A slow, obviously-correct reference for one rule."""
    if capability not in rule.capabilities:
        return False
    if "*" not in rule.namespaces and scope.namespace not in rule.namespaces:
        return False
    if "*" not in rule.envs and scope.env not in rule.envs:
        return False
    return _path_matches(rule.path, key)


@st.composite
def key_near(draw, path: str) -> str:
    """A key that ``path`` matches, or one of its near misses: the prefix of a ``prefix.*`` itself, a segment
    longer by one character, one segment too many or too few."""
    segments = []
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part != "*":
            segments.append(part)
        elif i == len(parts) - 1:
            segments.extend(draw(st.lists(short_segment, min_size=1, max_size=3)))
        else:
            segments.append(draw(short_segment))
    variant = draw(st.sampled_from(["match", "match", "match", "fewer", "more", "longer", "other"]))
    if variant == "fewer" and len(segments) > 1:
        segments = segments[:-1]
    elif variant == "more":
        segments.append(draw(short_segment))
    elif variant == "longer":
        index = draw(st.integers(0, len(segments) - 1))
        segments[index] += draw(st.sampled_from(["z", "-", "_"]))
    elif variant == "other":
        return draw(st.lists(short_segment, min_size=1, max_size=4).map(".".join))
    return ".".join(segments)


def test_matrix_deny_always_wins_paths_and_scopes_are_respected():
    """Keys, scopes and capabilities are drawn from the generated rules (a match, or a near miss of a rule's path),
    so that path matching, deny and the scopes decide in most examples; the counts at the end prove they did."""
    seen = {"examples": 0, "applied": 0, "non_star_applied": 0, "middle_star_applied": 0, "denied_by_rule": 0,
            "allowed": 0, "near_miss_refused": 0}

    @settings(max_examples=400, deadline=None)
    @given(rules=st.lists(rule_strategy, min_size=1, max_size=6), data=st.data())
    def check(rules, data):
        target = data.draw(st.sampled_from(rules), label="target rule")
        key = data.draw(key_near(target.path), label="key")
        capability = data.draw(st.sampled_from(target.capabilities), label="capability")
        pick = st.sampled_from
        namespace = data.draw(names if target.namespaces == ("*",) else pick(target.namespaces), label="namespace")
        env = data.draw(names if target.envs == ("*",) else pick(target.envs), label="env")
        scope = Scope(namespace, env)
        half = len(rules) // 2
        compiled = compile_policies([PolicyDoc("a", tuple(rules[:half])), PolicyDoc("b", tuple(rules[half:]))])
        applying = [rule for rule in rules if _applies(rule, capability, scope, key)]
        expected = bool(applying) and all(rule.effect == "allow" for rule in applying)
        decision = compiled.decide(capability, scope, key)
        assert decision.allowed is expected, (rules, capability, scope, key)
        if applying:
            assert decision.rule is not None and _applies(decision.rule, capability, scope, key)
            assert decision.rule.effect == ("allow" if expected else "deny")
        else:
            assert decision.rule is None
        # The path index used for many rules decides exactly as the loop used for a few, naming the same rule.
        docs = [PolicyDoc("a", tuple(rules[:half])), PolicyDoc("b", tuple(rules[half:]))]
        indexed = CompiledPolicies((compile_policy(doc) for doc in docs), linear_rules=0)
        assert indexed.decide(capability, scope, key) == decision, (rules, capability, scope, key)
        # Adding a deny that applies always denies, whatever else is there.
        denied = compile_policies([PolicyDoc("a", tuple(rules)), PolicyDoc("z", (Rule(key, (capability,), effect="deny"),))])
        assert not denied.allowed(capability, scope, key)
        seen["examples"] += 1
        seen["applied"] += bool(applying)
        seen["non_star_applied"] += any(rule.path != "*" for rule in applying)
        seen["middle_star_applied"] += any("*" in rule.path.split(".")[:-1] for rule in applying)
        seen["denied_by_rule"] += bool(applying) and not expected
        seen["allowed"] += expected
        seen["near_miss_refused"] += not _path_matches(target.path, key) and not expected

    check()
    examples = seen["examples"]
    assert examples >= 300, seen
    # Path matching, not the catch-all, decided most examples; deny, allow and near misses all occurred often.
    assert seen["non_star_applied"] >= examples // 2, seen
    assert seen["middle_star_applied"] >= examples // 20, seen
    assert seen["denied_by_rule"] >= examples // 10, seen
    assert seen["allowed"] >= examples // 10, seen
    assert seen["near_miss_refused"] >= examples // 20, seen


class FakePolicies:
    def __init__(self, docs):
        self.docs = docs
        self.calls = 0

    def list_policies(self):
        self.calls += 1
        return list(self.docs)


def test_authorizer_root_and_caching_by_version():
    source = FakePolicies([PolicyDoc("p", (Rule("auth.*", ("read",)),), version=1)])
    now = [0.0]
    authorizer = PolicyAuthorizer(source, refresh_seconds=1.0, clock=lambda: now[0])
    caller = Principal("t1", "auth-svc", ("p", "missing"))
    assert authorizer.allowed(ROOT, "admin", Scope(), "*")
    assert authorizer.allowed(caller, "read", Scope(), "auth.x")
    assert not authorizer.allowed(caller, "read", Scope(), "billing.x")
    assert source.calls == 1  # one listing serves every decision within the refresh interval
    source.docs = [PolicyDoc("p", (Rule("billing.*", ("read",)),), version=2)]
    assert authorizer.allowed(caller, "read", Scope(), "auth.x")  # still the cached version
    now[0] = 1.5
    assert authorizer.allowed(caller, "read", Scope(), "billing.x")
    assert not authorizer.allowed(caller, "read", Scope(), "auth.x")


def test_decisions_take_microseconds():
    rules = tuple(Rule(f"svc{i}.*", ("read", "list")) for i in range(50)) + (Rule("svc7.secret", ("read",), effect="deny"),)
    authorizer = PolicyAuthorizer(FakePolicies([PolicyDoc("p", rules)]))
    caller = Principal("t", "s", ("p",))
    authorizer.allowed(caller, "read", Scope(), "svc49.x")
    started = time.perf_counter()
    for _ in range(10_000):
        authorizer.allowed(caller, "read", Scope(), "svc49.x")
    per_decision = (time.perf_counter() - started) / 10_000
    assert per_decision < 200e-6, f"{per_decision * 1e6:.1f} µs per decision"


def _many_rules(policy: int, count: int) -> tuple[Rule, ...]:
    """``count`` rules of a team's policy in the shapes real policies use: prefixes, exact keys, a middle ``*``,
    denies, some limited to an env."""
    rules = []
    for i in range(count):
        shape = i % 5
        if shape == 0:
            rules.append(Rule(f"team{policy}.svc{i}.*", ("read", "list")))
        elif shape == 1:
            rules.append(Rule(f"team{policy}.svc{i}.password", ("read",), effect="deny"))
        elif shape == 2:
            rules.append(Rule(f"team{policy}.*.flag{i}", ("read",)))
        elif shape == 3:
            rules.append(Rule(f"shared.svc{i}", ("read",), envs=("prod",)))
        else:
            rules.append(Rule(f"team{policy}.svc{i}.k{i}", ("read", "write")))
    return tuple(rules)


def test_decisions_do_not_degrade_with_the_number_of_rules():
    """A list of 2,000 keys decided against 64 policies × 1,000 rules takes about as long as against one policy of
    10 (same run, best of three): 64 × 1,000 rules once made one such list take 115 s."""
    keys = [f"team{t}.svc{s}.{leaf}" for t in range(40) for s in range(25) for leaf in ("k1", "password")]
    assert len(keys) == 2000
    few = CompiledPolicies([compile_policy(PolicyDoc("p0", _many_rules(0, 10)))])
    many = CompiledPolicies([compile_policy(PolicyDoc(f"p{p}", _many_rules(p, 1000))) for p in range(64)])

    def best_of_three(compiled: CompiledPolicies) -> tuple[float, int]:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            allowed = sum(compiled.allowed("read", Scope(), key) for key in keys)
            times.append(time.perf_counter() - started)
        return min(times), allowed

    few_seconds, few_allowed = best_of_three(few)
    many_seconds, many_allowed = best_of_three(many)
    assert 0 < few_allowed < many_allowed < len(keys)  # the rules really decide: some keys allowed, some denied
    assert many_seconds < 8 * few_seconds, f"64,000 rules: {many_seconds:.3f} s, 10 rules: {few_seconds:.3f} s"
