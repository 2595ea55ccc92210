"""Domain results → the JSON shapes of ``API.md``. Values appear only where the caller may see them.

:func:`dumps` is total: every value the store holds renders, however deep (values written before the contract's
depth limit existed may nest far deeper than 64).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from tessera.core.formats import iterative_dumps
from tessera.core.model import Version, format_time
from tessera.core.service import HistoryEntry, ReadResult, ResolvedLeaf


def read_body(result: ReadResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": result.key,
        "value": result.value,
        "namespace": result.scope.namespace,
        "env": result.scope.env,
    }
    version = result.version
    if version is not None:
        body.update(
            version=version.version,
            secret=version.secret,
            resolved_env=result.resolved_env,
            updated_at=format_time(version.updated_at),
            updated_by=version.updated_by,
            revision=version.revision,
        )
    else:
        body["redacted"] = result.redacted
    return body


def write_body(version: Version) -> dict[str, Any]:
    return {
        "key": version.key,
        "version": version.version,
        "revision": version.revision,
        "secret": version.secret,
        "action": version.action.value,
        "namespace": version.scope.namespace,
        "env": version.scope.env,
        "updated_at": format_time(version.updated_at),
        "updated_by": version.updated_by,
    }


def list_item(leaf: ResolvedLeaf) -> dict[str, Any]:
    version = leaf.version
    return {
        "key": version.key,
        "version": version.version,
        "secret": version.secret,
        "resolved_env": leaf.env,
        "updated_at": format_time(version.updated_at),
        "updated_by": version.updated_by,
    }


def history_item(entry: HistoryEntry) -> dict[str, Any]:
    version = entry.version
    item: dict[str, Any] = {
        "version": version.version,
        "action": version.action.value,
        "updated_at": format_time(version.updated_at),
        "updated_by": version.updated_by,
        "secret": version.secret,
        "revision": version.revision,
    }
    if version.rolled_back_from is not None:
        item["rolled_back_from"] = version.rolled_back_from
    if entry.has_value and not version.secret:
        item["value"] = entry.value
    return item


JSON = (b"content-type", b"application/json")


def dumps(document: Any) -> bytes:
    """JSON bytes: orjson (fast) for everything it takes, the standard library past orjson's nesting limit
    (255), and an iterative encoder past the standard library's (the interpreter's recursion limit)."""
    try:
        return orjson.dumps(document)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    except RecursionError:
        return iterative_dumps(document).encode()


def error_body(status: int, code: str, message: str, request_id: str, **extra: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of the contract's error shape."""
    body = dumps({"error": {"code": code, "message": message, "request_id": request_id, **extra}})
    return status, [JSON], body
