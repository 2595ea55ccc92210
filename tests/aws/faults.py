"""Fault injection at the HTTP layer of boto3 clients, through botocore's ``before-send`` event.

The injected response is what AWS would send (status, error code, body in the service's protocol), so
botocore's retry logic and our error translation both run for real; nothing of ours is mocked.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):  # botocore reads the body through this
        yield self._body


def error_response(service: str, status: int, code: str) -> tuple[dict[str, str], bytes]:
    if service == "s3":
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>injected</Message></Error>"
        return {"Content-Type": "application/xml"}, body.encode()
    prefix = "com.amazonaws.dynamodb.v20120810#" if service == "dynamodb" else ""
    return (
        {"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": code},
        json.dumps({"__type": prefix + code, "message": "injected"}).encode(),
    )


@dataclass
class Fault:
    service: str
    operation: str
    status: int
    code: str
    times: int | None = None  # None: every attempt
    landed: bool = False  # True: the service applies the request and only its answer is lost (moto in-process)

    def exhausted(self) -> bool:
        return self.times is not None and self.times <= 0


@dataclass
class FaultInjector:
    """``injector.fail("dynamodb", "TransactWriteItems", 500, "InternalServerError")`` makes every attempt
    of that call fail until ``clear()``; ``times=1`` fails only the first attempt (botocore retries it)."""

    clients: Any
    faults: list[Fault] = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for service in ("s3", "dynamodb", "kms"):
            client = getattr(self.clients, service)
            # First, so it runs before moto's in-process stubber answers the request.
            client.meta.events.register_first(f"before-send.{client.meta.service_model.endpoint_prefix}", self._before_send)

    def fail(
        self, service: str, operation: str, status: int, code: str, times: int | None = None, landed: bool = False
    ) -> None:
        self.faults.append(Fault(service, operation, status, code, times, landed))

    def clear(self) -> None:
        self.faults.clear()

    def _before_send(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        # "before-send.<service>.<Operation>"
        _, service, operation = (kwargs.get("event_name", "") + "..").split(".")[:3]
        for fault in self.faults:
            if fault.service == service and fault.operation == operation and not fault.exhausted():
                self.attempts[f"{service}:{operation}"] += 1
                if fault.times is not None:
                    fault.times -= 1
                headers, body = error_response(service, fault.status, fault.code)
                url = request.url
                if not fault.landed:
                    # botocore asks every before-send handler; moto's in-process stubber answers (and applies
                    # the request) only for AWS URLs, so an unroutable URL keeps the request from landing.
                    request.url = "http://fault-injected.invalid/"
                return AWSResponse(url, fault.status, headers, _Raw(body))
        return None
