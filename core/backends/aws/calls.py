"""Clients, counted calls and error translation for the aws backend: no botocore exception leaves through here.

``call_aws`` makes one AWS call, counts it (``CallCounter``, by ``"<service>:<Operation>"``) and turns every
botocore error into ``Unavailable`` except the codes the caller handles itself, which arrive as
``ClientFailure``. ``Table`` binds one DynamoDB table to a client and a counter: the store, the access store
and the audit writer all talk to the table through it.

>>> calls = CallCounter({"dynamodb:GetItem": 2, "s3:GetObject": 1})
>>> calls.by_service(), calls.service("dynamodb")
({'dynamodb': 2, 's3': 1}, 2)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.core.backends.aws.items import s
from tessera.core.errors import Unavailable


class CallCounter(Counter):
    """AWS calls made, by ``"<service>:<Operation>"`` (one per logical call; botocore's retries are not counted)."""

    def by_service(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for name, count in self.items():
            totals[name.split(":", 1)[0]] += count
        return dict(totals)

    def service(self, name: str) -> int:
        return sum(count for key, count in self.items() if key.startswith(name + ":"))


@dataclass
class AwsClients:
    """The boto3 clients the backend uses, sharing one call counter."""

    s3: Any
    dynamodb: Any
    kms: Any
    calls: CallCounter = field(default_factory=CallCounter)

    @classmethod
    def create(
        cls,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 5,
        session: Any = None,
    ) -> AwsClients:
        """Clients with botocore's ``standard`` retry mode (exponential backoff with jitter on throttling,
        5xx and connection errors) and short timeouts, so a dead endpoint becomes ``503`` in seconds."""
        # botocore directly: boto3 adds nothing used here and its import (s3transfer, resources) costs a cold start.
        import botocore.session
        from botocore.config import Config

        session = session or botocore.session.get_session()
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=3,
            read_timeout=10,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        kwargs: dict[str, Any] = {"config": config, "region_name": region or session_region(session) or "us-east-1"}
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        create = getattr(session, "create_client", None) or session.client  # a botocore or a boto3 session
        return cls(s3=create("s3", **kwargs), dynamodb=create("dynamodb", **kwargs), kms=create("kms", **kwargs))


def session_region(session: Any) -> str | None:
    """The region a botocore (``get_config_variable``) or boto3 (``region_name``) session is configured with."""
    region = getattr(session, "region_name", None)
    if region is None and hasattr(session, "get_config_variable"):
        region = session.get_config_variable("region")
    return region  # type: ignore[no-any-return]


_shared_clients: dict[tuple[str | None, str | None], AwsClients] = {}
_shared_lock = threading.Lock()


def shared_clients(region: str | None, endpoint_url: str | None) -> AwsClients:
    """One set of clients per (region, endpoint) per process: the store and the key service share it
    (and its call counter), and a Lambda container reuses it across invocations."""
    with _shared_lock:
        clients = _shared_clients.get((region, endpoint_url))
        if clients is None:
            from botocore.exceptions import BotoCoreError

            try:
                clients = AwsClients.create(region, endpoint_url)
            except BotoCoreError as exc:  # a bad profile or endpoint: say so, without botocore's trace
                raise Unavailable(f"cannot configure the AWS clients ({type(exc).__name__})") from exc
            _shared_clients[(region, endpoint_url)] = clients
        return clients


class ClientFailure(Exception):
    """An AWS error code the caller handles itself (a failed condition, a cancelled transaction, …)."""

    def __init__(self, code: str, response: Mapping[str, Any]) -> None:
        super().__init__(code)
        self.code = code
        self.response = response

    @property
    def cancellation_codes(self) -> list[str]:
        """Per-item codes of a cancelled transaction (``"None"`` for items that were fine)."""
        return [reason.get("Code", "None") for reason in self.response.get("CancellationReasons") or []]


def call_aws(
    calls: CallCounter,
    service: str,
    client: Any,
    operation: str,
    handled: frozenset[str] = frozenset(),
    **params: Any,
) -> dict[str, Any]:
    """Make one AWS call, counted; codes in ``handled`` come back as ``ClientFailure``, every other
    botocore error as ``Unavailable`` (botocore's own retries have run by then). Nothing else escapes."""
    from botocore.exceptions import BotoCoreError, ClientError

    calls[f"{service}:{operation}"] += 1
    method: Callable[..., dict[str, Any]] = getattr(client, snake_case(operation))
    try:
        return method(**params)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code in handled:
            raise ClientFailure(code, exc.response) from exc
        raise Unavailable(f"{service} is unavailable ({code}); nothing was changed") from exc
    except BotoCoreError as exc:
        raise Unavailable(f"{service} cannot be reached ({type(exc).__name__}); nothing was changed") from exc


def snake_case(operation: str) -> str:
    """``TransactWriteItems`` → ``transact_write_items`` (boto3's method names)."""
    out = []
    for index, char in enumerate(operation):
        if char.isupper() and index:
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def query_items(query: Callable[..., dict[str, Any]], params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    """Items of a DynamoDB ``Query``, following ``LastEvaluatedKey`` pages until ``limit`` items (or all)."""
    params = dict(params)
    returned = 0
    while True:
        if limit is not None:
            params["Limit"] = limit - returned
        page = query(**params)
        for item in page.get("Items", []):
            yield item
            returned += 1
        if "LastEvaluatedKey" not in page or (limit is not None and returned >= limit):
            return
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class Table:
    """One DynamoDB table behind counted calls. Every read is strongly consistent (``docs/aws.md`` says why).

    >>> # table = Table("tessera", clients.dynamodb, clients.calls)
    >>> # table.get("META", "root_token_sha256")   # → the item, or None
    """

    def __init__(self, name: str, client: Any, calls: CallCounter | None = None) -> None:
        self.name = name
        self.client = client
        self.calls = calls if calls is not None else CallCounter()

    def call(self, operation: str, handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        """Any DynamoDB operation, counted (``TableName`` is not added: transactions name it per item)."""
        return call_aws(self.calls, "dynamodb", self.client, operation, handled, **params)

    def key(self, pk: str, sk: str) -> dict[str, Any]:
        return {"PK": s(pk), "SK": s(sk)}

    def get(self, pk: str, sk: str, projection: str | None = None, names: dict[str, str] | None = None) -> dict[str, Any] | None:
        params: dict[str, Any] = {"TableName": self.name, "Key": self.key(pk, sk), "ConsistentRead": True}
        if projection:
            params["ProjectionExpression"] = projection
        if names:
            params["ExpressionAttributeNames"] = names
        return self.call("GetItem", **params).get("Item")

    def query(self, limit: int | None = None, **params: Any) -> Iterator[dict[str, Any]]:
        """All items of a query (strongly consistent), following pages until ``limit`` items."""
        return query_items(
            lambda **page: self.call("Query", **page), {"TableName": self.name, "ConsistentRead": True, **params}, limit
        )

    def partition(
        self, pk: str, *, forward: bool = True, after: str | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The items of one partition in sort-key order (``after``: strictly after that sort key)."""
        condition = "PK = :pk" + (" AND SK > :after" if after is not None else "")
        values: dict[str, Any] = {":pk": s(pk)}
        if after is not None:
            values[":after"] = s(after)
        return self.query(limit, KeyConditionExpression=condition, ExpressionAttributeValues=values, ScanIndexForward=forward)

    def scan(self, **params: Any) -> Iterator[dict[str, Any]]:
        params = {"TableName": self.name, "ConsistentRead": True, **params}
        while True:
            page = self.call("Scan", **params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def transact(self, items: list[dict[str, Any]], handled: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        return self.call("TransactWriteItems", handled, TransactItems=items, **params)
