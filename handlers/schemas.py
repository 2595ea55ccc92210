"""Pydantic models of the HTTP contract (``/work/shared/API.md``): every request body and every response body.

They *declare* the API — the OpenAPI document (``handlers/openapi.py``) is built from them — and are not run on the
request path: routes parse bodies by hand (so every refusal is the contract's ``400``, never a framework ``422``),
and the read fast path renders with orjson. A test (``tests/api/test_openapi.py``) validates real responses against
these models, so they cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import JsonDict

# JSON Schema patterns of the contract's names (ECMA 262, as in OpenAPI).
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,31}$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
POLICY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TIME_FORMAT = "date-time"
Capability = Literal["read", "list", "history", "write", "delete", "rollback", "admin"]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")  # extensions may add fields; clients ignore what they do not know


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # request bodies: what the server reads (a rule with more is refused)


# ------------------------------------------------------------------ errors
class ErrorDetail(Model):
    code: str = Field(description="stable machine-readable code, e.g. not_found, version_conflict, too_many_requests")
    message: str = Field(description="human readable; never holds a value or a token string")
    request_id: str = Field(description="the X-Request-Id of the request")
    current_version: int | None = Field(None, description="version_conflict: the key's version now (0: no live value)")
    current_revision: int | None = Field(None, description="revision_compacted: the latest revision, to resync from")
    keys: list[str] | None = Field(None, description="promote's version_conflict: the keys that moved")
    retry_after: int | None = Field(None, description="too_many_requests: seconds, as the Retry-After header")


class Error(Model):
    """Every error has this shape, whatever refused the request (a route, the framework, the HTTP layer)."""

    error: ErrorDetail


# ------------------------------------------------------------------ config
class ConfigRead(Model):
    """A leaf (``version`` set) or a subtree (``value`` an object assembled from the leaves, no ``version``)."""

    key: str
    value: Any = Field(description="any JSON value; an object only for a subtree")
    namespace: str
    env: str
    version: int | None = Field(None, ge=1)
    secret: bool | None = None
    resolved_env: str | None = Field(None, description="where the value came from (the env or an ancestor)")
    updated_at: str | None = Field(None, json_schema_extra={"format": TIME_FORMAT})
    updated_by: str | None = None
    revision: int | None = None
    redacted: list[str] | None = Field(None, description="subtree: keys the caller may list but not read")
    explain: dict[str, Any] | None = Field(None, description="?explain=true: {chain: [{env, state, version?}]}")


class KeyListItem(Model):
    key: str
    version: int
    secret: bool
    updated_at: str = Field(json_schema_extra={"format": TIME_FORMAT})
    updated_by: str
    resolved_env: str | None = None


class KeyList(Model):
    keys: list[KeyListItem]
    next: str | None = Field(description="the cursor of the next page (pass it as ?after=), null on the last")


# Any JSON value but an object (an object is a tree of keys: see import).
NOT_AN_OBJECT: JsonDict = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}, {"type": "array"}]}


class WriteRequest(Strict):
    value: Any = Field(description="any JSON value except an object; at most 64 KiB encoded, 64 levels deep",
                       json_schema_extra=NOT_AN_OBJECT)  # fmt: skip
    secret: bool | None = Field(None, description="fixed when the key is created; omitted: kept")
    expected_version: int | None = Field(None, ge=0, description="compare-and-set on the latest version; 0: no live value")


class WriteResult(Model):
    key: str
    version: int
    revision: int
    secret: bool
    updated_at: str = Field(json_schema_extra={"format": TIME_FORMAT})
    updated_by: str
    action: str | None = None
    namespace: str | None = None
    env: str | None = None


class RollbackResult(WriteResult):
    rolled_back_from: int


class DeleteResult(Model):
    key: str
    version: int
    revision: int | None = None


class HistoryItem(Model):
    version: int
    action: Literal["create", "update", "delete", "rollback"]
    updated_at: str = Field(json_schema_extra={"format": TIME_FORMAT})
    updated_by: str
    secret: bool
    revision: int | None = None
    rolled_back_from: int | None = None
    value: Any = Field(None, description="non-secret versions the caller may read; never on a secret one")


class History(Model):
    key: str
    namespace: str | None = None
    env: str | None = None
    versions: list[HistoryItem]


class ImportValues(Strict):
    values: dict[str, Any] = Field(description="a nested or dotted object of values")
    secrets: list[str] | None = Field(None, description="keys to create as secret")


class ImportContent(Strict):
    format: Literal["json", "yaml", "dotenv"] = Field("json", description="the text's format")
    content: str = Field(description="the document (its parsed size and depth are bounded before any work)")
    secrets: list[str] | None = Field(None, description="keys to create as secret")


class ImportRequest(RootModel[ImportValues | ImportContent]):
    """Values as an object, or a document as text."""


class ImportFailure(Model):
    key: str
    code: str
    message: str


class ImportResult(Model):
    created: int
    updated: int
    unchanged: int
    errors: list[ImportFailure]


class PromoteRequest(Strict):
    keys: list[str] | None = Field(None, description="only these keys (default: every key that differs)")
    expected: dict[str, int] | None = Field(None, description="each copied key's version in `to` (0: none)")


class PromotedKey(Model):
    key: str
    version: int
    revision: int | None = None


class PromoteResult(Model):
    promoted: list[PromotedKey]
    unchanged: int


# ------------------------------------------------------------------ environments and diff
class EnvRequest(Strict):
    parent: str | None = Field(None, description="default: `default` (which itself has no parent)")


class Env(Model):
    name: str
    parent: str | None


class EnvList(Model):
    envs: list[Env]


class DiffItem(Model):
    key: str
    secret: bool
    to_version: int = Field(description="the key's version in `to` itself (0: none), what promote's expected wants")
    value: Any = None
    from_: Any = Field(None, alias="from")
    to: Any = None


class Diff(Model):
    added: list[DiffItem]
    removed: list[DiffItem]
    changed: list[DiffItem]


# ------------------------------------------------------------------ access control
class TokenRequest(Strict):
    service: str = Field(description="who uses the token: recorded as updated_by and in the audit log; not root or "
                         "config-file", pattern=POLICY_NAME_PATTERN)  # fmt: skip
    policies: list[str] = Field(default_factory=list, max_length=64,
                                json_schema_extra={"items": {"type": "string", "pattern": POLICY_NAME_PATTERN}})  # fmt: skip
    ttl_seconds: int | None = Field(None, ge=1, le=10 * 365 * 24 * 3600, description="default 30 days")


class TokenInfo(Model):
    id: str
    service: str
    policies: list[str]
    expires_at: str | None = Field(json_schema_extra={"format": TIME_FORMAT})


class TokenCreated(TokenInfo):
    token: str | None = Field(None, description="shown once; absent from an Idempotency-Key replay")


class TokenSelf(TokenInfo):
    root: bool | None = None


class TokenList(Model):
    tokens: list[TokenInfo]


class ExplainRequest(Strict):
    capability: Capability | None = "read"
    key: str | None = None
    namespace: str | None = None
    env: str | None = None
    token_id: str | None = None
    service: str | None = None


class Explanation(Model):
    allowed: bool
    rule: dict[str, Any] | None
    token_id: str | None = None


RULE_PATH_PATTERN = r"^(\*|[A-Za-z0-9_-]{1,64})(\.(\*|[A-Za-z0-9_-]{1,64})){0,31}$"
NAME_OR_ANY: JsonDict = {"items": {"type": "string", "pattern": r"^(\*|[a-z0-9][a-z0-9-]{0,62})$"}}


class Rule(Strict):
    path: str = Field(description="an exact key, `prefix.*`, `*`, or `*` as a whole middle segment",
                      pattern=RULE_PATH_PATTERN, max_length=256)  # fmt: skip
    capabilities: list[Capability] = Field(min_length=1)
    effect: Literal["allow", "deny"] = "allow"
    namespaces: list[str] = Field(default_factory=lambda: ["*"], json_schema_extra=NAME_OR_ANY)
    envs: list[str] = Field(default_factory=lambda: ["*"], json_schema_extra=NAME_OR_ANY)


class PolicyRequest(Strict):
    rules: list[Rule] = Field(max_length=1000)


class Policy(Model):
    name: str
    rules: list[Rule]
    version: int | None = None


class PolicyList(Model):
    policies: list[Policy]


# ------------------------------------------------------------------ audit
class AuditRecord(Model):
    id: str
    ts: str = Field(json_schema_extra={"format": TIME_FORMAT})
    request_id: str
    service: str | None
    token_id: str | None
    action: str
    namespace: str | None
    env: str | None
    key: str | None
    version: int | None
    outcome: Literal["allowed", "denied", "not_found", "error", "unauthenticated", "attempt"]
    status: int
    target: str | None = None
    client: str | None = None
    phase: str | None = None
    hash: str | None = None


class AuditList(Model):
    entries: list[AuditRecord]


# ------------------------------------------------------------------ watching and health
class WatchEvent(Model):
    revision: int
    key: str
    version: int
    action: Literal["create", "update", "delete", "rollback"]
    namespace: str
    env: str
    secret: bool
    value: Any = Field(None, description="plain keys' new value (absent for deletions); never on a secret key")


class WatchResult(Model):
    revision: int
    events: list[WatchEvent]


class Health(Model):
    status: Literal["ok"]
    backend: Literal["local", "aws"]
    revision: int


class Ready(Model):
    status: Literal["ready"]
