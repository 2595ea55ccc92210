"""The settings and the request-building and result-reading that ``Client`` and ``AsyncClient`` share.

Each public call is described once here (``_*_call`` builds the :class:`Call`, ``_*_result`` reads the answer);
the two clients differ only in how they send a call (threads and ``httpx.Client`` or asyncio and
``httpx.AsyncClient``) and in ``await``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tenacity import RetryCallState, wait_random_exponential

from tessera.client.sdk._http import Answer, Call, NodeRing, check_name, key_path, normalise_endpoints
from tessera.client.sdk.errors import ConfigurationError, NodeFailure, NotFound, Unavailable, WriteOutcomeUnknown
from tessera.client.sdk.store import LastKnownGood, ReadCache
from tessera.client.sdk.types import (
    AuditRecord,
    DeleteResult,
    Diff,
    DiffItem,
    Entry,
    EnvInfo,
    Event,
    Explanation,
    Health,
    ImportResult,
    KeyInfo,
    Layer,
    Policy,
    PromoteResult,
    RollbackResult,
    TokenInfo,
    Version,
    WriteResult,
)

MISSING: Any = object()
USER_AGENT = "tessera-sdk (python)"
TOKEN_ENV = "TESSERA_TOKEN"


class RoundFailed(Exception):
    """Every node failed this round; tenacity waits (jittered, or the server's Retry-After) and tries again."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("every node failed this round")
        self.retry_after = retry_after


def patterns_of(pattern: str | Sequence[str]) -> list[str]:
    """Key patterns from ``"a.*,b"`` or ``["a.*", "b"]``."""
    items = pattern.split(",") if isinstance(pattern, str) else list(pattern)
    cleaned = [p.strip() for p in items if isinstance(p, str) and p.strip()]
    if not cleaned:
        raise ConfigurationError("watch needs at least one key pattern, e.g. 'database.*' or '*'")
    return cleaned


class ClientBase:
    """Settings, node ring, caches and call descriptions (no I/O here)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        token: str | None = None,
        *,
        namespace: str = "default",
        env: str = "default",
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        cache_ttl: float = 0.0,
        last_known_good: bool | str | os.PathLike[str] = True,
        idempotency_keys: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = normalise_endpoints(endpoints)
        self.namespace = check_name("namespace", namespace)
        self.env = check_name("env", env)
        if not timeout or timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        if retries < 0:
            raise ConfigurationError("retries must be 0 or more")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.idempotency_keys = idempotency_keys
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._token = token
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._ring = NodeRing(self.endpoints)
        self._cache = ReadCache(cache_ttl)
        if last_known_good is False:
            self._lkg: LastKnownGood | None = None
        elif last_known_good is True:
            self._lkg = LastKnownGood()
        else:
            self._lkg = LastKnownGood(Path(last_known_good))
        self._jitter = wait_random_exponential(multiplier=backoff, max=max_backoff)

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}({list(self.endpoints)!r}, namespace={self.namespace!r}, env={self.env!r})"

    # ------------------------------------------------------------------ retry policy
    @property
    def _rounds(self) -> int:
        return self.retries + 1

    def _wait(self, state: RetryCallState) -> float:
        jitter = float(self._jitter(state))
        failed = state.outcome.exception() if state.outcome else None
        return max(jitter, getattr(failed, "retry_after", None) or 0.0)

    def _unknown_outcome(self, call: Call, failures: list[NodeFailure]) -> WriteOutcomeUnknown:
        last = failures[-1]
        return WriteOutcomeUnknown(
            failures,
            message=(f"{call.describe()} reached {last.node}, which then failed ({last.reason}): the write may or may "
                     "not have been applied, and it was not resent because it has neither expected_version nor an "
                     "Idempotency-Key (idempotency_keys=False); read the key to find out"),
            request_id=call.request_id,
        )

    def _unavailable(self, call: Call, failures: list[NodeFailure]) -> Unavailable:
        return Unavailable(failures, request_id=call.request_id)

    # ------------------------------------------------------------------ scope and calls
    def _scope(self, namespace: str | None, env: str | None) -> tuple[str, str]:
        ns = self.namespace if namespace is None else check_name("namespace", namespace)
        en = self.env if env is None else check_name("env", env)
        return ns, en

    @staticmethod
    def _params(scope: tuple[str, str], **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"namespace": scope[0], "env": scope[1]}
        params.update({k: v for k, v in extra.items() if v is not None})
        return params

    def _write(self, method: str, path: str, params: dict[str, Any], body: Any, *, expect: tuple[str, ...],
               compare_and_set: bool = False) -> Call:
        """A write call. It may be resent to another node after a failure that may have applied it only when that
        is safe: compare-and-set (a second apply is refused) or an Idempotency-Key (a repeat is answered from the
        first). The key is fresh per call and the same on every retry of it."""
        key = str(uuid.uuid4()) if self.idempotency_keys else None
        return Call(method, path, params, body, expect=expect, resend_safe=compare_and_set or key is not None,
                    idempotency_key=key)

    def _get_call(self, key: str, version: int | None, scope: tuple[str, str]) -> Call:
        return Call("GET", key_path("/config", key), self._params(scope, version=version), expect=("key", "value"))

    def _put_call(self, key: str, value: Any, secret: bool | None, expected_version: int | None, scope: tuple[str, str]) -> Call:
        body: dict[str, Any] = {"value": value}
        if secret is not None:
            body["secret"] = secret
        if expected_version is not None:
            body["expected_version"] = expected_version
        return self._write("PUT", key_path("/config", key), self._params(scope), body, expect=("key", "version"),
                           compare_and_set=expected_version is not None)

    def _delete_call(self, key: str, expected_version: int | None, scope: tuple[str, str]) -> Call:
        params = self._params(scope, expected_version=expected_version)
        return self._write("DELETE", key_path("/config", key), params, None, expect=("key", "version"),
                           compare_and_set=expected_version is not None)

    def _history_call(self, key: str, limit: int | None, before: int | None, scope: tuple[str, str]) -> Call:
        return Call("GET", key_path("/config/history", key), self._params(scope, limit=limit, before=before),
                    expect=("versions",))

    def _rollback_call(self, key: str, version: int, scope: tuple[str, str]) -> Call:
        return self._write("POST", key_path("/config/rollback", key), self._params(scope, version=version), None,
                           expect=("key", "version"))

    def _list_call(self, prefix: str | None, page_size: int | None, after: str | None, scope: tuple[str, str]) -> Call:
        return Call("GET", "/config", self._params(scope, prefix=prefix, limit=page_size, after=after), expect=("keys",))

    def _export_call(self, fmt: str, prefix: str | None, scope: tuple[str, str]) -> Call:
        if fmt not in ("json", "yaml", "dotenv"):
            raise ConfigurationError("export format must be json, yaml or dotenv")
        return Call("GET", "/config/export", self._params(scope, format=fmt, prefix=prefix), text=True)

    def _import_call(self, values: Mapping[str, Any] | None, content: str | None, fmt: str | None,
                     secrets: Sequence[str], scope: tuple[str, str]) -> Call:
        if (values is None) == (content is None):
            raise ConfigurationError("import takes either values (a mapping) or content (text with format=...)")
        body: dict[str, Any] = {"secrets": list(secrets)}
        if values is not None:
            body["values"] = dict(values)
        else:
            body.update(content=content, format=fmt or "json")
        return self._write("POST", "/config/import", self._params(scope), body, expect=("created", "updated", "unchanged"))

    def _promote_call(self, from_env: str, to_env: str, expected: Mapping[str, int], keys: Sequence[str] | None,
                      prefix: str | None, namespace: str | None) -> Call:
        ns = self.namespace if namespace is None else check_name("namespace", namespace)
        params = {"from": check_name("env", from_env), "to": check_name("env", to_env), "namespace": ns}
        if prefix is not None:
            params["prefix"] = prefix
        body: dict[str, Any] = {"expected": dict(expected)}
        if keys is not None:
            body["keys"] = list(keys)
        # Promote carries `expected` versions (compare-and-set for every key), so it is resend-safe even without a key.
        return self._write("POST", "/config/promote", params, body, expect=("promoted",), compare_and_set=True)

    def _diff_call(self, from_env: str, to_env: str, prefix: str | None, namespace: str | None) -> Call:
        ns = self.namespace if namespace is None else check_name("namespace", namespace)
        params = {"from": check_name("env", from_env), "to": check_name("env", to_env), "namespace": ns}
        if prefix is not None:
            params["prefix"] = prefix
        return Call("GET", "/diff", params, expect=("added", "removed", "changed"))

    def _explain_call(self, key: str, scope: tuple[str, str]) -> Call:
        return Call("GET", key_path("/config", key), self._params(scope, explain="true"), expect=("key", "explain"))

    def _envs_call(self) -> Call:
        return Call("GET", "/envs", expect=("envs",))

    def _put_env_call(self, name: str, parent: str | None) -> Call:
        body = {"parent": check_name("env", parent)} if parent is not None else {}
        # Re-parenting to the same parent twice is the same state: a resend is harmless.
        return self._write("PUT", f"/envs/{check_name('env', name)}", {}, body, expect=("name",), compare_and_set=True)

    def _create_token_call(self, service: str, policies: Sequence[str], ttl_seconds: int | None) -> Call:
        body: dict[str, Any] = {"service": service, "policies": list(policies)}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return self._write("POST", "/auth/tokens", {}, body, expect=("id",))

    def _tokens_call(self) -> Call:
        return Call("GET", "/auth/tokens", expect=("tokens",))

    def _revoke_token_call(self, token_id: str) -> Call:
        return self._write("DELETE", key_path("/auth/tokens", token_id), {}, None, expect=(), compare_and_set=True)

    def _self_call(self) -> Call:
        return Call("GET", "/auth/self", expect=("id", "service"))

    def _put_policy_call(self, name: str, rules: Sequence[Mapping[str, Any]]) -> Call:
        return self._write("PUT", key_path("/policies", name), {}, {"rules": [dict(rule) for rule in rules]},
                           expect=("name",), compare_and_set=True)

    def _policy_call(self, name: str) -> Call:
        return Call("GET", key_path("/policies", name), expect=("name", "rules"))

    def _policies_call(self) -> Call:
        return Call("GET", "/policies", expect=("policies",))

    def _delete_policy_call(self, name: str) -> Call:
        return self._write("DELETE", key_path("/policies", name), {}, None, expect=(), compare_and_set=True)

    def _audit_call(self, key: str | None, service: str | None, since: str | None, limit: int | None) -> Call:
        params = {k: v for k, v in {"key": key, "service": service, "since": since, "limit": limit}.items() if v is not None}
        return Call("GET", "/audit", params, expect=("entries",))

    def _health_call(self) -> Call:
        return Call("GET", "/health", expect=("status", "revision"))

    def _watch_call(self, patterns: list[str], since: int | None, poll_timeout: float, scope: tuple[str, str]) -> Call:
        call = Call("GET", "/watch", self._params(scope, keys=",".join(patterns), since=since, timeout=poll_timeout),
                    expect=("revision", "events"))
        call.timeout = poll_timeout + self.timeout
        return call

    # ------------------------------------------------------------------ results
    def _read_result(self, answer: Answer, scope: tuple[str, str], version: int | None) -> Entry:
        entry = Entry._from_body(answer.body)
        if version is None:
            self._cache.put((*scope, entry.key), entry)
            if self._lkg is not None:
                self._lkg.remember(entry)
        return entry

    def _read_missing(self, scope: tuple[str, str], key: str) -> None:
        if self._lkg is not None:
            self._lkg.forget(scope[0], scope[1], key)

    def _stale(self, scope: tuple[str, str], key: str) -> Entry | None:
        return self._lkg.get(scope[0], scope[1], key) if self._lkg is not None else None

    def _wrote(self, scope: tuple[str, str], key: str) -> None:
        self._cache.invalidate(scope[0], key)

    @staticmethod
    def _write_result(answer: Answer) -> WriteResult:
        return WriteResult._from_body(answer.body, status=answer.status, replayed=answer.replayed)

    @staticmethod
    def _delete_result(answer: Answer) -> DeleteResult:
        body = answer.body
        return DeleteResult(str(body["key"]), int(body["version"]), body.get("revision"), answer.replayed)

    @staticmethod
    def _rollback_result(answer: Answer) -> RollbackResult:
        body = answer.body
        return RollbackResult(str(body["key"]), int(body["version"]), int(body.get("rolled_back_from", 0)),
                              body.get("revision"), answer.replayed)

    @staticmethod
    def _history_result(answer: Answer) -> list[Version]:
        return [Version._from_body(item) for item in answer.body["versions"]]

    @staticmethod
    def _list_page(answer: Answer, seen: set[str]) -> tuple[list[KeyInfo], str | None]:
        """One page of a listing and the cursor of the next (``None``: last page, or a server without paging)."""
        body = answer.body
        if not isinstance(body["keys"], list):
            raise ConfigurationError(f"GET /config on {answer.node} answered 'keys' that is not a list")
        cursor = body.get("next")
        if cursor is not None:
            cursor = str(cursor)
            if cursor in seen:
                raise ConfigurationError(f"GET /config on {answer.node} repeated the page cursor {cursor!r}")
            seen.add(cursor)
        return [KeyInfo._from_body(item) for item in body["keys"]], cursor or None

    @staticmethod
    def _import_result(answer: Answer) -> ImportResult:
        body = answer.body
        return ImportResult(int(body["created"]), int(body["updated"]), int(body["unchanged"]), list(body.get("errors") or []),
                            answer.replayed)

    @staticmethod
    def _promote_result(answer: Answer) -> PromoteResult:
        body = answer.body
        promoted = [(str(item["key"]), int(item["version"])) for item in body["promoted"]]
        return PromoteResult(promoted, int(body.get("unchanged", 0)), answer.replayed)

    @staticmethod
    def _diff_result(answer: Answer) -> Diff:
        body = answer.body
        return Diff(*([DiffItem._from_body(item) for item in body[part] or []] for part in ("added", "removed", "changed")))

    @staticmethod
    def _explain_result(answer: Answer) -> Explanation:
        chain = [Layer._from_body(item) for item in (answer.body.get("explain") or {}).get("chain") or []]
        return Explanation(str(answer.body["key"]), chain, Entry._from_body(answer.body))

    @staticmethod
    def _explain_missing(key: str, exc: NotFound) -> Explanation:
        """A ``404`` of an explained read carries the chain too (``error.explain``); nothing resolved."""
        explain = exc.details.get("explain")
        if not isinstance(explain, dict):
            raise exc
        return Explanation(key, [Layer._from_body(item) for item in explain.get("chain") or []], None)

    @staticmethod
    def _envs_result(answer: Answer) -> list[EnvInfo]:
        return [EnvInfo(str(item["name"]), item.get("parent")) for item in answer.body["envs"]]

    @staticmethod
    def _env_result(answer: Answer) -> EnvInfo:
        return EnvInfo(str(answer.body["name"]), answer.body.get("parent"))

    @staticmethod
    def _token_result(answer: Answer) -> TokenInfo:
        return TokenInfo._from_body(answer.body)

    @staticmethod
    def _tokens_result(answer: Answer) -> list[TokenInfo]:
        return [TokenInfo._from_body(item) for item in answer.body["tokens"]]

    @staticmethod
    def _policy_result(answer: Answer) -> Policy:
        return Policy(str(answer.body["name"]), list(answer.body.get("rules") or []))

    @staticmethod
    def _policies_result(answer: Answer) -> list[Policy]:
        return [Policy(str(item["name"]), list(item.get("rules") or [])) for item in answer.body["policies"]]

    @staticmethod
    def _audit_result(answer: Answer) -> list[AuditRecord]:
        return [AuditRecord._from_body(item) for item in answer.body["entries"]]

    @staticmethod
    def _health_result(answer: Answer) -> Health:
        body = answer.body
        version = body.get("version")
        return Health(str(body["status"]), str(body.get("backend", "")), int(body["revision"]),
                      version if isinstance(version, str) else None)

    @staticmethod
    def _events(answer: Answer) -> tuple[int, list[Event]]:
        body = answer.body
        if not isinstance(body["events"], list) or not isinstance(body["revision"], int):
            raise ConfigurationError(f"GET /watch on {answer.node} answered a body that is not Tessera's")
        return body["revision"], [Event._from_body(item) for item in body["events"]]
