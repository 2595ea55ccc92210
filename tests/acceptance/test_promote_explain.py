"""API.md § Writing (``POST /config/promote``), § Reading (``?explain=true``), § Environments (``to_version``),
black-box over the session's real server."""

from __future__ import annotations

import threading

from tests.acceptance.conftest import assert_error, make_env, uid


def expected_of(root, source: str, target: str, prefix: str) -> dict[str, int]:
    diff = root.get(f"/diff?from={source}&to={target}&prefix={prefix}").json()
    return {item["key"]: item["to_version"] for part in ("added", "removed", "changed") for item in diff[part]}


def test_promote_copies_the_differences_as_new_versions(root):
    k = uid()
    staging, prod = make_env(root), make_env(root)
    root.put(f"/config/{k}.host?env={staging}", json={"value": "stg"})
    root.put(f"/config/{k}.port?env={staging}", json={"value": 1})
    root.put(f"/config/{k}.port?env={prod}", json={"value": 2})
    root.put(f"/config/{k}.pw?env={staging}", json={"value": "promoted-secret", "secret": True})
    root.put(f"/config/{k}.same?env={staging}", json={"value": True})
    root.put(f"/config/{k}.same?env={prod}", json={"value": True})
    root.put(f"/config/{k}.mine?env={prod}", json={"value": "prod only"})
    expected = expected_of(root, staging, prod, k)
    assert expected == {f"{k}.host": 0, f"{k}.port": 1, f"{k}.pw": 0, f"{k}.mine": 1}
    response = root.post(f"/config/promote?from={staging}&to={prod}&prefix={k}", json={"expected": expected})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(p["key"], p["version"]) for p in body["promoted"]] == [(f"{k}.host", 1), (f"{k}.port", 2), (f"{k}.pw", 1)]
    assert body["unchanged"] == 1
    assert "promoted-secret" not in response.text
    pw = root.get(f"/config/{k}.pw?env={prod}").json()
    assert (pw["value"], pw["secret"], pw["resolved_env"]) == ("promoted-secret", True, prod)
    assert root.get(f"/config/{k}.mine?env={prod}").json()["value"] == "prod only"
    assert expected_of(root, staging, prod, k) == {f"{k}.mine": 1}


def test_promote_with_a_concurrent_change_promotes_nothing(root):
    k = uid()
    staging, prod = make_env(root), make_env(root)
    for name in ("a", "b", "c"):
        root.put(f"/config/{k}.{name}?env={staging}", json={"value": f"new-{name}"})
        root.put(f"/config/{k}.{name}?env={prod}", json={"value": f"old-{name}"})
    expected = expected_of(root, staging, prod, k)
    assert root.put(f"/config/{k}.b?env={prod}", json={"value": "changed meanwhile"}).status_code == 200
    error = assert_error(root.post(f"/config/promote?from={staging}&to={prod}&prefix={k}", json={"expected": expected}),
                         409, "version_conflict")
    assert error["keys"] == [f"{k}.b"]
    values = root.get(f"/config/export?env={prod}&prefix={k}&format=json").json()
    assert values == {k: {"a": "old-a", "b": "changed meanwhile", "c": "old-c"}}


def test_promote_races_writers_and_is_never_half_applied(root):
    """Promotions of 20 keys against a writer changing one of them: each promotion is all or nothing."""
    k = uid()
    staging, prod = make_env(root), make_env(root)
    keys = [f"{k}.k{i:02d}" for i in range(20)]
    root.post(f"/config/import?env={staging}", json={"values": {key: "staged" for key in keys}})
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            n += 1
            root.put(f"/config/{keys[7]}?env={prod}", json={"value": f"w{n}"})

    thread = threading.Thread(target=writer)
    thread.start()
    outcomes = []
    try:
        for _ in range(10):
            expected = expected_of(root, staging, prod, k)
            response = root.post(f"/config/promote?from={staging}&to={prod}&prefix={k}", json={"expected": expected})
            outcomes.append(response.status_code)
            values = root.get(f"/config/export?env={prod}&prefix={k}&format=json").json().get(k, {})
            staged = [name for name, value in values.items() if value == "staged" and name != "k07"]
            assert len(staged) in (0, 19), (response.status_code, values)  # never some of them
            if response.status_code == 200:
                break
            assert response.json()["error"]["keys"] == [keys[7]]
    finally:
        stop.set()
        thread.join()
    assert set(outcomes) <= {200, 409}


def test_promote_refusals(root, token_client):
    k = uid()
    staging, prod = make_env(root), make_env(root)
    root.put(f"/config/{k}.s?env={staging}", json={"value": "x", "secret": True})
    root.put(f"/config/{k}.s?env={prod}", json={"value": "y", "secret": False})
    assert_error(root.post(f"/config/promote?from={staging}&to={prod}&prefix={k}", json={"expected": {f"{k}.s": 1}}),
                 409, "secret_flag_immutable")
    assert_error(root.post(f"/config/promote?from={staging}&prefix={k}", json={"expected": {}}), 400, "invalid_request")
    assert_error(root.post(f"/config/promote?from={staging}&to={uid('missing')}", json={"expected": {}}), 404, "not_found")
    reader = token_client([{"path": f"{k}.*", "capabilities": ["read"]}])
    root.put(f"/config/{k}.t?env={staging}", json={"value": 1})
    assert_error(reader.post(f"/config/promote?from={staging}&to={prod}&prefix={k}.t", json={"expected": {f"{k}.t": 0}}),
                 403, "forbidden")


def test_explain_walks_a_three_level_chain(root):
    k = uid()
    staging = make_env(root)
    prod = make_env(root, parent=staging)
    root.put(f"/config/{k}.host", json={"value": "default-host"})
    root.put(f"/config/{k}.host?env={staging}", json={"value": "staging-host"})
    root.delete(f"/config/{k}.host?env={staging}")
    root.put(f"/config/{k}.port?env={staging}", json={"value": 6432})
    root.put(f"/config/{k}.pw?env={prod}", json={"value": "explained-secret", "secret": True})

    host = root.get(f"/config/{k}.host?env={prod}&explain=true")
    assert host.status_code == 200 and host.json()["value"] == "default-host"
    chain = host.json()["explain"]["chain"]
    assert [(c["env"], c["state"], c.get("version")) for c in chain] == [
        (prod, "absent", None), (staging, "deleted", 2), ("default", "value", 1)
    ]
    port = root.get(f"/config/{k}.port?env={prod}&explain=true").json()["explain"]["chain"]
    assert [(c["env"], c["state"]) for c in port] == [(prod, "absent"), (staging, "value"), ("default", "absent")]
    pw = root.get(f"/config/{k}.pw?env={prod}&explain=true")
    assert pw.json()["value"] == "explained-secret"  # the read itself is unchanged
    assert "explained-secret" not in str(pw.json()["explain"])
    missing = assert_error(root.get(f"/config/{k}.none?env={prod}&explain=true"), 404, "not_found")
    assert [c["state"] for c in missing["explain"]["chain"]] == ["absent", "absent", "absent"]


def test_explain_hides_layers_the_caller_may_not_read(root, token_client):
    k = uid()
    prod = make_env(root)
    root.put(f"/config/{k}.v", json={"value": "base"})
    caller = token_client([{"path": f"{k}.*", "capabilities": ["read"], "envs": [prod]}])
    body = caller.get(f"/config/{k}.v?env={prod}&explain=true").json()
    assert [(c["env"], c["state"]) for c in body["explain"]["chain"]] == [(prod, "absent"), ("default", "hidden")]
    assert_error(caller.get(f"/config/{k}.v?explain=true"), 403, "forbidden")
