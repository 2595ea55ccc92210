"""The config service's contract, run against every backend registered in tests/backends.py."""

from __future__ import annotations

import pytest

from tessera.core.errors import (
    Forbidden,
    InvalidKey,
    InvalidRequest,
    InvalidRollback,
    InvalidValue,
    KeyConflict,
    NotFound,
    SecretFlagImmutable,
    ValueTooLarge,
    VersionConflict,
    VersionsMoved,
)
from tessera.core.model import ROOT, Action, Principal, Scope

PROD = Scope("default", "prod")


def test_put_then_get_leaf(service, scope):
    result = service.put(ROOT, scope, "database.host", "db.internal")
    assert result.created and result.version.version == 1 and result.version.revision >= 1
    read = service.get(ROOT, scope, "database.host")
    assert read.value == "db.internal"
    assert read.version.version == 1
    assert read.version.updated_by == "root"
    assert read.resolved_env == "default"


def test_every_json_type_but_object_round_trips(service, scope):
    values = {"s": "text ünïcode", "i": 42, "f": 1.5, "b": False, "n": None, "l": [1, "two", {"three": 3}]}
    for name, value in values.items():
        service.put(ROOT, scope, f"types.{name}", value)
    for name, value in values.items():
        assert service.get(ROOT, scope, f"types.{name}").value == value


def test_versions_and_revisions_increase(service, scope):
    first = service.put(ROOT, scope, "a.x", 1).version
    second = service.put(ROOT, scope, "a.x", 2).version
    other = service.put(ROOT, scope, "a.y", 1).version
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert first.revision < second.revision < other.revision
    assert service.store.current_revision() == other.revision


def test_equal_value_makes_no_new_version(service, scope):
    service.put(ROOT, scope, "k", {"not": "allowed"} if False else [1, 2])
    again = service.put(ROOT, scope, "k", [1, 2])
    assert not again.changed and not again.created and again.version.version == 1
    assert service.put(ROOT, scope, "k", [1, 2, 3]).version.version == 2
    # 1 and 1.0 and true are different JSON values
    service.put(ROOT, scope, "n", 1)
    assert service.put(ROOT, scope, "n", 1.0).changed
    assert service.put(ROOT, scope, "n", True).changed


def test_compare_and_set(service, scope):
    assert service.put(ROOT, scope, "cas", "a", expected_version=0).created
    with pytest.raises(VersionConflict) as info:
        service.put(ROOT, scope, "cas", "b", expected_version=0)
    assert info.value.current_version == 1
    assert service.put(ROOT, scope, "cas", "b", expected_version=1).version.version == 2
    with pytest.raises(VersionConflict) as info:
        service.put(ROOT, scope, "cas", "c", expected_version=1)
    assert info.value.extra == {"current_version": 2}
    assert service.get(ROOT, scope, "cas").value == "b"


def test_cas_after_delete_accepts_zero_and_tombstone_version(service, scope):
    service.put(ROOT, scope, "gone", "x")
    service.delete(ROOT, scope, "gone")
    assert service.put(ROOT, scope, "gone", "y", expected_version=0).created
    service.delete(ROOT, scope, "gone")
    assert service.put(ROOT, scope, "gone", "z", expected_version=4).version.version == 5


def test_delete_is_a_tombstone(service, scope):
    service.put(ROOT, scope, "feature.flag", True)
    tombstone = service.delete(ROOT, scope, "feature.flag")
    assert tombstone.version == 2 and tombstone.action is Action.DELETE
    with pytest.raises(NotFound):
        service.get(ROOT, scope, "feature.flag")
    assert service.get(ROOT, scope, "feature.flag", version=1).value is True
    with pytest.raises(NotFound):
        service.get(ROOT, scope, "feature.flag", version=2)
    with pytest.raises(NotFound):
        service.delete(ROOT, scope, "feature.flag")
    rewritten = service.put(ROOT, scope, "feature.flag", False)
    assert rewritten.created and rewritten.version.action is Action.CREATE and rewritten.version.version == 3


def test_missing_key_and_version(service, scope):
    with pytest.raises(NotFound):
        service.get(ROOT, scope, "nope")
    service.put(ROOT, scope, "there", 1)
    with pytest.raises(NotFound):
        service.get(ROOT, scope, "there", version=9)
    with pytest.raises(NotFound):
        service.delete(ROOT, scope, "nope")
    with pytest.raises(NotFound):
        service.history(ROOT, scope, "nope")


def test_history_newest_first_with_who_and_when(service, scope):
    for value in ("v1", "v2", "v3"):
        service.put(ROOT, scope, "h", value)
    service.delete(ROOT, scope, "h")
    entries = service.history(ROOT, scope, "h")
    assert [e.version.version for e in entries] == [4, 3, 2, 1]
    assert [e.version.action for e in entries] == [Action.DELETE, Action.UPDATE, Action.UPDATE, Action.CREATE]
    assert [e.value for e in entries[1:]] == ["v3", "v2", "v1"]
    assert all(e.version.updated_by == "root" and e.version.updated_at.tzinfo for e in entries)
    assert [e.version.version for e in service.history(ROOT, scope, "h", limit=2)] == [4, 3]
    assert [e.version.version for e in service.history(ROOT, scope, "h", limit=2, before=3)] == [2, 1]
    with pytest.raises(InvalidRequest):
        service.history(ROOT, scope, "h", limit=1001)


def test_history_never_holds_secret_values(service, scope):
    service.put(ROOT, scope, "db.password", "hunter2", secret=True)
    service.put(ROOT, scope, "db.password", "hunter3")
    entries = service.history(ROOT, scope, "db.password")
    assert len(entries) == 2
    assert all(e.version.secret and not e.has_value and e.value is None for e in entries)


def test_rollback_makes_a_new_version(service, scope):
    service.put(ROOT, scope, "r", "one")
    service.put(ROOT, scope, "r", "two")
    rolled = service.rollback(ROOT, scope, "r", 1)
    assert rolled.version == 3 and rolled.action is Action.ROLLBACK and rolled.rolled_back_from == 1
    assert service.get(ROOT, scope, "r").value == "one"
    # always a new version, even when the value is already the current one
    assert service.rollback(ROOT, scope, "r", 1).version == 4
    with pytest.raises(NotFound):
        service.rollback(ROOT, scope, "r", 99)
    service.delete(ROOT, scope, "r")
    with pytest.raises(InvalidRollback):
        service.rollback(ROOT, scope, "r", 5)
    restored = service.rollback(ROOT, scope, "r", 2)
    assert service.get(ROOT, scope, "r").value == "two" and restored.version == 6


def test_key_conflicts_both_ways(service, scope):
    service.put(ROOT, scope, "a.b", 1)
    with pytest.raises(KeyConflict):
        service.put(ROOT, scope, "a.b.c", 2)
    with pytest.raises(KeyConflict):
        service.put(ROOT, scope, "a", 2)
    service.put(ROOT, scope, "x.y.z", 1)
    with pytest.raises(KeyConflict):
        service.put(ROOT, scope, "x.y", 2)
    with pytest.raises(KeyConflict):
        service.put(ROOT, scope, "x", 2)
    # a deleted key no longer blocks, and siblings sharing a string prefix never did
    service.delete(ROOT, scope, "a.b")
    service.put(ROOT, scope, "a.b.c", 3)
    service.put(ROOT, scope, "x.yy", 4)
    # conflicts are checked within one scope only
    service.put(ROOT, Scope("other", "default"), "x.y", 5)


def test_secret_flag_is_fixed_for_life(service, scope):
    service.put(ROOT, scope, "s", "p1", secret=True)
    assert service.put(ROOT, scope, "s", "p2").version.secret  # omitted: kept
    with pytest.raises(SecretFlagImmutable):
        service.put(ROOT, scope, "s", "p3", secret=False)
    service.delete(ROOT, scope, "s")
    with pytest.raises(SecretFlagImmutable):
        service.put(ROOT, scope, "s", "p4", secret=False)
    assert service.put(ROOT, scope, "s", "p5").version.secret
    service.put(ROOT, scope, "plain", 1)
    with pytest.raises(SecretFlagImmutable):
        service.put(ROOT, scope, "plain", 2, secret=True)


def test_values_are_sealed_at_rest(service, scope):
    written = service.put(ROOT, scope, "sealed", "plain-canary-value-123").version
    stored = service.store.get_version(scope, "sealed", written.version)
    envelope = stored.envelope if stored.envelope is not None else service.store.load_envelope(stored)
    assert envelope.startswith(b"TSE1") and b"plain-canary-value-123" not in envelope


def test_subtree_assembly(service, scope):
    service.put(ROOT, scope, "database.host", "db")
    service.put(ROOT, scope, "database.port", 5432)
    service.put(ROOT, scope, "database.pool.max", 20)
    service.put(ROOT, scope, "databases.other", 1)
    tree = service.get(ROOT, scope, "database")
    assert tree.version is None
    assert tree.value == {"host": "db", "port": 5432, "pool": {"max": 20}}
    with pytest.raises(InvalidRequest):
        service.get(ROOT, scope, "database", version=1)
    first_etag = tree.etag
    service.put(ROOT, scope, "database.port", 5433)
    assert service.get(ROOT, scope, "database").etag != first_etag


def test_list_matches_whole_segments(service, scope):
    for key in ("database.host", "database.port", "databases.x", "app.name"):
        service.put(ROOT, scope, key, 1)
    service.put(ROOT, scope, "database.old", 1)
    service.delete(ROOT, scope, "database.old")
    assert [leaf.version.key for leaf in service.list(ROOT, scope, "database")] == ["database.host", "database.port"]
    assert len(service.list(ROOT, scope, None)) == 4
    with pytest.raises(InvalidKey):
        service.list(ROOT, scope, "bad..prefix")


@pytest.mark.parametrize(
    "bad_key", ["", "a..b", "../etc", "a/b", "x" * 300, "ünï", "a b", ".a", "a.", "import.x", "history", "a." * 33]
)
def test_invalid_keys_are_refused_and_nothing_is_written(service, scope, bad_key):
    before = service.store.current_revision()
    with pytest.raises(InvalidKey):
        service.put(ROOT, scope, bad_key, 1)
    assert service.store.current_revision() == before


def test_invalid_values(service, scope):
    with pytest.raises(InvalidValue):
        service.put(ROOT, scope, "obj", {"a": 1})
    with pytest.raises(ValueTooLarge):
        service.put(ROOT, scope, "big", "x" * (65 * 1024))
    service.put(ROOT, scope, "fits", "x" * (64 * 1024 - 2))
    assert service.store.current_revision() == 1


def test_import_nested_and_dotted(service, scope):
    result = service.import_values(
        ROOT, scope, {"database": {"host": "db", "port": 5432}, "app.name": "demo", "db": {"password": "pw"}},
        secrets=["db.password"],
    )
    assert (result.created, result.updated, result.unchanged, result.errors) == (4, 0, 0, [])
    assert service.get(ROOT, scope, "db.password").version.secret
    again = service.import_values(ROOT, scope, {"database": {"host": "db2", "port": 5432}, "bad key": 1, "x": {"y": {}}})
    assert (again.created, again.updated, again.unchanged) == (0, 1, 1)
    assert again.errors == [{"key": "bad key", "code": "invalid_key", "message": again.errors[0]["message"]}]


def test_environments_inherit_and_fall_through(service, scope):
    service.put_env(ROOT, "staging", "default")
    service.put_env(ROOT, "prod", "staging")
    service.put(ROOT, scope, "database.host", "default-db")
    service.put(ROOT, scope, "database.port", 5432)
    read = service.get(ROOT, PROD, "database.host")
    assert (read.value, read.resolved_env) == ("default-db", "default")
    service.put(ROOT, Scope("default", "staging"), "database.host", "staging-db")
    assert service.get(ROOT, PROD, "database.host").resolved_env == "staging"
    service.put(ROOT, PROD, "database.host", "prod-db")
    assert service.get(ROOT, PROD, "database").value == {"host": "prod-db", "port": 5432}
    service.delete(ROOT, PROD, "database.host")
    assert service.get(ROOT, PROD, "database.host").value == "staging-db"
    # ?version= reads this env alone
    assert service.get(ROOT, PROD, "database.host", version=1).value == "prod-db"
    with pytest.raises(NotFound):
        service.get(ROOT, PROD, "database.port", version=1)
    assert [leaf.env for leaf in service.list(ROOT, PROD, "database")] == ["staging", "default"]


def test_unknown_env_and_cycles(service, scope):
    with pytest.raises(NotFound):
        service.get(ROOT, Scope("default", "nope"), "k")
    with pytest.raises(NotFound):
        service.put(ROOT, Scope("default", "nope"), "k", 1)
    assert service.put_env(ROOT, "dev", "default") is True
    assert service.put_env(ROOT, "dev", None) is False
    service.put_env(ROOT, "qa", "dev")
    with pytest.raises(InvalidRequest):
        service.put_env(ROOT, "dev", "qa")
    with pytest.raises(InvalidRequest):
        service.put_env(ROOT, "dev", "dev")
    with pytest.raises(InvalidRequest):
        service.put_env(ROOT, "default", "dev")
    assert {e.name: e.parent for e in service.list_envs(ROOT)} == {"default": None, "dev": "default", "qa": "dev"}


def test_export_and_diff(service, scope):
    service.put_env(ROOT, "staging", "default")
    service.put(ROOT, scope, "app.name", "demo")
    service.put(ROOT, scope, "app.secret", "s3cret", secret=True)
    staging = Scope("default", "staging")
    service.put(ROOT, staging, "app.secret", "other", secret=True)
    service.put(ROOT, staging, "app.extra", 1)
    assert service.export(ROOT, staging, "app") == {"app.name": "demo", "app.secret": "other", "app.extra": 1}
    diff = service.diff(ROOT, "default", "default", "staging", None)
    assert diff == {
        "added": [{"key": "app.extra", "secret": False, "value": 1, "to_version": 1}],
        "removed": [],
        "changed": [{"key": "app.secret", "secret": True, "to_version": 1}],
    }


def test_promote_and_explain(service, scope):
    """On every backend: promote copies what differs (one transaction where the store has commit_many), refuses
    a stale view whole; explain walks the chain."""
    service.put_env(ROOT, "staging", "default")
    service.put_env(ROOT, "prod", "default")
    staging, prod = Scope("default", "staging"), Scope("default", "prod")
    service.put(ROOT, scope, "app.name", "demo")
    service.put(ROOT, staging, "app.name", "demo-2")
    service.put(ROOT, staging, "app.key", "k", secret=True)
    service.put(ROOT, prod, "app.port", 1)
    service.put(ROOT, staging, "app.port", 2)
    diff = service.diff(ROOT, "default", "staging", "prod", "app")
    expected = {item["key"]: item["to_version"] for part in diff.values() for item in part}
    assert expected == {"app.name": 0, "app.key": 0, "app.port": 1}
    service.put(ROOT, prod, "app.port", 3)
    with pytest.raises(VersionsMoved) as moved:
        service.promote(ROOT, "default", "staging", "prod", "app", None, expected)
    assert moved.value.current_versions == {"app.port": 2}
    assert service.get(ROOT, prod, "app.name").resolved_env == "default"  # nothing promoted
    expected["app.port"] = 2
    result = service.promote(ROOT, "default", "staging", "prod", "app", None, expected)
    assert [(v.key, v.version, v.secret) for v in result.promoted] == [("app.key", 1, True), ("app.name", 1, False), ("app.port", 3, False)]
    assert service.get(ROOT, prod, "app.name").value == "demo-2"
    assert service.diff(ROOT, "default", "staging", "prod", "app") == {"added": [], "removed": [], "changed": []}
    layers = service.explain(ROOT, prod, "app.name")
    assert [(layer.env, layer.state, layer.value) for layer in layers] == [("prod", "value", "demo-2"), ("default", "value", "demo")]
    assert [layer.has_value for layer in service.explain(ROOT, prod, "app.key")] == [False, False]


def test_change_log_follows_commits(service, scope):
    start = service.store.current_revision()
    service.put(ROOT, scope, "w.a", 1)
    service.put(ROOT, scope, "w.b", 2)
    service.delete(ROOT, scope, "w.a")
    changes = service.store.changes_since(start, 100)
    assert [(c.key, c.version, c.action) for c in changes] == [
        ("w.a", 1, Action.CREATE), ("w.b", 1, Action.CREATE), ("w.a", 2, Action.DELETE)
    ]
    assert [c.revision for c in changes] == list(range(start + 1, start + 4))
    assert service.store.changes_since(changes[1].revision, 100) == changes[2:]


def test_namespaces_are_separate(service):
    service.put(ROOT, Scope("team-a"), "k", "a")
    service.put(ROOT, Scope("team-b"), "k", "b")
    assert service.get(ROOT, Scope("team-a"), "k").value == "a"
    assert service.get(ROOT, Scope("team-b"), "k").value == "b"
    with pytest.raises(NotFound):
        service.get(ROOT, Scope(), "k")


def test_non_root_is_refused_without_revealing_existence(service, scope):
    service.put(ROOT, scope, "exists", 1)
    nobody = Principal(id="t1", service="svc")
    for key in ("exists", "missing"):
        with pytest.raises(Forbidden):
            service.get(nobody, scope, key)
    with pytest.raises(Forbidden):
        service.put(nobody, scope, "exists", 2)


def test_leaf_subtree_and_export_agree_when_envs_disagree_on_shape(service, scope):
    service.put_env(ROOT, "prod", "default")
    service.put(ROOT, scope, "a.b", 1)  # a leaf in default
    service.put(ROOT, PROD, "a.b.c", 2)  # a branch in prod, at the same path
    service.put(ROOT, scope, "x.y.z", 3)  # a branch in default
    service.put(ROOT, PROD, "x.y", 4)  # a leaf in prod
    read = service.get(ROOT, PROD, "a.b")
    assert read.version is None and read.value == {"c": 2}  # prod's shape wins, as in the subtree
    assert service.get(ROOT, PROD, "a").value == {"b": {"c": 2}}
    assert service.get(ROOT, PROD, "x.y").value == 4
    with pytest.raises(NotFound):
        service.get(ROOT, PROD, "x.y.z")
    assert service.export(ROOT, PROD, None) == {"a.b.c": 2, "x.y": 4}
    assert service.get(ROOT, scope, "a.b").value == 1  # default alone is untouched


def test_an_override_inherits_the_secret_flag_unless_it_names_one(service, scope):
    service.put_env(ROOT, "prod", "default")
    service.put(ROOT, scope, "db.password", "base", secret=True)
    assert service.put(ROOT, PROD, "db.password", "prod-pw").version.secret
    prod_history = service.history(ROOT, PROD, "db.password")
    assert len(prod_history) == 1 and all(not e.has_value for e in prod_history)
    service.put(ROOT, scope, "db.host", "h")
    assert not service.put(ROOT, PROD, "db.host", "prod-h").version.secret
    assert not service.put(ROOT, PROD, "db.user", "u", secret=False).version.secret
