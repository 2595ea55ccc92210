"""The OpenAPI document a client generator and a fuzzer can trust (issue 13 §1).

FastAPI's own document declared only ``200`` and a ``422`` that is never sent, no request bodies (routes read them
by hand, so that every refusal is the contract's ``400``) and no security. Here every operation of the contract is
declared from :data:`OPERATIONS`: its parameters with their types and patterns, its request body (a pydantic model
of ``handlers/schemas.py``), every status the contract names with its response model (errors with :class:`Error`),
and the bearer scheme. Declarations only: nothing here runs on the request path.

A test (``tests/api/test_openapi.py``) holds this table and the app's routes equal, and schemathesis
(``tests/api/test_fuzz.py``) checks real responses against the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tessera.handlers import schemas as s

REF = "#/components/schemas/{model}"

DESCRIPTION = """\
Versioned, encrypted configuration and secrets. The contract is `docs/API.md`; this document declares every
operation, status and body of it.

**Authentication**: `Authorization: Bearer <token>` on every operation except `GET /health`, `GET /ready`,
`GET /openapi.json`, `GET /docs` and `GET /ws`. Missing, unknown, expired or revoked token: `401 unauthenticated`;
a valid token lacking a capability: `403 forbidden`. Too many failed tokens from one address: `429 rate_limited`.

**Errors** all have one shape, `{"error": {"code", "message", "request_id", ...}}` (the `Error` schema), also those
refused below the application (`408 request_timeout`, `414 uri_too_long`, `431 headers_too_large`).

**Limits**: request bodies up to 1 MiB (`413 payload_too_large`); too many concurrent long polls, WebSockets or
subscriptions for one token: `429 too_many_requests` with `Retry-After`; a request past the server's deadline
before its commit point: `503 deadline_exceeded` (nothing changed).

**Idempotency-Key** (any `PUT`, `DELETE`, `POST`): a retry with the same key and request within 24 hours gets the
first response again (`Idempotent-Replayed: true`); the same key with another request `422 idempotency_key_reused`;
a retry while the first runs `409 idempotency_in_progress`.

**WebSocket `GET /ws`** (not an HTTP operation, so described here): upgrade, then send
`{"type": "auth", "token": "..."}` as the first text message (within 10 s), then any number of
`{"type": "subscribe", "keys": ["auth.*"], "since": 41, "namespace": "default", "env": "prod"}` (same defaults as
`GET /watch`; at most 64 per socket). The server sends `{"type": "event", ...}` with the fields of a `WatchEvent`
for every change, in order, none skipped, and `{"type": "error", "code": "...", "message": "..."}` on a refusal
(`unauthenticated`, then close 1008; `invalid_request` for a binary frame, bad JSON or an unknown message;
`not_found`, `revision_compacted` with `current_revision`; `too_many_requests` with `retry_after`, closing with 1013
when it is the socket itself that is refused). A token revoked while its socket is open gets `unauthenticated` and
close 1008 within about a second.
"""

# ------------------------------------------------------------------ parameters
KEY = {"type": "string", "pattern": s.KEY_PATTERN, "maxLength": 256}
NAME = {"type": "string", "pattern": s.NAME_PATTERN}


def query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def path(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


SCOPE = [
    query("namespace", NAME, "default: `default`; needs no creation"),
    query("env", NAME, "default: `default`; must exist (`PUT /envs/{name}`), else 404"),
]
KEY_PATH = path("key", KEY, "dot-separated segments of [A-Za-z0-9_-]{1,64}; at most 32 segments and 256 characters")
PREFIX = query("prefix", KEY, "whole segments: `database` matches `database.host`, not `databases.x`")
IDEMPOTENCY_KEY = header("Idempotency-Key", {"type": "string", "pattern": r"^[\x21-\x7e]{1,200}$"},
                         "a retry with the same key and request gets the first response again")  # fmt: skip
FROM_TO = [query("from", NAME, "the source environment", required=True), query("to", NAME, "the target environment", required=True)]


# ------------------------------------------------------------------ operations
@dataclass(frozen=True)
class Op:
    summary: str
    ok: dict[int, Any]  # status → a model, None (no body), or a dict of media type → schema
    params: list[dict[str, Any]] = field(default_factory=list)
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # besides the ones every authenticated operation may answer
    public: bool = False


COMMON_ERRORS = (400, 401, 403, 404, 429, 503)  # bad input, token, permission, scope/key, limits/damping, audit/deadline
BELOW_APP = (408, 414, 431)  # refused by the HTTP layer before any route (tessera serve)
MUTATION_ERRORS = (409, 413, 422)  # idempotency_in_progress, payload_too_large, idempotency_key_reused
ERROR_TEXT = {
    400: "invalid_request, invalid_key or invalid_value",
    401: "unauthenticated: missing, unknown, expired or revoked token",
    403: "forbidden: the token lacks the capability",
    404: "not_found (a key, version, env, token or policy), or no_route",
    408: "request_timeout: the request's head or body did not arrive in time",
    409: "a conflict: version_conflict (error.current_version), key_conflict, secret_flag_immutable, invalid_rollback, "
         "idempotency_in_progress",  # fmt: skip
    410: "revision_compacted: `since` is older than the retained change log (error.current_revision)",
    413: "payload_too_large (body over 1 MiB) or value_too_large (a value over 64 KiB)",
    414: "uri_too_long: the request line exceeds 8 KiB",
    422: "idempotency_key_reused: the same Idempotency-Key with a different request",
    429: "too_many_requests (Retry-After) or rate_limited (too many failed tokens from this address)",
    431: "headers_too_large",
    503: "unavailable (the store or audit log cannot be written), deadline_exceeded (nothing changed), not_ready",
}

EXPORT_MEDIA = {
    "application/json": {"schema": {"type": "object", "description": "the nested tree"}},
    "application/yaml": {"schema": {"type": "object", "description": "the nested tree, as YAML"}},
    "text/plain": {"schema": {"type": "string", "description": "dotenv: DATABASE_HOST=..."}},
}

OPERATIONS: dict[tuple[str, str], Op] = {
    ("get", "/health"): Op("Liveness: the process answers", {200: s.Health}, public=True, errors=(503,)),
    ("get", "/ready"): Op("Readiness: 503 not_ready while the store or the audit log cannot take writes (probe this)",
                          {200: s.Ready}, public=True, errors=(503,)),  # fmt: skip
    ("get", "/config"): Op("List keys (metadata, never values), in key order, paged", {200: s.KeyList}, [
        *SCOPE, PREFIX, query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "default 1000"),
        query("after", KEY, "the `next` cursor of the previous page")]),  # fmt: skip
    ("get", "/config/export"): Op("Export the resolved tree the caller may read, as a file body", {200: EXPORT_MEDIA}, [
        *SCOPE, PREFIX, query("format", {"type": "string", "enum": ["json", "yaml", "dotenv"]}, "default json")]),  # fmt: skip
    ("post", "/config/import"): Op("Import values (each key commits on its own)", {200: s.ImportResult}, SCOPE,
                                   s.ImportRequest, MUTATION_ERRORS),  # fmt: skip
    ("post", "/config/promote"): Op("Promote differing keys from one environment to another, all or nothing",
                                    {200: s.PromoteResult}, [*FROM_TO, query("namespace", NAME), PREFIX],
                                    s.PromoteRequest, MUTATION_ERRORS),  # fmt: skip
    ("get", "/config/history/{key}"): Op("A key's versions, newest first", {200: s.History}, [
        KEY_PATH, *SCOPE, query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100"),
        query("before", {"type": "integer", "minimum": 1}, "only versions below this one")]),  # fmt: skip
    ("post", "/config/rollback/{key}"): Op("Make a new version with version N's value", {200: s.RollbackResult}, [
        KEY_PATH, *SCOPE, query("version", {"type": "integer", "minimum": 1}, "the version to roll back to", required=True)],
        errors=MUTATION_ERRORS),  # fmt: skip
    ("get", "/config/{key}"): Op("Read a key (or the subtree below it)", {200: s.ConfigRead, 304: None}, [
        KEY_PATH, *SCOPE, query("version", {"type": "integer", "minimum": 1}, "a historical version (leaves only)"),
        query("explain", {"type": "boolean"}, "add the chain of environments walked"),
        header("If-None-Match", {"type": "string", "pattern": r"^[\x20-\x7e]{1,200}$"}, "the ETag of a previous read: 304 when unchanged")]),  # fmt: skip
    ("put", "/config/{key}"): Op("Write a key (201 created, 200 updated or unchanged)", {200: s.WriteResult, 201: s.WriteResult},
                                 [KEY_PATH, *SCOPE], s.WriteRequest, MUTATION_ERRORS),  # fmt: skip
    ("delete", "/config/{key}"): Op("Delete a key (a tombstone version)", {200: s.DeleteResult}, [
        KEY_PATH, *SCOPE, query("expected_version", {"type": "integer", "minimum": 0}, "compare-and-set")],
        errors=MUTATION_ERRORS),  # fmt: skip
    ("get", "/envs"): Op("List environments", {200: s.EnvList}),
    ("put", "/envs/{name}"): Op("Create (201) or re-parent (200) an environment (admin)", {200: s.Env, 201: s.Env},
                                [path("name", NAME)], s.EnvRequest, MUTATION_ERRORS),  # fmt: skip
    ("get", "/diff"): Op("Compare the resolved values of two environments", {200: s.Diff},
                         [*FROM_TO, query("namespace", NAME), PREFIX]),  # fmt: skip
    ("post", "/auth/tokens"): Op("Create a service token (admin); the token string is shown once", {201: s.TokenCreated},
                                 body=s.TokenRequest, errors=MUTATION_ERRORS),  # fmt: skip
    ("get", "/auth/tokens"): Op("List tokens (admin), never their strings", {200: s.TokenList}),
    ("delete", "/auth/tokens/{token_id}"): Op("Revoke a token (admin); effective everywhere within a second", {204: None},
                                              [path("token_id", {"type": "string", "maxLength": 256})], errors=MUTATION_ERRORS),  # fmt: skip
    ("get", "/auth/self"): Op("The calling token", {200: s.TokenSelf}),
    ("post", "/auth/explain"): Op("Which rule decides a capability on a key for a token or service (admin)",
                                  {200: s.Explanation}, body=s.ExplainRequest, errors=MUTATION_ERRORS),  # fmt: skip
    ("get", "/policies"): Op("List policies (admin)", {200: s.PolicyList}),
    ("put", "/policies/{name}"): Op("Create (201) or replace (200) a policy (admin)", {200: s.Policy, 201: s.Policy},
                                    [path("name", {"type": "string", "pattern": s.POLICY_NAME_PATTERN})], s.PolicyRequest,
                                    MUTATION_ERRORS),  # fmt: skip
    ("get", "/policies/{name}"): Op("Read a policy (admin)", {200: s.Policy},
                                    [path("name", {"type": "string", "pattern": s.POLICY_NAME_PATTERN})]),  # fmt: skip
    ("delete", "/policies/{name}"): Op("Delete a policy (admin)", {204: None},
                                       [path("name", {"type": "string", "pattern": s.POLICY_NAME_PATTERN})],
                                       errors=MUTATION_ERRORS),  # fmt: skip
    ("get", "/audit"): Op("The audit log, newest first (admin)", {200: s.AuditList}, [
        query("key", KEY), query("service", {"type": "string", "maxLength": 256}),
        query("since", {"type": "string", "format": "date-time"}, "RFC 3339 with a zone"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100"),
        query("phase", {"type": "string", "enum": ["response", "request", "all"]}, "default response")]),  # fmt: skip
    ("get", "/watch"): Op("Changes after a revision; held until one matches or the timeout passes", {200: s.WatchResult}, [
        *SCOPE, query("keys", {"type": "string"}, "comma-separated patterns: exact, `prefix.*`, `*` (default `*`)"),
        query("since", {"type": "integer", "minimum": 0}, "default: the current revision (future changes only)"),
        query("timeout", {"type": "number", "minimum": 0, "maximum": 60}, "seconds, default 30, clamped to 60")],
        errors=(410,)),  # fmt: skip
}
MUTATING = ("put", "post", "delete")


def _responses(op: Op, method: str) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, model in op.ok.items():
        if model is None:
            answers[str(status)] = {"description": {204: "done", 304: "not modified (If-None-Match)"}.get(status, "")}
        elif isinstance(model, dict):
            answers[str(status)] = {"description": "the file body", "content": model}
        else:
            answers[str(status)] = {"description": model.__doc__.splitlines()[0] if model.__doc__ else model.__name__,
                                    "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}  # fmt: skip
    statuses = set(op.errors) | set(BELOW_APP) | ({503} if op.public else set(COMMON_ERRORS))
    for status in sorted(statuses):
        answers[str(status)] = {"description": ERROR_TEXT[status],
                                "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}  # fmt: skip
        if status == 429:
            answers["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    for code, answer in answers.items():  # every response, whatever answered it, carries the request's id
        answer.setdefault("headers", {})["X-Request-Id"] = {
            "required": True, "schema": {"type": "string"}, "description": "the client's (when it sent one) or a new one"}
        if method == "get" and op.ok.get(304, False) is None and code in ("200", "304"):  # a read: its ETag
            answer["headers"]["ETag"] = {"schema": {"type": "string"}, "description": "send it as If-None-Match: 304"}
    return answers


def models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [s.Error]
    for op in OPERATIONS.values():
        for model in [*op.ok.values(), op.body]:
            if isinstance(model, type) and issubclass(model, BaseModel) and model not in found:
                found.append(model)
    return found


# Links a client (and schemathesis' stateful phase) can follow: create → read → history → rollback.
KEY_LINK = {"key": "$request.path.key"}
LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("put", "/config/{key}"): {
        "ReadIt": {"operationId": "config_read", "parameters": KEY_LINK},
        "ItsHistory": {"operationId": "config_history", "parameters": KEY_LINK},
        "RollItBack": {"operationId": "config_rollback", "parameters": {**KEY_LINK, "version": "$response.body#/version"}},
        "DeleteIt": {"operationId": "config_delete", "parameters": KEY_LINK},
    },
    ("post", "/config/rollback/{key}"): {
        "ReadIt": {"operationId": "config_read", "parameters": KEY_LINK},
        "ItsHistory": {"operationId": "config_history", "parameters": KEY_LINK},
    },
    ("delete", "/config/{key}"): {"ItsHistory": {"operationId": "config_history", "parameters": KEY_LINK}},
    ("post", "/auth/tokens"): {"RevokeIt": {"operationId": "token_revoke", "parameters": {"token_id": "$response.body#/id"}}},
    ("put", "/policies/{name}"): {"ReadIt": {"operationId": "policy_read", "parameters": {"name": "$request.path.name"}}},
}


def build(api: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=api.title, version=api.version, description=DESCRIPTION, routes=api.routes)
    _, top = models_json_schema([(model, "validation") for model in models()], ref_template=REF)
    schemas = dict(sorted(top.get("$defs", {}).items()))
    for path_name, item in document.get("paths", {}).items():
        for method, operation in item.items():
            op = OPERATIONS.get((method, path_name))
            if op is None:
                raise KeyError(f"{method.upper()} {path_name} is a route but not declared in handlers/openapi.py OPERATIONS")
            operation["summary"] = op.summary
            # FastAPI's id is "<route name><path>_<method>" with non-word characters as "_": keep the name alone
            # ("config_read"), what the links below refer to.
            suffix = re.sub(r"\W", "_", path_name) + "_" + method
            generated = operation.get("operationId", "")
            operation["operationId"] = generated[: -len(suffix)] if generated.endswith(suffix) else generated
            params = list(op.params)
            if method in MUTATING:
                params.append(IDEMPOTENCY_KEY)
            params.append(header("X-Request-Id", {"type": "string", "pattern": r"^[\x20-\x7e]{1,200}$"},
                                 "echoed in X-Request-Id; one is made when absent"))  # fmt: skip
            operation["parameters"] = params
            operation.pop("requestBody", None)
            if op.body is not None:
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": REF.format(model=op.body.__name__)}}}}  # fmt: skip
            operation["responses"] = _responses(op, method)
            for status in ("200", "201"):
                if status in operation["responses"] and (method, path_name) in LINKS:
                    operation["responses"][status]["links"] = LINKS[(method, path_name)]
            operation["security"] = [] if op.public else [{"bearer": []}]
    document["components"] = {
        "schemas": schemas,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "a Tessera token (`tsr_...`)"}},
    }
    document["security"] = [{"bearer": []}]
    return document
