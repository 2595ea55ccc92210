"""The Lambda entry's init (handlers/lambda_.py): everything built at import in a Lambda environment, nothing Lambda
never runs imported, and per-copy state made anew after a SnapStart restore."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tessera.core.tokens import hash_token
from tests.aws.support import REPO, moto_target

pytestmark = pytest.mark.aws
ROOT_TOKEN = "tsr_init-root-token-0123456789abcdef"

CHILD = """
import json, sys
import tessera.handlers.lambda_ as entry
built = entry._live if entry._live is not None else entry._handler
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"boto3", "s3transfer", "jinja2", "uvicorn", "typer", "rich", "httpx"})
print(json.dumps({"built": built is not None, "heavy": heavy, "pydantic_v1": sys.modules.get("pydantic.v1") is not None,
                  "console": any(m.startswith("tessera.handlers.ui") for m in sys.modules)}))
"""


@pytest.mark.parametrize("handler", ["handler", "live_handler"])
def test_a_lambda_container_builds_everything_at_import_and_nothing_it_never_runs(handler):
    env = {
        "PATH": "/usr/bin:/bin", "AWS_LAMBDA_FUNCTION_NAME": "tessera-read", "_HANDLER": f"tessera.handlers.lambda_.{handler}",
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        # Nothing listens there: building must not call AWS (a snapshot holds no connection).
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "TESSERA_BACKEND": "aws", "TESSERA_BUCKET": "b", "TESSERA_TABLE": "t",
        "TESSERA_ROOT_TOKEN_SHA256": "0" * 64, "TESSERA_WS_ENDPOINT": "https://abc.execute-api.us-east-1.amazonaws.com/live",
    }  # fmt: skip
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report == {"built": True, "heavy": [], "pydantic_v1": False, "console": False}


def test_after_a_snapstart_restore_each_copy_is_a_new_writer_with_empty_caches(monkeypatch):
    from tessera.handlers import lambda_

    with moto_target() as target:
        for name, value in target.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TESSERA_ROOT_TOKEN_SHA256", hash_token(ROOT_TOKEN))
        monkeypatch.setenv("TESSERA_WS_ENDPOINT", "https://abc.execute-api.us-east-1.amazonaws.com/live")
        lambda_.reset()
        try:
            lambda_.init()  # the HTTP side (no _HANDLER)
            lambda_._live = lambda_._build_live()
            app, live = lambda_._handler.app.container, lambda_._live
            writer = app.store.audit_writer()
            app.access.audit_log.record(_entry(), durable=True)  # takes a shard lease
            assert writer.chain is not None
            before = (writer.holder, live.sockets.holder, live.container.store.audit_writer().holder)
            app.authenticator.authenticate(ROOT_TOKEN)
            assert app.authenticator.root_hash() is not None and app.authenticator._root_hash is not None  # noqa: SLF001
            lambda_.after_restore()
            after = (writer.holder, live.sockets.holder, live.container.store.audit_writer().holder)
            assert all(a != b for a, b in zip(before, after, strict=True))
            assert writer.chain is None  # no lease: the copy takes a shard of its own at its first record
            assert app.authenticator._root_hash is None  # noqa: SLF001 - read again (here: the pinned digest)
            app.access.audit_log.record(_entry(), durable=True)
            assert writer.chain is not None
        finally:
            lambda_.reset()


def _entry():
    from datetime import UTC, datetime

    from tessera.core.access_model import AuditEntry

    return AuditEntry(ts=datetime.now(UTC), request_id="r", action="config.read", outcome="allowed", status=200)


SERVE = """
import json, sys
import tessera.handlers.lambda_ as entry
events, token = sys.argv[1], sys.argv[2]

def event(name, path=None, body=None):
    e = json.loads(open(f"{events}/{name}").read().replace("REPLACE_WITH_ROOT_TOKEN", token))
    if path:
        e["rawPath"] = e["requestContext"]["http"]["path"] = path
    if body is not None:
        e["body"] = body
    return e

out = {}
out["put"] = entry.handler(event("put.json"), None)["statusCode"]
got = entry.handler(event("get.json"), None)
out["get"] = [got["statusCode"], json.loads(got["body"])["value"]]
bad = entry.handler(event("put.json", body="{\\"valu\\": 1}"), None)
out["bad"] = [bad["statusCode"], json.loads(bad["body"])["error"]["code"]]
out["nope"] = entry.handler(event("get.json", path="/nope"), None)["statusCode"]
doc = entry.handler(event("get.json", path="/openapi.json"), None)
out["openapi"] = [doc["statusCode"], "/config/{key}" in json.loads(doc["body"])["paths"]]
print(json.dumps(out))
"""


def test_a_lambda_container_with_slim_imports_serves_requests(server_target):
    """In a Lambda container (deferred pydantic builds, no pydantic.v1, botocore only) every path still works:
    a write, a read, a validation error, an unmatched route, and the OpenAPI document (its models built on demand)."""
    env = {"PATH": "/usr/bin:/bin", "AWS_LAMBDA_FUNCTION_NAME": "tessera-read",
           "_HANDLER": "tessera.handlers.lambda_.handler", **server_target.env(),
           "TESSERA_ROOT_TOKEN_SHA256": hash_token(ROOT_TOKEN)}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", SERVE, str(REPO / "infra" / "events"), ROOT_TOKEN], env=env,
                         capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    # (stdout also carries the audit lines, as CloudWatch Logs would: the report is the last line)
    assert json.loads(out.stdout.splitlines()[-1]) == {"put": 201, "get": [200, "db.internal"], "bad": [400, "invalid_request"],
                                      "nope": 404, "openapi": [200, True]}  # fmt: skip
