"""`tessera aws init` / `tessera aws gc`, and `tessera serve --backend aws` end to end against moto_server."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tessera.client.cli import app
from tests.aws.support import REGION, free_port, mocked_aws, shared_server

ROOT_TOKEN = "tsr_serve-aws-root-token-0123456789"


def parse_exports(text: str) -> dict[str, str]:
    exports = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            exports[name] = shlex.split(value)[0]
    return exports


def test_init_is_idempotent_and_prints_exports():
    runner = CliRunner()
    env = {"TESSERA_BUCKET": "tessera-cli-bucket", "TESSERA_TABLE": "tessera-cli-table", "AWS_REGION": REGION,
           "TESSERA_KMS_KEY_ID": "alias/tessera-cli"}
    with mocked_aws() as clients:
        first = runner.invoke(app, ["aws", "init"], env=env)
        assert first.exit_code == 0, first.output
        exports = parse_exports(first.stdout)
        assert exports == {"TESSERA_BACKEND": "aws", "TESSERA_BUCKET": "tessera-cli-bucket", "TESSERA_TABLE": "tessera-cli-table",
                           "TESSERA_KMS_KEY_ID": "alias/tessera-cli", "AWS_REGION": REGION}
        assert "created: key, table, bucket" in first.stderr
        again = runner.invoke(app, ["aws", "init"], env=env)
        assert again.exit_code == 0 and "created: nothing" in again.stderr
        assert parse_exports(again.stdout) == exports
        aliases = [a for a in clients.kms.list_aliases()["Aliases"] if a["AliasName"] == "alias/tessera-cli"]
        assert len(aliases) == 1
        missing = runner.invoke(app, ["aws", "init"], env={**env, "TESSERA_KMS_KEY_ID": "1234abcd-0000-0000-0000-000000000000"})
        assert missing.exit_code == 1 and "error:" in missing.stderr and "Traceback" not in missing.output


def test_gc_reports_json_and_dry_run(target):
    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    store, keys = target.pair()
    ConfigService(store, keys).put(ROOT, Scope(), "kept", 1)
    target.clients.s3.put_object(Bucket=target.bucket, Key="v/default/default/ghost/00000000000000000001-deadbeef", Body=b"x")
    target.clients.s3.put_object(Bucket=target.bucket, Key="v/not-a-value-object", Body=b"x")
    env = {"TESSERA_BUCKET": target.bucket, "TESSERA_TABLE": target.table, "AWS_REGION": REGION}
    runner = CliRunner()
    with mocked_aws():
        dry = runner.invoke(app, ["aws", "gc", "--json", "--dry-run", "--grace-seconds", "0"], env=env)
        assert dry.exit_code == 0, dry.output
        report = json.loads(dry.stdout)
        assert report["orphans"] == ["v/default/default/ghost/00000000000000000001-deadbeef"] and report["deleted"] == 0
        assert report["scanned"] == 3 and report["dry_run"] is True
        text = runner.invoke(app, ["gc", "--grace-seconds", "0"], env=env)  # `tessera gc` is `tessera aws gc`
        assert text.exit_code == 0 and "1 orphaned; deleted 1" in text.stdout
    keys_left = {o["Key"] for o in target.clients.s3.list_objects_v2(Bucket=target.bucket)["Contents"]}
    assert len(keys_left) == 2 and "v/not-a-value-object" in keys_left


@pytest.mark.slow
def test_serve_with_the_aws_backend_end_to_end(tmp_path: Path):
    server = shared_server()
    bin_dir = Path(sys.executable).parent
    suffix = os.urandom(4).hex()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "AWS_ENDPOINT"))},
        "AWS_ENDPOINT_URL": server.url,
        "AWS_REGION": REGION,
        "TESSERA_BUCKET": f"tessera-serve-{suffix}",
        "TESSERA_TABLE": f"tessera-serve-{suffix}",
        "TESSERA_KMS_KEY_ID": f"alias/tessera-serve-{suffix}",
    }
    init = subprocess.run([str(bin_dir / "tessera"), "aws", "init"], env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    exports = parse_exports(init.stdout)
    assert exports["AWS_ENDPOINT_URL"] == server.url
    port = free_port()
    serve_env = {**env, **exports, "TESSERA_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [str(bin_dir / "tessera"), "serve", "--backend", "aws", "--port", str(port), "--root-token", ROOT_TOKEN],
        env=serve_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "tessera serve did not start"
                time.sleep(0.1)
        assert health.json()["backend"] == "aws"
        headers = {"Authorization": f"Bearer {ROOT_TOKEN}"}
        created = httpx.put(f"{base}/config/database.host", json={"value": "db.internal"}, headers=headers)
        assert created.status_code == 201, created.text
        read = httpx.get(f"{base}/config/database.host", headers=headers)
        assert read.status_code == 200 and read.json()["value"] == "db.internal" and read.json()["revision"] == 1
        conflict = httpx.put(f"{base}/config/database.host", json={"value": "x", "expected_version": 0}, headers=headers)
        assert conflict.status_code == 409 and conflict.json()["error"]["current_version"] == 1
        # The state is in moto, not in the node: another client sees it directly.
        from tessera.core.backends.aws import AwsClients, AwsStore

        clients = AwsClients.create(REGION, server.url)
        store = AwsStore(table=exports["TESSERA_TABLE"], bucket=exports["TESSERA_BUCKET"], dynamodb=clients.dynamodb, s3=clients.s3)
        assert store.latest(__import__("tessera.core.model", fromlist=["Scope"]).Scope(), "database.host").version == 1
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_serve_refuses_to_start_when_the_access_stores_cannot_load(tmp_path: Path):
    """Issue 9 §6: tokens, policies and the audit log in memory would let an aws node run unaudited, so a node
    whose access stores cannot load does not start: exit status 1, one ``error:`` line naming them, no traceback,
    no port opened. The module is made unimportable the way a broken install would leave it (a ``sitecustomize``
    that blocks it), against real resources in a moto server, so nothing but the access stores is missing."""
    target = shared_server().target()
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tessera.core.backends.aws_access'] = None  # importing it raises ImportError\n"
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "AWS_ENDPOINT"))},
        **target.env(),
        "PYTHONPATH": str(tmp_path),
        "TESSERA_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tessera"), "serve", "--backend", "aws", "--port", str(port), "--root-token", ROOT_TOKEN],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, lines)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, lines
    assert "cannot load its token, policy and audit stores" in errors[0] and "not starting" in errors[0]
    assert all(" INFO " in line for line in lines if line not in errors), lines  # botocore's start-up log line at most
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
