"""WebSocket connections and subscriptions of the API Gateway WebSocket API, in the table; and the Management
API that posts to them. The routes and the notifier that use them: ``handlers/live.py``; why: ``docs/aws.md``.

| item | PK | SK | attributes |
|---|---|---|---|
| connection (after its auth message) | ``WSCONN`` | ``<connection id>`` | ``th`` token digest, ``subs`` count, ``nss`` namespaces, ``expires_at`` |
| subscription | ``WSSUB#<namespace>`` | ``<connection id>#<nn>`` | ``conn``, ``env``, ``keys``, ``cur`` (delivered up to), ``th``, ``lease``/``holder`` while one delivers, ``expires_at`` |

A subscription's ``cur`` only moves under its lease (a conditional ``UpdateItem``), so one deliverer at a time posts
its events, in revision order, and a crashed one's lease runs out after ``LEASE_SECONDS``. Everything carries a TTL
past API Gateway's longest connection (2 hours), so a ``$disconnect`` that never came is cleaned up by the table.

>>> # sockets = SocketStore(Table("tessera", clients.dynamodb)); sockets.subscriptions("default")  # → [Subscription]
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tessera.core.backends.aws.calls import CallCounter, ClientFailure, Table, call_aws
from tessera.core.backends.aws.items import n, s

CONN_PK = "WSCONN"
SUB_PREFIX = "WSSUB#"
CONNECTION_TTL_SECONDS = 3 * 3600  # API Gateway closes a WebSocket after 2 hours at most
LEASE_SECONDS = 30.0  # the notifier's timeout: a crashed deliverer's lease is free again after this
CONDITION_FAILED = frozenset({"ConditionalCheckFailedException"})


class Gone(Exception):
    """The connection no longer exists (the client went away; API Gateway answered 410)."""


@dataclass(frozen=True)
class Connection:
    id: str
    token_hash: str
    subscriptions: int
    namespaces: tuple[str, ...]


@dataclass(frozen=True)
class Subscription:
    connection: str
    sk: str
    namespace: str
    env: str
    keys: tuple[str, ...]
    cursor: int
    token_hash: str

    @property
    def pk(self) -> str:
        return SUB_PREFIX + self.namespace


def _subscription(item: dict[str, Any]) -> Subscription:
    return Subscription(
        connection=item["conn"]["S"],
        sk=item["SK"]["S"],
        namespace=item["PK"]["S"][len(SUB_PREFIX):],
        env=item["env"]["S"],
        keys=tuple(value["S"] for value in item["keys"]["L"]),
        cursor=int(item["cur"]["N"]),
        token_hash=item["th"]["S"],
    )


class SocketStore:
    """Connections and subscriptions (``WSCONN``, ``WSSUB#…``): a few small items, all with a TTL."""

    def __init__(self, db: Table, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.holder = secrets.token_hex(8)

    def reset(self) -> None:
        """A new lease holder id (after a SnapStart restore every copy is a different deliverer)."""
        self.holder = secrets.token_hex(8)

    def _expires(self) -> dict[str, str]:
        return n(int(self.clock()) + CONNECTION_TTL_SECONDS)

    # ------------------------------------------------------------------ connections
    def open(self, connection: str, token_hash: str) -> bool:
        """Record an authenticated connection; False if it had authenticated already."""
        try:
            self.db.call("PutItem", CONDITION_FAILED, TableName=self.db.name, ConditionExpression="attribute_not_exists(PK)",
                         Item={"PK": s(CONN_PK), "SK": s(connection), "th": s(token_hash), "subs": n(0),
                               "expires_at": self._expires()})  # fmt: skip
        except ClientFailure:
            return False
        return True

    def connection(self, connection: str) -> Connection | None:
        item = self.db.get(CONN_PK, connection)
        if item is None:
            return None
        return Connection(connection, item["th"]["S"], int(item["subs"]["N"]), tuple(item.get("nss", {}).get("SS", [])))

    def add_subscription(
        self, connection: str, token_hash: str, namespace: str, env: str, keys: list[str], cursor: int, limit: int
    ) -> Subscription | None:
        """Count the subscription on its connection (at most ``limit``), then store it; None past the limit."""
        try:
            counted = self.db.call(
                "UpdateItem", CONDITION_FAILED, TableName=self.db.name, Key=self.db.key(CONN_PK, connection),
                UpdateExpression="ADD subs :one, nss :ns", ConditionExpression="attribute_exists(PK) AND subs < :limit",
                ExpressionAttributeValues={":one": n(1), ":ns": {"SS": [namespace]}, ":limit": n(limit)},
                ReturnValues="UPDATED_NEW",
            )  # fmt: skip
        except ClientFailure:
            return None
        number = int(counted["Attributes"]["subs"]["N"])
        subscription = Subscription(connection, f"{connection}#{number:02d}", namespace, env, tuple(keys), cursor, token_hash)
        self.db.call("PutItem", TableName=self.db.name, Item={
            "PK": s(subscription.pk), "SK": s(subscription.sk), "conn": s(connection), "env": s(env),
            "keys": {"L": [s(key) for key in keys]}, "cur": n(cursor), "th": s(token_hash), "expires_at": self._expires(),
        })  # fmt: skip
        return subscription

    def close(self, connection: str) -> None:
        """Forget a connection and its subscriptions (``$disconnect``, a revoked token, a gone client)."""
        old = self.db.call("DeleteItem", TableName=self.db.name, Key=self.db.key(CONN_PK, connection), ReturnValues="ALL_OLD")
        namespaces = old.get("Attributes", {}).get("nss", {}).get("SS", [])
        for namespace in namespaces:
            for item in self.db.query(KeyConditionExpression="PK = :pk AND begins_with(SK, :conn)",
                                      ExpressionAttributeValues={":pk": s(SUB_PREFIX + namespace), ":conn": s(connection + "#")}):  # fmt: skip
                self.drop(_subscription(item))

    def drop(self, subscription: Subscription) -> None:
        self.db.call("DeleteItem", TableName=self.db.name, Key=self.db.key(subscription.pk, subscription.sk))

    # ------------------------------------------------------------------ delivery
    def subscriptions(self, namespace: str) -> Iterator[Subscription]:
        """Every subscription in ``namespace`` (one ``Query``, paged)."""
        for item in self.db.partition(SUB_PREFIX + namespace):
            yield _subscription(item)

    def acquire(self, subscription: Subscription) -> Subscription | None:
        """Take the subscription's lease; its current state, or None if another deliverer holds it (or it is gone)."""
        now = self.clock()
        try:
            answer = self.db.call(
                "UpdateItem", CONDITION_FAILED, TableName=self.db.name, Key=self.db.key(subscription.pk, subscription.sk),
                UpdateExpression="SET lease = :until, holder = :me",
                ConditionExpression="attribute_exists(PK) AND (attribute_not_exists(lease) OR lease < :now)",
                ExpressionAttributeValues={":until": n(int(now + LEASE_SECONDS)), ":me": s(self.holder), ":now": n(int(now))},
                ReturnValues="ALL_NEW",
            )  # fmt: skip
        except ClientFailure:
            return None
        return _subscription(answer["Attributes"])

    def release(self, subscription: Subscription, cursor: int) -> None:
        """Store how far it was delivered and free the lease (nothing, if the subscription went meanwhile)."""
        try:
            self.db.call(
                "UpdateItem", CONDITION_FAILED, TableName=self.db.name, Key=self.db.key(subscription.pk, subscription.sk),
                UpdateExpression="SET cur = :cur REMOVE lease, holder", ConditionExpression="holder = :me",
                ExpressionAttributeValues={":cur": n(cursor), ":me": s(self.holder)},
            )  # fmt: skip
        except ClientFailure:
            pass


class ConnectionPoster:
    """``PostToConnection`` / ``DeleteConnection`` through API Gateway's Management API at one endpoint
    (``https://<api id>.execute-api.<region>.amazonaws.com/<stage>``)."""

    def __init__(self, client: Any, calls: CallCounter | None = None) -> None:
        self.client = client
        self.calls = calls if calls is not None else CallCounter()

    @classmethod
    def create(cls, endpoint_url: str, region: str | None, calls: CallCounter | None = None, session: Any = None) -> ConnectionPoster:
        import botocore.session
        from botocore.config import Config

        from tessera.core.backends.aws.calls import session_region

        session = session or botocore.session.get_session()
        config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=3, read_timeout=5,
                        max_pool_connections=32)  # fmt: skip
        create = getattr(session, "create_client", None) or session.client
        return cls(create("apigatewaymanagementapi", endpoint_url=endpoint_url, config=config,
                          region_name=region or session_region(session) or "us-east-1"), calls)  # fmt: skip

    def post(self, connection: str, data: bytes) -> None:
        try:
            call_aws(self.calls, "execute-api", self.client, "PostToConnection", frozenset({"GoneException"}),
                     ConnectionId=connection, Data=data)  # fmt: skip
        except ClientFailure as exc:
            raise Gone(connection) from exc

    def close(self, connection: str) -> None:
        try:
            call_aws(self.calls, "execute-api", self.client, "DeleteConnection", frozenset({"GoneException"}),
                     ConnectionId=connection)  # fmt: skip
        except ClientFailure:
            pass
