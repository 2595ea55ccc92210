"""Every ``tessera`` command through the installed console script against a real ``tessera serve``: outputs,
``--output json|yaml``, the exit code of each failure class (README's table), ``login``, promote racing a
concurrent change, explain over a three-level chain, import with secrets, tokens, policies and audit."""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import REPO, ServerProcess, free_port

pytestmark = pytest.mark.slow
TOKEN = "tsr_cli-suite-root-token-abcdefghijklm"
SCRIPT = str(Path(sys.executable).with_name("tessera"))  # the console script pip installed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("cli") / "data", root_token=TOKEN).start()
    yield process
    process.stop()


@pytest.fixture
def home(tmp_path):
    return tmp_path


def base_env(server: ServerProcess, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update({"TESSERA_ADDR": server.url, "TESSERA_TOKEN": TOKEN, "HOME": str(home), "COLUMNS": "200"})
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def tessera(server: ServerProcess, home: Path, *args: str, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], cwd=home, env=base_env(server, home, **extra), input=stdin,
                          capture_output=True, text=True, timeout=60)


def unique(prefix: str = "k") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_the_console_script_is_the_installed_one():
    assert Path(SCRIPT).exists()


def test_get_put_ls_history_rollback_rm(server, home):
    key = unique("cfg.") + ".port"
    put = tessera(server, home, "put", key, "5432")
    assert put.returncode == 0 and put.stdout.strip() == f"{key}: version 1 (create)", put.stderr
    assert tessera(server, home, "get", key).stdout == "5432\n"
    body = json.loads(tessera(server, home, "get", key, "--output", "json").stdout)
    assert body["value"] == 5432 and body["version"] == 1 and body["updated_by"] == "root"
    assert json.loads(tessera(server, home, "get", key, "--json").stdout) == body  # --json is --output json
    assert yaml.safe_load(tessera(server, home, "get", key, "-o", "yaml").stdout)["value"] == 5432
    assert tessera(server, home, "put", key, "text value").returncode == 0
    from_stdin = tessera(server, home, "put", key, "-", stdin="from stdin\n")
    assert from_stdin.returncode == 0 and tessera(server, home, "get", key).stdout == "from stdin\n"
    pem = home / "cert.pem"
    pem.write_text("-----BEGIN X-----\nabc\n-----END X-----\n")
    assert tessera(server, home, "put", key, "--file", str(pem)).returncode == 0
    assert tessera(server, home, "get", key).stdout == pem.read_text() + "\n"

    history = tessera(server, home, "history", key, "--limit", "3")
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "ACTION", "UPDATED_AT", "UPDATED_BY", "VALUE"] and len(lines) == 4
    assert [line.split()[0] for line in lines[1:]] == ["4", "3", "2"]
    versions = json.loads(tessera(server, home, "history", key, "-o", "json").stdout)["versions"]
    assert [v["version"] for v in versions] == [4, 3, 2, 1] and versions[-1]["value"] == 5432

    rolled = tessera(server, home, "rollback", key, "--version", "1")
    assert rolled.stdout.strip() == f"{key}: version 5 (rolled back from 1)"
    assert tessera(server, home, "get", key).stdout == "5432\n"
    listed = tessera(server, home, "ls", "--prefix", key.rsplit(".", 1)[0])
    assert listed.stdout.splitlines()[1].split()[:3] == [key, "5", "false"]
    assert json.loads(tessera(server, home, "ls", "--prefix", key.rsplit(".", 1)[0], "--json").stdout)["keys"][0]["key"] == key
    removed = tessera(server, home, "rm", key, "--expected-version", "5")
    assert removed.returncode == 0 and "deleted (version 6)" in removed.stdout
    assert tessera(server, home, "get", key, "--version", "1").stdout == "5432\n"


def test_ls_follows_pages_and_limit(server, home):
    prefix = unique("many")
    with server.client() as admin:
        admin.post("/config/import", json={"values": {prefix: {f"k{i:03d}": i for i in range(25)}}}).raise_for_status()
    keys = json.loads(tessera(server, home, "ls", "--prefix", prefix, "-o", "json").stdout)["keys"]
    assert [k["key"] for k in keys] == [f"{prefix}.k{i:03d}" for i in range(25)]
    limited = json.loads(tessera(server, home, "ls", "--prefix", prefix, "--limit", "7", "-o", "json").stdout)["keys"]
    assert len(limited) == 7


def test_exit_codes_for_each_failure_class(server, home):
    key = unique("codes.") + ".x"
    assert tessera(server, home, "put", key, "1").returncode == 0
    missing = tessera(server, home, "get", unique("nothing."))
    assert missing.returncode == 3 and one_error_line(missing).startswith("error: not_found:")
    conflict = tessera(server, home, "put", key, "2", "--expected-version", "7")
    assert conflict.returncode == 5 and "current_version: 1" in one_error_line(conflict)
    secret_flag = tessera(server, home, "put", key, "3", "--secret")
    assert secret_flag.returncode == 5 and "secret_flag_immutable" in one_error_line(secret_flag)
    nested = tessera(server, home, "put", key + ".below", "1")
    assert nested.returncode == 5 and "key_conflict" in one_error_line(nested)
    unauthenticated = tessera(server, home, "get", key, TESSERA_TOKEN="tsr_not-a-real-token-0000000000")
    assert unauthenticated.returncode == 4 and "unauthenticated" in one_error_line(unauthenticated)
    no_token = tessera(server, home, "get", key, TESSERA_TOKEN="")
    assert no_token.returncode == 4 and "tessera login" in one_error_line(no_token)
    with server.client() as admin:
        admin.put("/policies/cli-nothing", json={"rules": [{"path": "other.*", "capabilities": ["read"]}]}).raise_for_status()
        weak = admin.post("/auth/tokens", json={"service": "weak", "policies": ["cli-nothing"]}).json()["token"]
    forbidden = tessera(server, home, "get", key, TESSERA_TOKEN=weak)
    assert forbidden.returncode == 4 and "forbidden" in one_error_line(forbidden)
    unreachable = tessera(server, home, "get", key, TESSERA_ADDR=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 6 and "connection refused" in one_error_line(unreachable)
    bad_key = tessera(server, home, "get", "a..b")
    assert bad_key.returncode == 2 and "invalid_key" in one_error_line(bad_key)
    bad_flag = tessera(server, home, "get", key, "--bogus")
    assert bad_flag.returncode == 2 and "No such option: --bogus" in one_error_line(bad_flag)
    bad_addr = tessera(server, home, "get", key, "--addr", "127.0.0.1:8200")
    assert bad_addr.returncode == 2 and "--addr" in one_error_line(bad_addr)
    bad_output = tessera(server, home, "get", key, "-o", "xml")
    assert bad_output.returncode == 2 and "--output" in one_error_line(bad_output)
    object_value = tessera(server, home, "put", key, '{"a": 1}')
    assert object_value.returncode == 2 and "tessera import" in one_error_line(object_value)
    assert "No such command" not in tessera(server, home, "import", "--help").stderr
    help_text = tessera(server, home, "--help").stdout
    assert "Exit codes:" in help_text and "7  integrity" in help_text and "5  conflict" in help_text


def test_debug_shows_the_traceback(server, home):
    plain = tessera(server, home, "get", "x", TESSERA_ADDR=f"http://127.0.0.1:{free_port()}")
    assert "Traceback" not in plain.stderr
    traced = tessera(server, home, "--debug", "get", "x", TESSERA_ADDR=f"http://127.0.0.1:{free_port()}")
    assert traced.returncode == 6 and "Traceback" in traced.stderr and traced.stderr.strip().splitlines()[-1].startswith("error:")


def test_integrity_exit_code_for_a_tampered_audit_log(tmp_path):
    data = tmp_path / "data"
    process = ServerProcess(data, root_token=TOKEN).start()
    try:
        with process.client() as admin:
            for i in range(3):
                admin.put(f"/config/t.k{i}", json={"value": i}).raise_for_status()
    finally:
        process.stop()
    intact = subprocess.run([SCRIPT, "audit", "verify", "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    with sqlite3.connect(data / "tessera.db") as connection:
        connection.execute("DELETE FROM audit WHERE seq = 2")
    tampered = subprocess.run([SCRIPT, "audit", "verify", "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert tampered.returncode == 7 and "TAMPERED" in tampered.stdout


def test_login_then_commands_without_a_token(server, home):
    key = unique("login.") + ".k"
    assert tessera(server, home, "put", key, "v").returncode == 0
    refused = tessera(server, home, "login", "tsr_wrong-token-000000000000000", TESSERA_TOKEN="")
    assert refused.returncode == 4 and not (home / ".tessera-token").exists()
    logged = tessera(server, home, "login", TESSERA_TOKEN="", stdin=TOKEN + "\n")
    assert logged.returncode == 0 and "logged in as root" in logged.stdout, logged.stderr
    token_file = home / ".tessera-token"
    assert token_file.read_text().strip() == TOKEN and (token_file.stat().st_mode & 0o777) == 0o600
    assert tessera(server, home, "get", key, TESSERA_TOKEN="").stdout == "v\n"
    me = json.loads(tessera(server, home, "token", "self", "-o", "json", TESSERA_TOKEN="").stdout)
    assert me["service"] == "root"
    token_file.chmod(0o644)
    loose = tessera(server, home, "get", key, TESSERA_TOKEN="")
    assert loose.returncode == 2 and "chmod 600" in one_error_line(loose)


def test_options_before_or_after_the_command_and_the_url_alias(server, home):
    ns = unique("ns")
    assert tessera(server, home, "--namespace", ns, "put", "a.b", "1").returncode == 0
    assert tessera(server, home, "get", "a.b", "-n", ns).stdout == "1\n"
    assert tessera(server, home, "get", "a.b", TESSERA_NAMESPACE=ns).stdout == "1\n"
    aliased = tessera(server, home, "get", "a.b", TESSERA_NAMESPACE=ns, TESSERA_ADDR="", TESSERA_URL=server.url)
    assert aliased.stdout == "1\n"
    assert json.loads(tessera(server, home, "--json", "get", "a.b", "-n", ns).stdout)["namespace"] == ns


def set_up_envs(server: ServerProcess, *chain: str) -> None:
    with server.client() as admin:
        parent = "default"
        for name in chain:
            admin.put(f"/envs/{name}", json={"parent": parent}).raise_for_status()
            parent = name


def test_env_commands_and_explain_over_a_three_level_chain(server, home):
    base, mid, top = unique("base"), unique("mid"), unique("top")
    assert tessera(server, home, "env", "set", base, "--parent", "default").returncode == 0
    assert tessera(server, home, "env", "set", mid, "--parent", base).returncode == 0
    assert tessera(server, home, "env", "set", top, "--parent", mid).stdout.strip() == f"{top}: parent {mid}"
    envs = json.loads(tessera(server, home, "env", "ls", "-o", "json").stdout)["envs"]
    assert {"name": top, "parent": mid} in envs
    key = unique("exp.") + ".host"
    assert tessera(server, home, "put", key, "in-default").returncode == 0
    assert tessera(server, home, "put", key, "in-base", "--env", base).returncode == 0
    assert tessera(server, home, "put", key, "in-mid", "--env", mid).returncode == 0
    assert tessera(server, home, "rm", key, "--env", mid).returncode == 0
    explained = json.loads(tessera(server, home, "get", key, "--env", top, "--explain", "-o", "json").stdout)
    assert [(layer["env"], layer["state"]) for layer in explained["chain"]] == [
        (top, "absent"), (mid, "deleted"), (base, "value"), ("default", "value")]
    assert explained["entry"]["value"] == "in-base" and explained["entry"]["resolved_env"] == base
    table = tessera(server, home, "get", key, "--env", top, "--explain").stdout.splitlines()
    assert table[0].split() == ["ENV", "STATE", "VERSION"] and table[2].split()[:2] == [mid, "deleted"]
    nothing = tessera(server, home, "get", unique("exp.") + ".none", "--env", top, "--explain")
    assert nothing.returncode == 3 and len(nothing.stdout.splitlines()) == 5  # the chain is shown for a miss too
    assert tessera(server, home, "env", "set", base, "--parent", top).returncode == 2  # a cycle: 400


def test_diff_and_promote(server, home):
    staging, prod = unique("stg"), unique("prd")
    set_up_envs(server, staging)
    set_up_envs(server, prod)
    prefix = unique("promo")
    with server.client() as admin:
        admin.put(f"/config/{prefix}.a?env={staging}", json={"value": "new-a"}).raise_for_status()
        admin.put(f"/config/{prefix}.s?env={staging}", json={"value": "pw", "secret": True}).raise_for_status()
        admin.put(f"/config/{prefix}.a?env={prod}", json={"value": "old-a"}).raise_for_status()
        admin.put(f"/config/{prefix}.only?env={prod}", json={"value": "mine"}).raise_for_status()
    diff = tessera(server, home, "diff", staging, prod, "--prefix", prefix)
    rows = [line.split() for line in diff.stdout.splitlines()]
    assert rows[0] == ["CHANGE", "KEY", "FROM", "TO", "TO_VERSION"]
    assert ["changed", f"{prefix}.a", "old-a", "new-a", "1"] not in rows  # from/to are FROM's and TO's values
    assert ["changed", f"{prefix}.a", "new-a", "old-a", "1"] in rows
    assert ["removed", f"{prefix}.s", "<secret>", "<secret>", "0"] in rows
    as_json = json.loads(tessera(server, home, "diff", staging, prod, "--prefix", prefix, "-o", "json").stdout)
    assert [item["key"] for item in as_json["added"]] == [f"{prefix}.only"]
    unconfirmed = tessera(server, home, "promote", staging, prod, "--prefix", prefix)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert f"  {prefix}.s = <secret>  ({prod} at version 0)" in unconfirmed.stdout
    promoted = tessera(server, home, "promote", staging, prod, "--prefix", prefix, "--yes", "-o", "json")
    assert promoted.returncode == 0, promoted.stderr
    assert sorted(item["key"] for item in json.loads(promoted.stdout)["promoted"]) == [f"{prefix}.a", f"{prefix}.s"]
    with server.client() as admin:
        assert admin.get(f"/config/{prefix}.s?env={prod}").json()["secret"] is True
        assert admin.get(f"/config/{prefix}.only?env={prod}").json()["value"] == "mine"  # keys only in TO: left alone
    again = tessera(server, home, "promote", staging, prod, "--prefix", prefix, "--yes")
    assert again.returncode == 0 and "nothing to promote" in again.stdout


def test_promote_with_a_concurrent_change_promotes_nothing(server, home):
    """The diff is shown, someone writes one of its keys in TO before the confirmation: 409, exit 5, and neither
    key is promoted (the versions sent are the ones shown)."""
    staging, prod = unique("stg"), unique("prd")
    set_up_envs(server, staging)
    set_up_envs(server, prod)
    prefix = unique("race")
    with server.client() as admin:
        for name in ("a", "b"):
            admin.put(f"/config/{prefix}.{name}?env={staging}", json={"value": f"new-{name}"}).raise_for_status()
            admin.put(f"/config/{prefix}.{name}?env={prod}", json={"value": f"old-{name}"}).raise_for_status()
    master, slave = pty.openpty()
    process = subprocess.Popen([SCRIPT, "promote", staging, prod, "--prefix", prefix], stdin=slave, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=base_env(server, home), cwd=home)
    os.close(slave)
    try:
        shown = b""
        deadline = time.monotonic() + 30
        while b"Promote?" not in shown and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                shown += chunk
        assert b"Promote?" in shown and f'{prefix}.a = "new-a"  ({prod} at version 1)'.encode() in shown, shown
        with server.client() as admin:  # the concurrent change, after the diff was shown
            admin.put(f"/config/{prefix}.b?env={prod}", json={"value": "someone-else"}).raise_for_status()
        os.write(master, b"y\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 5, err
    line = err.decode().strip().splitlines()[-1]
    assert line.startswith("error: version_conflict") and f"{prefix}.b" in line
    with server.client() as admin:
        assert admin.get(f"/config/{prefix}.a?env={prod}").json()["value"] == "old-a"  # nothing half-promoted
        assert admin.get(f"/config/{prefix}.b?env={prod}").json()["value"] == "someone-else"


def test_import_with_secrets_and_progress(server, home):
    prefix = unique("imp")
    source = home / "app.yaml"
    source.write_text(yaml.safe_dump({prefix: {"host": "h", "port": 1, "password": "pw", "list": [1, 2]}}))
    imported = tessera(server, home, "import", str(source), "--secret", f"{prefix}.password")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == f"{source}: 4 created, 0 updated, 0 unchanged, 0 errors"
    assert "import" in imported.stderr and "4/4" in imported.stderr  # the progress bar's last state
    with server.client() as admin:
        assert admin.get(f"/config/{prefix}.password").json()["secret"] is True
    again = json.loads(tessera(server, home, "import", str(source), "-o", "json").stdout)
    assert again == {"created": 0, "updated": 0, "unchanged": 4, "errors": []}
    dotenv = home / "settings.txt"
    dotenv.write_text(f'{prefix.upper()}__QUOTED="a b" # a comment\n')
    assert tessera(server, home, "import", str(dotenv)).returncode == 2  # no format from the name
    assert tessera(server, home, "import", str(dotenv), "--format", "dotenv").returncode == 0
    assert tessera(server, home, "get", f"{prefix}.quoted").stdout == "a b\n"
    broken = home / "broken.json"
    broken.write_text('{"a": ')
    assert "broken.json" in one_error_line(tessera(server, home, "import", str(broken)))
    missing = tessera(server, home, "import", str(home / "absent.yaml"))
    assert missing.returncode == 2 and "absent.yaml" in one_error_line(missing)
    unknown_secret = tessera(server, home, "import", str(source), "--secret", "not.in.file")
    assert unknown_secret.returncode == 2 and "not.in.file" in one_error_line(unknown_secret)


def test_import_of_many_keys_goes_in_batches(server, home):
    prefix = unique("bulk")
    source = home / "bulk.json"
    source.write_text(json.dumps({prefix: {f"k{i:04d}": "x" * 100 for i in range(1200)}}))
    imported = tessera(server, home, "import", str(source), "-o", "json")
    assert json.loads(imported.stdout)["created"] == 1200, imported.stderr


def test_export_and_run(server, home):
    prefix = unique("run")
    assert tessera(server, home, "put", f"{prefix}.host", "db").returncode == 0
    assert tessera(server, home, "put", f"{prefix}.port", "5432").returncode == 0
    exported = tessera(server, home, "export", "--format", "dotenv", "--prefix", prefix)
    assert f"{prefix.upper()}_HOST=db" in exported.stdout
    ran = tessera(server, home, "run", "--prefix", prefix, "--", sys.executable, "-c",
                  f"import os; print(os.environ['{prefix.upper()}_HOST'], os.environ['{prefix.upper()}_PORT'])")
    assert ran.returncode == 0 and ran.stdout.strip() == "db 5432"
    status = tessera(server, home, "run", "--", sys.executable, "-c", "raise SystemExit(9)")
    assert status.returncode == 9
    missing = tessera(server, home, "run", "--", "no-such-command-here")
    assert missing.returncode == 127 and "command not found" in one_error_line(missing)
    nothing = tessera(server, home, "run")
    assert nothing.returncode == 2 and "--" in one_error_line(nothing)
    unknown = tessera(server, home, "run", "--bogus", "--", "true")
    assert unknown.returncode == 2 and "no such option: --bogus" in one_error_line(unknown)


def test_watch_prints_events(server, home):
    prefix = unique("w")
    with server.client() as admin:
        since = admin.get("/health").json()["revision"]
        admin.put(f"/config/{prefix}.a", json={"value": 1}).raise_for_status()
        admin.put(f"/config/other{prefix}", json={"value": 2}).raise_for_status()
        admin.put(f"/config/{prefix}.b", json={"value": "two"}).raise_for_status()
    watched = tessera(server, home, "watch", f"{prefix}.*", "--since", str(since), "--count", "2")
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(e["key"], e["value"]) for e in events] == [(f"{prefix}.a", 1), (f"{prefix}.b", "two")]
    human = tessera(server, home, "watch", f"{prefix}.b", "--since", str(since), "--count", "1", "-o", "table")
    assert human.stdout.split()[1:] == ["create", f"{prefix}.b", "v1", "two"]


def test_tokens_policies_and_audit(server, home):
    name = unique("pol")
    rules = home / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"path": f"{name}.*", "capabilities": ["read", "list"]}]}))
    assert tessera(server, home, "policy", "put", name, str(rules)).stdout.strip() == f"{name}: 1 rule(s)"
    listed = tessera(server, home, "policy", "get", name).stdout.splitlines()
    assert listed[1].split() == [name, f"{name}.*", "allow", "read,list", "*", "*"]
    assert name in [p["name"] for p in json.loads(tessera(server, home, "policy", "ls", "-o", "json").stdout)["policies"]]
    as_list = home / "rules.json"
    as_list.write_text(json.dumps([{"path": f"{name}.x", "capabilities": ["read"]}]))
    assert tessera(server, home, "policy", "put", name, str(as_list)).returncode == 0
    bad_rules = home / "bad.yaml"
    bad_rules.write_text("rules: [\n")
    assert "bad.yaml" in one_error_line(tessera(server, home, "policy", "put", name, str(bad_rules)))

    created = json.loads(tessera(server, home, "token", "create", "--service", "svc-" + name, "--policy", name,
                                 "--ttl", "600", "-o", "json").stdout)
    assert created["token"].startswith("tsr_") and created["policies"] == [name]
    plain = tessera(server, home, "token", "create", "--service", "svc2-" + name, "--policy", name)
    assert plain.stdout.startswith("token: tsr_")
    tokens = json.loads(tessera(server, home, "token", "ls", "-o", "json").stdout)["tokens"]
    assert created["id"] in [t["id"] for t in tokens] and all("token" not in t for t in tokens)
    me = json.loads(tessera(server, home, "token", "self", "-o", "json", TESSERA_TOKEN=created["token"]).stdout)
    assert me["service"] == "svc-" + name
    assert tessera(server, home, "token", "revoke", created["id"]).returncode == 0
    time.sleep(1.2)  # revocation is effective within one second
    assert tessera(server, home, "token", "self", TESSERA_TOKEN=created["token"]).returncode == 4
    assert tessera(server, home, "token", "revoke", "tok_nonexistent").returncode == 3

    records = json.loads(tessera(server, home, "audit", "ls", "--service", "svc-" + name, "-o", "json").stdout)["entries"]
    assert records and all(r["service"] == "svc-" + name for r in records)
    table = tessera(server, home, "audit", "ls", "--limit", "2").stdout.splitlines()
    assert table[0].split()[:3] == ["TS", "SERVICE", "ACTION"] and len(table) == 3
    assert tessera(server, home, "policy", "rm", name).returncode == 0
    assert tessera(server, home, "policy", "get", name).returncode == 3


def test_version(server, home):
    from tessera import __version__

    shown = tessera(server, home, "version")
    assert shown.stdout.splitlines() == [f"tessera CLI {__version__}", f"server at {server.url}: {__version__} (local backend)"]
    down = tessera(server, home, "version", "-o", "json", TESSERA_ADDR=f"http://127.0.0.1:{free_port()}")
    body = json.loads(down.stdout)
    assert body["cli"] == __version__ and "connection refused" in body["server"]["error"]
    assert down.returncode == 6 and "connection refused" in one_error_line(down)
    plain = tessera(server, home, "version", TESSERA_ADDR=f"http://127.0.0.1:{free_port()}")
    assert plain.stdout == f"tessera CLI {__version__}\n" and plain.returncode == 6


def test_the_server_reports_its_version_in_health(server):
    from tessera import __version__

    assert httpx.get(server.url + "/health").json()["version"] == __version__


def test_the_repository_module_runs_too(server, home):
    """``python -m tessera.client.cli`` (what tests/servers.py starts) behaves as the console script."""
    result = subprocess.run([sys.executable, "-m", "tessera.client.cli", "get", "nothing.here"], cwd=REPO,
                            env=base_env(server, home), capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and one_error_line(result)
