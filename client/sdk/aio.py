"""``tessera.AsyncClient``: the asyncio client, the same surface as ``Client`` with ``await``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from tessera.client.sdk._base import MISSING, ClientBase, RoundFailed
from tessera.client.sdk._http import Answer, Call, NodeFailed, interpret, transport_failure
from tessera.client.sdk.errors import NodeFailure, NotFound, TesseraError, Unavailable
from tessera.client.sdk.store import AsyncSingleFlight
from tessera.client.sdk.types import (
    AuditRecord,
    DeleteResult,
    Diff,
    Entry,
    EnvInfo,
    Event,
    Explanation,
    Health,
    ImportResult,
    KeyInfo,
    Policy,
    PromoteResult,
    RollbackResult,
    TokenInfo,
    Version,
    WriteResult,
)
from tessera.client.sdk.watch import AsyncWatchHandle, start_watch


class AsyncClient(ClientBase):
    """The asyncio client: the same calls, options and errors as :class:`tessera.Client`, awaited.

    Use one per event loop (it holds an ``httpx.AsyncClient``); ``async with`` closes it.

    Example::

        async with AsyncClient("http://127.0.0.1:8200", token) as client:
            host = await client.value("database.host")
            await client.put("features.checkout", True)
    """

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(endpoints, token, namespace=namespace, env=env, timeout=timeout, retries=retries, backoff=backoff,
                         max_backoff=max_backoff, cache_ttl=cache_ttl, last_known_good=last_known_good,
                         idempotency_keys=idempotency_keys, headers=headers)
        self._transport = transport
        self._http = httpx.AsyncClient(headers=self._headers, timeout=self.timeout, transport=transport, follow_redirects=False)
        self._flight = AsyncSingleFlight()
        self._watches: list[AsyncWatchHandle] = []

    # ------------------------------------------------------------------ lifecycle
    async def aclose(self) -> None:
        """Stop this client's watches and close its connections.

        Example::

            await client.aclose()
        """
        for handle in list(self._watches):
            await handle.stop()
        await self._http.aclose()

    async def close(self) -> None:
        """The same as :meth:`aclose` (the name the sync client uses).

        Example::

            await client.close()
        """
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ sending, with failover
    async def _send(self, call: Call) -> Answer:
        failures: list[NodeFailure] = []

        async def one_round() -> Answer:
            retry_after: float | None = None
            for node in self._ring.order():
                timeout = call.timeout or self.timeout
                try:
                    response = await self._http.request(call.method, node + call.path, params=call.params, json=call.body,
                                                  headers=call.headers(), timeout=timeout)
                    answer = interpret(call, node, response)
                except httpx.TransportError as exc:
                    failed = transport_failure(node, exc, timeout)
                except NodeFailed as exc:
                    failed = exc
                else:
                    self._ring.succeeded(node)
                    return answer
                failures.append(failed.failure)
                self._ring.failed(node)
                if failed.failure.maybe_applied and not call.resend_safe:
                    raise self._unknown_outcome(call, failures)
                retry_after = max(retry_after or 0.0, failed.retry_after or 0.0) or None
            raise RoundFailed(retry_after)

        retrying = AsyncRetrying(stop=stop_after_attempt(self._rounds), wait=self._wait,
                            retry=retry_if_exception_type(RoundFailed), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await one_round()
        except RoundFailed:
            raise self._unavailable(call, failures) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ reading
    async def get(self, key: str, *, version: int | None = None, namespace: str | None = None, env: str | None = None) -> Entry:
        """The key's value as an :class:`Entry` (a subtree's nested object when the key has descendants).

        Concurrent gets of one key share one request; with ``cache_ttl`` a recent read is served from memory. When
        no node answers, the last value read is returned with ``stale=True`` (if there is one), else ``Unavailable``.
        ``version=N`` reads that historical version (never cached nor served stale).

        Example::

            entry = await client.get("database.host")
            entry.value, entry.version, entry.stale    # ('db.internal', 3, False)
        """
        scope = self._scope(namespace, env)
        if version is None:
            cached = self._cache.get((*scope, key))
            if cached is not None:
                return cached

        async def fetch() -> Entry:
            try:
                answer = await self._send(self._get_call(key, version, scope))
            except Unavailable:
                stale = self._stale(scope, key) if version is None else None
                if stale is None:
                    raise
                return stale
            except NotFound:
                if version is None:
                    self._read_missing(scope, key)
                raise
            return self._read_result(answer, scope, version)

        return await self._flight.do((*scope, key, version), fetch)

    async def value(self, key: str, default: Any = MISSING, *, namespace: str | None = None, env: str | None = None) -> Any:
        """The key's value alone. A missing key returns ``default`` when one is given, else raises ``NotFound``;
        every other failure raises (a wrong URL is a ``ConfigurationError``, never a default).

        Example::

            port = await client.value("database.port", default=5432)
        """
        try:
            return (await self.get(key, namespace=namespace, env=env)).value
        except NotFound:
            if default is MISSING:
                raise
            return default

    async def history(self, key: str, *, limit: int | None = None, before: int | None = None, namespace: str | None = None,
                env: str | None = None) -> list[Version]:
        """The key's versions, newest first (``limit`` of them, below version ``before`` when given).

        Example::

            for v in await client.history("database.host", limit=5):
                print(v.version, v.action, v.updated_by)
        """
        scope = self._scope(namespace, env)
        return self._history_result(await self._send(self._history_call(key, limit, before, scope)))

    async def export(self, format: str = "json", prefix: str | None = None, *, namespace: str | None = None,
               env: str | None = None) -> str:
        """The resolved config as a file body: ``json``, ``yaml`` or ``dotenv`` (secrets where the token may read).

        Example::

            open(".env", "w").write(await client.export("dotenv", prefix="database"))
        """
        scope = self._scope(namespace, env)
        return str((await self._send(self._export_call(format, prefix, scope))).body)

    async def health(self) -> Health:
        """``GET /health`` on the first node that answers (no token needed); checks it is Tessera.

        Example::

            (await client.health()).revision
        """
        return self._health_result(await self._send(self._health_call()))

    # ------------------------------------------------------------------ writing
    async def put(self, key: str, value: Any, *, secret: bool | None = None, expected_version: int | None = None,
            namespace: str | None = None, env: str | None = None) -> WriteResult:
        """Write a value (any JSON value except an object). ``expected_version``: compare-and-set (0: the key must
        have no live value), else ``VersionConflict`` with ``current_version``. ``secret`` is fixed at creation.

        Example::

            result = await client.put("features.checkout", True, expected_version=2)
            result.version   # 3
        """
        scope = self._scope(namespace, env)
        answer = await self._send(self._put_call(key, value, secret, expected_version, scope))
        self._wrote(scope, key)
        return self._write_result(answer)

    async def delete(self, key: str, *, expected_version: int | None = None, namespace: str | None = None,
               env: str | None = None) -> DeleteResult:
        """Delete a key (a tombstone version; older versions stay readable). ``NotFound`` if it has no value.

        Example::

            (await client.delete("features.old_flag")).version
        """
        scope = self._scope(namespace, env)
        answer = await self._send(self._delete_call(key, expected_version, scope))
        self._wrote(scope, key)
        self._read_missing(scope, key)
        return self._delete_result(answer)

    async def rollback(self, key: str, version: int, *, namespace: str | None = None, env: str | None = None) -> RollbackResult:
        """Make a new version whose value is ``version``'s.

        Example::

            (await client.rollback("database.host", 1)).rolled_back_from   # 1
        """
        scope = self._scope(namespace, env)
        answer = await self._send(self._rollback_call(key, version, scope))
        self._wrote(scope, key)
        return self._rollback_result(answer)

    async def import_values(self, values: Mapping[str, Any] | None = None, *, content: str | None = None, format: str | None = None,
                      secrets: Sequence[str] = (), namespace: str | None = None, env: str | None = None) -> ImportResult:
        """Import a nested or dotted mapping, or ``content`` text in ``format`` (json, yaml, dotenv); each key
        commits on its own; ``secrets`` names keys to create as secrets.

        Example::

            (await client.import_values({"cache": {"ttl": 60}})).created   # 1
        """
        scope = self._scope(namespace, env)
        answer = await self._send(self._import_call(values, content, format, secrets, scope))
        self._cache.clear()
        return self._import_result(answer)

    async def promote(self, from_env: str, to_env: str, *, expected: Mapping[str, int], keys: Sequence[str] | None = None,
                prefix: str | None = None, namespace: str | None = None) -> PromoteResult:
        """Copy ``from_env``'s resolved values that differ into ``to_env``, all or nothing; ``expected`` maps every
        copied key to its version in ``to_env`` (0: none), as ``GET /diff`` reports in ``to_version``.

        Example::

            await client.promote("staging", "prod", expected={"features.checkout": 3})
        """
        answer = await self._send(self._promote_call(from_env, to_env, expected, keys, prefix, namespace))
        self._cache.clear()
        return self._promote_result(answer)

    # ------------------------------------------------------------------ environments, diff, explain
    async def diff(self, from_env: str, to_env: str, *, prefix: str | None = None, namespace: str | None = None) -> Diff:
        """Compare two environments' resolved values (secrets compared inside the server, shown without values).

        Example::

            diff = await client.diff("staging", "prod")
            [item.key for item in diff.changed], diff.expected()   # what promote's expected wants
        """
        return self._diff_result(await self._send(self._diff_call(from_env, to_env, prefix, namespace)))

    async def explain(self, key: str, *, namespace: str | None = None, env: str | None = None) -> Explanation:
        """Which environments a read of ``key`` walked, nearest first, and what each held (``value``, ``absent``,
        ``deleted``, ``hidden``); ``entry`` is what the read returned, ``None`` when nothing resolved.

        Example::

            [(layer.env, layer.state) for layer in (await client.explain("database.host", env="prod")).chain]
        """
        scope = self._scope(namespace, env)
        try:
            return self._explain_result(await self._send(self._explain_call(key, scope)))
        except NotFound as exc:
            return self._explain_missing(key, exc)

    async def envs(self) -> list[EnvInfo]:
        """Every environment with its parent (any valid token).

        Example::

            {env.name: env.parent for env in await client.envs()}   # {'default': None, 'prod': 'default'}
        """
        return self._envs_result(await self._send(self._envs_call()))

    async def put_env(self, name: str, parent: str | None = "default") -> EnvInfo:
        """Create or re-parent an environment (admin). A cycle is ``InvalidRequest``.

        Example::

            await client.put_env("prod", parent="staging")
        """
        return self._env_result(await self._send(self._put_env_call(name, parent)))

    # ------------------------------------------------------------------ tokens and policies (admin)
    async def create_token(self, service: str, policies: Sequence[str], *, ttl_seconds: int | None = None) -> TokenInfo:
        """Create a service token (admin). ``token`` on the result is the string, shown this once.

        Example::

            created = await client.create_token("billing", ["billing-read"], ttl_seconds=3600)
            created.token   # 'tsr_...'
        """
        return self._token_result(await self._send(self._create_token_call(service, policies, ttl_seconds)))

    async def tokens(self) -> list[TokenInfo]:
        """Every token's metadata (admin); never a token string."""
        return self._tokens_result(await self._send(self._tokens_call()))

    async def revoke_token(self, token_id: str) -> None:
        """Revoke a token by id (admin); effective on every node within a second."""
        await self._send(self._revoke_token_call(token_id))

    async def token_self(self) -> TokenInfo:
        """The calling token's id, service, policies and expiry (any valid token)."""
        return self._token_result(await self._send(self._self_call()))

    async def put_policy(self, name: str, rules: Sequence[Mapping[str, Any]]) -> Policy:
        """Create or replace a policy (admin).

        Example::

            await client.put_policy("billing-read", [{"path": "billing.*", "capabilities": ["read", "list"]}])
        """
        return self._policy_result(await self._send(self._put_policy_call(name, rules)))

    async def policy(self, name: str) -> Policy:
        """One policy (admin); ``NotFound`` when there is none of that name."""
        return self._policy_result(await self._send(self._policy_call(name)))

    async def policies(self) -> list[Policy]:
        """Every policy (admin)."""
        return self._policies_result(await self._send(self._policies_call()))

    async def delete_policy(self, name: str) -> None:
        """Delete a policy (admin)."""
        await self._send(self._delete_policy_call(name))

    async def audit(self, *, key: str | None = None, service: str | None = None, since: str | None = None,
              limit: int | None = None) -> list[AuditRecord]:
        """Audit records, newest first (admin): of one ``key`` or ``service``, after ``since`` (RFC 3339).

        Example::

            [(r.service, r.action, r.outcome) for r in await client.audit(service="billing", limit=5)]
        """
        return self._audit_result(await self._send(self._audit_call(key, service, since, limit)))

    # ------------------------------------------------------------------ watching
    async def watch(self, pattern: str | Sequence[str], callback: Callable[[Event], Any], *, since: int | None = None,
                    on_error: Callable[[BaseException], Any] | None = None, namespace: str | None = None,
                    env: str | None = None, poll_timeout: float = 25.0) -> AsyncWatchHandle:
        """Call ``callback(event)`` (a function or a coroutine function) in a task for every change to keys
        matching ``pattern`` after ``since`` (default: from now), in revision order, each once, across node
        failures. Errors reach ``on_error`` (which may be async too), as for :meth:`tessera.Client.watch`.

        Example::

            async def on_change(event):
                print(event.key, event.value)

            handle = await client.watch("features.*", on_change, on_error=print)
            ...
            await handle.stop()
        """
        scope = self._scope(namespace, env)
        state = start_watch(self, pattern, callback, since, on_error, poll_timeout, scope)
        own = AsyncClient(self.endpoints, self._token, namespace=self.namespace, env=self.env, timeout=self.timeout,
                          retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff, last_known_good=False,
                          idempotency_keys=self.idempotency_keys, transport=self._transport)
        own._cache = self._cache  # a resync clears the parent's read cache
        if state.cursor is None:
            try:
                state.advance((await own.health()).revision)  # pinned now: a change right after watch() is seen
            except TesseraError as exc:
                state.pending = exc  # handled (reported, retried or fatal) by the watch itself
        handle = AsyncWatchHandle(own, state, callback, on_error)._start()
        self._watches = [h for h in self._watches if h.alive] + [handle]
        return handle

    # ------------------------------------------------------------------ listing (last: `list` names a method here)
    async def list(self, prefix: str | None = None, *, namespace: str | None = None, env: str | None = None,
             page_size: int | None = None, limit: int | None = None) -> list[KeyInfo]:
        """Every key (metadata, never values) below ``prefix``, in key order, following the server's pages
        (the first ``limit`` keys when given).

        Example::

            [info.key for info in await client.list("database")]   # ['database.host', 'database.port']
        """
        scope = self._scope(namespace, env)
        keys: list[KeyInfo] = []
        seen: set[str] = set()
        cursor: str | None = None
        if limit is not None and page_size is None:
            page_size = max(1, min(limit, 10_000))
        while True:
            page, cursor = self._list_page(await self._send(self._list_call(prefix, page_size, cursor, scope)), seen)
            keys.extend(page)
            if limit is not None and len(keys) >= limit:
                return keys[:limit]
            if cursor is None:
                return keys
