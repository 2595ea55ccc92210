"""Least privilege, driven: every route of the API is called through the function the template routes it to,
in that function's own container (its own caches, as on Lambda), while a small IAM evaluator checks each AWS call
against that function's role. The test fails on a call a role does not allow (the deployment would answer 503)
and on a partition or action a role grants that no route uses (a role reaching what it does not need)."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tessera.core.access_model import AuditEntry
from tessera.core.audit import GENESIS, link
from tessera.core.auth import ROOT_HASH_META
from tessera.core.backends.aws import CallCounter, KmsKeyService, pad
from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.rotation import ACTIVE_KMS_KEY_META
from tessera.core.settings import Settings
from tessera.core.tokens import hash_token
from tessera.handlers.app import create_app
from tests.aws.privilege import Enforcer, function_roles, role_statements, routes
from tests.aws.support import KEY_ALIAS
from tests.aws.test_infra import load_template, translate

pytestmark = pytest.mark.aws
ROOT_TOKEN = "tsr_privilege-root-token-0123456789abc"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}


def seed_previous_release_chain(target) -> None:
    """A table upgraded from the previous release holds its audit chains: GET /audit may read them."""
    from datetime import UTC, datetime

    from tests.access.test_aws_access import legacy_item

    linked = link("node-legacy", [AuditEntry(ts=datetime(2026, 1, 1, tzinfo=UTC), request_id="r", action="config.read",
                                             outcome="allowed", status=200)], 0, GENESIS)  # fmt: skip
    target.clients.dynamodb.put_item(TableName=target.table, Item=legacy_item("node-legacy", linked[0]))
    target.clients.dynamodb.put_item(TableName=target.table, Item={"PK": {"S": "AUDITHEAD"}, "SK": {"S": "node-legacy"},
                                                                     "seq": {"N": "1"}, "hash": {"S": linked[0].hash}})  # fmt: skip


def test_every_route_runs_within_its_functions_role_and_every_grant_is_needed(target):
    template, translated = load_template(), translate()
    table = routes(template)
    roles = function_roles(translated)
    enforcer = Enforcer({role: role_statements(translated, role) for role in set(roles.values())}, target.bucket)
    settings = Settings(backend="aws", bucket=target.bucket, table=target.table, root_token_sha256=hash_token(ROOT_TOKEN))
    seed_previous_release_chain(target)
    containers: dict[str, Any] = {}
    clients: dict[str, TestClient] = {}
    served: dict[str, int] = {}

    def start_containers() -> None:
        """One container per function, as Lambda runs them: its own caches, its own audit shard."""
        stop_containers()
        for function in roles:
            store = target.store(CallCounter(), pinned_meta={ROOT_HASH_META: settings.root_token_sha256})  # as from_settings
            keys = CachingKeyService(KmsKeyService(target.clients.kms, KEY_ALIAS, store.calls,
                                                   functools.partial(store.get_meta, ACTIVE_KMS_KEY_META)))  # as build_keys
            containers[function] = build(settings, store=store, keys=keys)
            clients[function] = TestClient(create_app(containers[function])).__enter__()
            served[function] = 0

    def stop_containers() -> None:
        for function in list(clients):
            clients.pop(function).__exit__(None, None, None)
            containers.pop(function).close()

    def call(method: str, path: str, expect: int | tuple[int, ...], headers: dict[str, str] = ROOT, **kwargs: Any) -> Any:
        function = table.function_for(method, path.split("?", 1)[0])
        enforcer.role = roles[function]
        try:
            response = clients[function].request(method, path, headers=headers, **kwargs)
        finally:
            enforcer.role = None
        expected = expect if isinstance(expect, tuple) else (expect,)
        assert response.status_code in expected, (method, path, response.status_code, response.text, enforcer.violations)
        served[function] += 1
        # The next request on this function finds its audit shard's tail as a writer taking over a shard would.
        lease = containers[function].store.audit_writer()._lease  # noqa: SLF001
        if lease is not None and served[function] == 2:
            lease.dirty = True
        return response

    def watches_quiet() -> None:
        """Until the watch container's feed poller has stopped (a few idle rounds after its last request): its
        counter reads would otherwise be checked against the role of whatever function is called meanwhile."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            task = containers["WatchFunction"].feed_poller._task  # noqa: SLF001
            if task is None or task.done():
                return
            time.sleep(0.2)
        raise AssertionError("the watch container's feed poller did not stop")

    hooks = [(client, f"provide-client-params.{client.meta.service_model.service_name}")
             for client in (target.clients.dynamodb, target.clients.s3, target.clients.kms)]  # fmt: skip
    for client, event in hooks:
        client.meta.events.register(event, enforcer)
    try:
        start_containers()
        # Round 1, the root token: every route once.
        call("GET", "/health", 200)
        call("PUT", "/envs/prod", 201, json={"parent": "default"})
        call("PUT", "/config/db.host", 201, json={"value": "db.internal"})
        call("PUT", "/config/db.password", 201, json={"value": "s3cret", "secret": True})
        call("PUT", "/config/db.host", 200, json={"value": "db2.internal"}, headers={**ROOT, "Idempotency-Key": "w-1"})
        call("PUT", "/config/db.host", 200, json={"value": "db2.internal"}, headers={**ROOT, "Idempotency-Key": "w-1"})  # replayed
        call("PUT", "/config/db.host", 201, json={"value": "prod-db"}, params={"env": "prod"})
        call("GET", "/config/db.host", 200)
        call("GET", "/config/db.host?version=1", 200)
        call("GET", "/config/db.host?env=prod", 200)
        call("GET", "/config/db", 200)
        call("GET", "/config", 200)
        call("GET", "/config/export?format=yaml", 200)
        call("GET", "/config/history/db.host", 200)
        call("GET", "/diff?from=default&to=prod", 200)
        call("GET", "/envs", 200)
        call("POST", "/config/rollback/db.host?version=1", 200)
        diff = call("GET", "/diff?from=default&to=prod", 200).json()
        call("POST", "/config/promote?from=default&to=prod", 200, headers={**ROOT, "Idempotency-Key": "p-1"},
             json={"expected": {item["key"]: item["to_version"] for group in diff.values() for item in group}})
        call("POST", "/config/import", (200, 201), json={"values": {"feature": {"a": True, "b": 2}}})
        call("DELETE", "/config/feature.b", (200, 204))
        call("PUT", "/policies/reader", (200, 201), json={"rules": [{"path": "*", "capabilities": ["read", "write", "rollback", "list"]}]})
        call("PUT", "/policies/doomed", (200, 201), json={"rules": [{"path": "x.*", "capabilities": ["read"]}]})
        call("GET", "/policies", 200)
        call("GET", "/policies/reader", 200)
        token = call("POST", "/auth/tokens", 201, json={"service": "app", "policies": ["reader"]},
                     headers={**ROOT, "Idempotency-Key": "a-1"}).json()  # claims (IDEM#) on the admin role too
        service = {"Authorization": f"Bearer {token['token']}"}
        call("POST", "/auth/explain", 200, json={"service": "app", "capability": "read", "key": "db.host"})
        call("GET", "/auth/tokens", 200)
        call("GET", "/watch?since=0&timeout=1", 200)
        call("GET", "/audit?limit=5", 200)
        call("GET", "/audit?key=db.host", 200)
        watches_quiet()
        call("DELETE", "/policies/doomed", (200, 204))
        call("GET", "/no/such/route", 404)
        call("POST", "/no/such/route", 404, headers={**ROOT, "Idempotency-Key": "r-1"})  # the read role claims nothing
        call("PATCH", "/config/db.host", (404, 405))

        # Round 2, new (cold) containers and a service token: what a fresh container reads on each route.
        start_containers()
        call("GET", "/config/db.host", 200, headers=service)
        call("PUT", "/config/db.host", 200, headers=service, json={"value": "db3.internal"})  # decrypts the old value
        call("POST", "/config/rollback/db.host?version=2", 200, headers=service)
        call("PUT", "/config/db.port", 201, headers=service, json={"value": 5432})
        call("GET", "/auth/self", 200, headers=service)
        # Before the watches: a watch container's feed poller reads the counter for a few seconds after its last request.
        drive_live_function(containers["LiveFunction"], enforcer, roles["LiveFunction"], service["Authorization"][7:],
                            lambda: call("PUT", "/config/db.extra", 201, headers=service, json={"value": 1}))
        call("GET", "/watch?since=0&timeout=1&keys=db.*&env=prod", 200, headers=service)
        call("GET", "/watch?timeout=1", 200, headers=service)
        call("GET", "/watch?since=999999&timeout=1", (200, 400), headers=service)
        call("GET", "/health", 200)
        watches_quiet()
        call("DELETE", f"/auth/tokens/{token['id']}", (200, 204))
    finally:
        for client, event in hooks:
            client.meta.events.unregister(event, enforcer)
        stop_containers()
    assert not enforcer.violations, enforcer.violations
    assert not enforcer.unused(), enforcer.unused()


def drive_live_function(container: Any, enforcer: Enforcer, role: str, token: str, put: Any) -> None:
    """The live function, fresh: a socket authenticates, subscribes (its backlog replayed: values read and
    decrypted), a change is delivered by the notifier, the socket goes; Management API calls checked too."""
    import boto3

    from tessera.core.backends.aws.sockets import ConnectionPoster, SocketStore
    from tessera.handlers.live import Live
    from tests.aws.support import REGION

    endpoint = "https://abc123.execute-api.us-east-1.amazonaws.com/live"
    management = boto3.session.Session(region_name=REGION).client("apigatewaymanagementapi", endpoint_url=endpoint)
    management.meta.events.register("provide-client-params.apigatewaymanagementapi", enforcer)
    live = Live(container, SocketStore(container.store.db), lambda _: ConnectionPoster(management), endpoint)

    def route(kind: str, body: dict[str, Any] | None = None) -> None:
        context = {"eventType": kind, "connectionId": "c1", "requestId": "ws-1", "domainName": "d", "stage": "live"}
        event: dict[str, Any] = {"requestContext": context}
        if body is not None:
            event["body"] = json.dumps(body)
        live.route(event)

    revision = container.store.current_revision()
    enforcer.role = role
    try:
        route("CONNECT")
        route("MESSAGE", {"type": "auth", "token": token})
        container.store.audit_writer()._lease.dirty = True  # noqa: SLF001 - the next record finds its shard's tail
        route("MESSAGE", {"type": "subscribe", "keys": ["db.*"], "env": "prod", "since": 0})
    finally:
        enforcer.role = None
    put()  # through the write function
    enforcer.role = role
    try:
        live.notify({"Records": [{"eventSource": "aws:dynamodb", "eventName": "INSERT",
                                  "dynamodb": {"Keys": {"PK": {"S": "CHANGES"}, "SK": {"S": pad(revision + 1)}}}}]})
        route("DISCONNECT")
    finally:
        enforcer.role = None
