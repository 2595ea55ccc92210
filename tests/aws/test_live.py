"""Live reload on AWS (handlers/live.py) under in-process moto: the WebSocket API's routes as API Gateway invokes
them, the table's real stream records fed to the notifier (filtered as the template's event source filters them,
in shuffled, overlapping batches), and every Management API call recorded from botocore's event hooks."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from fastapi.testclient import TestClient

from tessera.core.backends.aws import CallCounter
from tessera.core.backends.aws.sockets import ConnectionPoster, SocketStore
from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tessera.handlers.live import Live
from tests.aws.support import REGION

pytestmark = pytest.mark.aws
ROOT_TOKEN = "tsr_live-root-token-0123456789abcdef"
ROOT = {"Authorization": f"Bearer {ROOT_TOKEN}"}
ENDPOINT = "https://abc123.execute-api.us-east-1.amazonaws.com/live"


class Sockets:
    """What the Management API was asked to do: messages posted per connection, in order, and closed connections."""

    def __init__(self) -> None:
        self.posted: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.closed: list[str] = []
        self.calls = 0

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls += 1
        if model.name == "PostToConnection":
            data = params["Data"]
            self.posted[params["ConnectionId"]].append(json.loads(data if isinstance(data, (bytes, str)) else data.read()))
        elif model.name == "DeleteConnection":
            self.closed.append(params["ConnectionId"])

    def events(self, connection: str) -> list[dict[str, Any]]:
        return [message for message in self.posted[connection] if message["type"] == "event"]

    def errors(self, connection: str) -> list[dict[str, Any]]:
        return [message for message in self.posted[connection] if message["type"] == "error"]


class Node:
    """One live function's container and one HTTP node over the same table (the writer)."""

    def __init__(self, target: Any) -> None:
        settings = Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN)
        self.calls = CallCounter()
        self.container = build(settings, store=target.store(self.calls), keys=CachingKeyService(target.kms(self.calls)))
        self.writer = build(settings, store=target.store(), keys=CachingKeyService(target.kms()))
        self.http = TestClient(create_app(self.writer)).__enter__()
        self.sockets = Sockets()
        self.management = boto3.session.Session(region_name=REGION).client("apigatewaymanagementapi", endpoint_url=ENDPOINT)
        self.management.meta.events.register("provide-client-params.apigatewaymanagementapi", self.sockets)
        poster = ConnectionPoster(self.management, self.calls)
        self.live = Live(self.container, SocketStore(self.container.store.db), lambda _: poster, ENDPOINT)
        self.streams = boto3.session.Session(region_name=REGION).client(
            "dynamodbstreams", config=Config(account_id_endpoint_mode="disabled"))  # fmt: skip
        arn = target.clients.dynamodb.describe_table(TableName=target.table)["Table"]["LatestStreamArn"]
        shard = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        self.iterator = self.streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
        self.requests = 0

    def close(self) -> None:
        self.http.__exit__(None, None, None)
        self.writer.close()
        self.container.close()

    # ------------------------------------------------------------------ API Gateway's side
    def event(self, connection: str, kind: str, body: Any = None, route: str = "$default") -> dict[str, Any]:
        self.requests += 1
        context = {"eventType": kind, "connectionId": connection, "routeKey": route, "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
                   "stage": "live", "requestId": f"ws-{self.requests}", "identity": {"sourceIp": "203.0.113.9"}}  # fmt: skip
        event: dict[str, Any] = {"requestContext": context}
        if body is not None:
            event["body"] = body if isinstance(body, str) else json.dumps(body)
        return self.live.route(event)

    def connect(self, connection: str, token: str = ROOT_TOKEN) -> None:
        assert self.event(connection, "CONNECT", route="$connect") == {"statusCode": 200}
        self.event(connection, "MESSAGE", {"type": "auth", "token": token}, route="auth")

    def subscribe(self, connection: str, **message: Any) -> None:
        self.event(connection, "MESSAGE", {"type": "subscribe", **message}, route="subscribe")

    def stream_records(self) -> list[dict[str, Any]]:
        """What the table's stream holds since last asked, filtered as the template's FilterCriteria does."""
        records: list[dict[str, Any]] = []
        for _ in range(100):
            page = self.streams.get_records(ShardIterator=self.iterator)
            self.iterator = page["NextShardIterator"]
            records += page["Records"]
            if not page["Records"]:
                break
        return [r for r in records if r["eventName"] == "INSERT" and r["dynamodb"]["Keys"]["PK"]["S"] == "CHANGES"]


@pytest.fixture
def node(target) -> Iterator[Node]:
    node = Node(target)
    try:
        yield node
    finally:
        node.close()


def lambda_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch as the event source mapping hands it to Lambda."""
    return {"Records": [{"eventSource": "aws:dynamodb", "eventName": r["eventName"], "dynamodb": {"Keys": r["dynamodb"]["Keys"]}}
                        for r in records]}  # fmt: skip


def service_token(node: Node, name: str, rules: list[dict[str, Any]]) -> tuple[str, str]:
    node.http.put(f"/policies/{name}", json={"rules": rules}, headers=ROOT).raise_for_status()
    created = node.http.post("/auth/tokens", json={"service": name, "policies": [name]}, headers=ROOT).json()
    return created["token"], created["id"]


def test_fifty_subscribers_get_every_change_in_revision_order(node):
    app_token, _ = service_token(node, "app", [{"path": "app.*", "capabilities": ["read"]}])
    connections = [f"conn-{i:02d}" for i in range(50)]
    for index, connection in enumerate(connections):
        restricted = index % 5 == 0  # every fifth socket: a token that may read app.* only
        node.connect(connection, app_token if restricted else ROOT_TOKEN)
        node.subscribe(connection, keys=["*"])
    assert not any(node.sockets.posted.values())  # nothing happened yet: nothing sent
    node.stream_records()  # (the tokens' and policies' writes are not changes)

    writes = [("app.name", "tessera"), ("db.host", "db1"), ("app.password", "s3cret"), ("app.name", "tessera-2"),
              ("db.port", 5432), ("app.flag", True), ("db.host", "db2"), ("app.list", [1, 2]), ("db.user", "u"),
              ("app.name", "tessera-3"), ("db.host", "db3"), ("app.last", "x")]  # fmt: skip
    for key, value in writes:
        node.http.put(f"/config/{key}", json={"value": value, "secret": key.endswith("password")}, headers=ROOT).raise_for_status()
    node.http.delete("/config/db.user", headers=ROOT).raise_for_status()
    records = node.stream_records()
    assert len(records) == len(writes) + 1

    # The stream orders records per item only: hand them over shuffled, in overlapping batches, one twice.
    rng = random.Random(7)
    shuffled = records[:]
    rng.shuffle(shuffled)
    batches = [shuffled[:4], shuffled[4:9] + shuffled[2:3], shuffled[9:]]
    for batch in batches:
        node.live.notify(lambda_event(batch))

    history = node.http.get("/watch?since=0&timeout=0", headers=ROOT).json()["events"]
    assert [e["revision"] for e in history] == list(range(1, len(writes) + 2))
    app_only = [e for e in history if e["key"].startswith("app.")]
    for index, connection in enumerate(connections):
        received = node.sockets.events(connection)
        expected = app_only if index % 5 == 0 else history
        assert [{k: v for k, v in e.items() if k != "type"} for e in received] == expected, connection
    secret = next(e for e in history if e["key"] == "app.password")
    assert secret["secret"] is True and "value" not in secret  # redacted as /ws does
    assert node.sockets.errors("conn-01") == []

    # A redelivered batch (Lambda retries) sends nothing twice.
    before = sum(len(messages) for messages in node.sockets.posted.values())
    node.live.notify(lambda_event(records))
    assert sum(len(messages) for messages in node.sockets.posted.values()) == before


def test_subscribe_replays_since_and_validates_as_ws_does(node):
    for n in range(3):
        node.http.put(f"/config/k{n}", json={"value": n}, headers=ROOT).raise_for_status()
    node.connect("c1")
    node.subscribe("c1", keys=["k1", "k2"], since=0)
    assert [(e["revision"], e["key"], e["value"]) for e in node.sockets.events("c1")] == [(2, "k1", 1), (3, "k2", 2)]
    node.subscribe("c1", env="nope")
    node.subscribe("c1", since="x")
    node.subscribe("c1", keys="k1")
    assert [e["code"] for e in node.sockets.errors("c1")] == ["not_found", "invalid_request", "invalid_request"]
    node.event("c1", "MESSAGE", "not json")
    node.event("c1", "MESSAGE", {"type": "ping"})
    assert node.sockets.posted["c1"][-2]["code"] == "invalid_request" and node.sockets.posted["c1"][-1] == {"type": "pong"}
    # Subscribing without authenticating first, or with a bad token: refused, recorded, closed.
    node.event("c2", "CONNECT", route="$connect")
    node.subscribe("c2", keys=["*"])
    node.connect("c3", token="tsr_not-a-real-token-000000000")
    assert [e["code"] for e in node.sockets.errors("c2")] == ["unauthenticated"]
    assert [e["code"] for e in node.sockets.errors("c3")] == ["unauthenticated"]
    assert node.sockets.closed == ["c2", "c3"]
    audit = node.http.get("/audit?limit=20", headers=ROOT).json()["entries"]
    socket_records = sorted((e["action"], e["status"]) for e in audit if e["action"].startswith("ws."))
    assert socket_records == sorted([("ws.connect", 101), ("ws.subscribe", 200), ("ws.subscribe", 404), ("ws.subscribe", 400),
                                     ("ws.subscribe", 400), ("ws.connect", 401), ("ws.connect", 401)])  # fmt: skip


def test_a_revoked_token_gets_no_more_events_and_its_socket_closes(node):
    token, token_id = service_token(node, "app", [{"path": "*", "capabilities": ["read"]}])
    node.connect("c1", token)
    node.subscribe("c1", keys=["*"])
    node.stream_records()
    node.http.put("/config/a", json={"value": 1}, headers=ROOT).raise_for_status()
    node.live.notify(lambda_event(node.stream_records()))
    assert [e["key"] for e in node.sockets.events("c1")] == ["a"]
    node.http.delete(f"/auth/tokens/{token_id}", headers=ROOT).raise_for_status()
    node.container.store.auth_stamp.changed()  # the stamp's half second has passed
    node.container.authenticator.clear()
    node.http.put("/config/b", json={"value": 2}, headers=ROOT).raise_for_status()
    node.live.notify(lambda_event(node.stream_records()))
    assert [e["key"] for e in node.sockets.events("c1")] == ["a"]
    assert [e["code"] for e in node.sockets.errors("c1")] == ["unauthenticated"] and node.sockets.closed == ["c1"]
    assert node.live.sockets.connection("c1") is None and list(node.live.sockets.subscriptions("default")) == []


def test_disconnect_forgets_the_connection_and_its_subscriptions(node):
    node.connect("c1")
    node.subscribe("c1", keys=["a.*"])
    node.subscribe("c1", keys=["b"], namespace="other")
    assert len(list(node.live.sockets.subscriptions("default"))) == 1
    node.event("c1", "DISCONNECT", route="$disconnect")
    assert node.live.sockets.connection("c1") is None
    assert list(node.live.sockets.subscriptions("default")) == [] and list(node.live.sockets.subscriptions("other")) == []


def test_an_idle_subscriber_costs_nothing_and_a_change_costs_its_subscribers_only(node):
    node.connect("c1")
    node.subscribe("c1", keys=["app.*"])
    node.connect("c2")
    node.subscribe("c2", keys=["db.*"])
    node.stream_records()
    node.calls.clear()
    # Idle: no change, no stream record, no invocation: nothing at all (API Gateway keeps the socket).
    assert node.live.notify({"Records": []}) == {"delivered": 0} and sum(node.calls.values()) == 0
    node.http.put("/config/app.x", json={"value": 1}, headers=ROOT).raise_for_status()
    node.live.notify(lambda_event(node.stream_records()))
    assert [e["key"] for e in node.sockets.events("c1")] == ["app.x"] and node.sockets.events("c2") == []
    # One change, one interested subscriber: lease + release (2 writes), its post, and the reads of the change log.
    assert node.calls["dynamodb:UpdateItem"] == 2 and node.calls["execute-api:PostToConnection"] == 1
    assert node.calls["dynamodb:PutItem"] == 0 and node.calls["dynamodb:Query"] <= 4


def test_what_a_socket_costs_from_connect_to_disconnect(node):
    """The calls behind one socket's life (API Gateway ends every socket within 2 hours: a client reconnects)."""
    node.connect("warm")  # the container holds its audit shard already
    node.calls.clear()
    node.event("c1", "CONNECT", route="$connect")
    assert sum(node.calls.values()) == 0
    node.event("c1", "MESSAGE", {"type": "auth", "token": ROOT_TOKEN}, route="auth")
    auth = dict(node.calls)
    node.calls.clear()
    node.subscribe("c1", keys=["app.*"])
    subscribe = dict(node.calls)
    node.calls.clear()
    node.event("c1", "MESSAGE", {"type": "ping"})
    ping = dict(node.calls)
    node.calls.clear()
    node.event("c1", "DISCONNECT", route="$disconnect")
    disconnect = dict(node.calls)
    # Is it open already; its record; the connection (+ the auth stamp and the root digest when their half second is up).
    assert auth.pop("dynamodb:GetItem") - 1 <= 2 and auth == {"dynamodb:PutItem": 2}
    # The connection, the revision and the log's start (as /ws validates), its record, the subscription and its count,
    # and one look at the change log for a backlog (none: since defaults to now).
    assert subscribe.pop("dynamodb:GetItem") - 4 <= 2  # (+ the stamp and the root digest, when due)
    assert subscribe == {"dynamodb:Query": 2, "dynamodb:PutItem": 2, "dynamodb:UpdateItem": 1}
    assert ping == {"execute-api:PostToConnection": 1}
    assert disconnect == {"dynamodb:DeleteItem": 2, "dynamodb:Query": 1}


def test_a_subscription_another_delivery_holds_is_tried_again_once_it_is_free(node):
    """Two notifier invocations (stream shards) may reach one subscription at once: only the lease holder posts;
    the other tries again after a pause, so a change the holder's last look missed still arrives."""
    import threading

    node.connect("c1")
    node.subscribe("c1", keys=["*"])
    node.stream_records()
    (sub,) = node.live.sockets.subscriptions("default")
    other = SocketStore(node.container.store.db)  # another invocation's deliverer
    held = other.acquire(sub)
    assert held is not None
    node.http.put("/config/a", json={"value": 1}, headers=ROOT).raise_for_status()
    releaser = threading.Timer(0.2, other.release, (held, held.cursor))  # it finishes without having seen "a"
    releaser.start()
    try:
        node.live.notify(lambda_event(node.stream_records()))
    finally:
        releaser.join()
    assert [e["key"] for e in node.sockets.events("c1")] == ["a"]
