"""The one composition root: settings → stores, key service, access control, audit log, config service.

The server (``tessera serve``, its workers), the Lambda handlers, the CLI's admin commands and the benchmarks all
open stores through :func:`build` (or its parts: :func:`build_store`, :func:`build_keys`,
:func:`build_access_stores`); nothing else builds adapters, and tests swap fakes in through its arguments.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tessera.core.access_model import AuditEntry
from tessera.core.access_service import AccessService
from tessera.core.audit import MAX_BATCH, AuditLog, DisabledAuditLog, entry_to_log
from tessera.core.auth import Authenticator
from tessera.core.backends.keyring import LocalKeyring
from tessera.core.crypto import CachingKeyService
from tessera.core.damping import FailureDamper
from tessera.core.errors import Unavailable
from tessera.core.policy import PolicyAuthorizer
from tessera.core.ports import IdempotencyStore, KeyService, SessionStore, VersionStore
from tessera.core.service import ConfigService
from tessera.core.settings import Settings
from tessera.core.watch import POLL_INTERVAL, FeedPoller

logger = logging.getLogger("tessera")
T = TypeVar("T")


@dataclass
class AccessParts:
    stores: Any  # TokenStore + PolicyStore + AuditStore
    authorizer: PolicyAuthorizer
    audit_log: AuditLog | DisabledAuditLog
    damper: FailureDamper
    access: AccessService | None = None

    def bind(self, authenticator: Authenticator) -> AccessService:
        self.access = AccessService(self.stores, self.stores, self.stores, self.authorizer, authenticator)
        return self.access

    def close(self) -> None:
        self.audit_log.close()
        close_stores = getattr(self.stores, "close", None)
        if close_stores is not None:  # the embedded backend's request log (its file, its slot)
            close_stores()


def build_access_stores(settings: Settings, store: VersionStore) -> Any:
    """The token, policy and audit stores of the configured backend (one object implements all three)."""
    from tessera.core.backends.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from tessera.core.backends.sqlite_access import SQLiteAccessStore

        return SQLiteAccessStore(store)
    if settings.backend == "aws" or getattr(store, "backend_name", None) == "aws":  # by the store too: never memory for it
        try:
            from tessera.core.backends.aws_access import DynamoAccessStore  # only when used
        except ImportError as exc:
            # Fail closed: tokens, policies and the audit log in memory would let a node run unaudited.
            raise Unavailable(
                f"the aws backend cannot load its token, policy and audit stores ({exc.name or exc}); not starting"
            ) from exc
        return DynamoAccessStore.for_store(store)  # type: ignore[arg-type]  # the aws backend's store is an AwsStore
    from tessera.core.backends.memory_access import MemoryAccessStore

    logger.warning("no durable token/policy/audit storage for the %s store: using memory (not for production)", type(store).__name__)
    return MemoryAccessStore()


def audit_logger() -> Any:
    """Powertools' JSON Logger for the audit line (imported lazily: tests and the CLI may never need it)."""
    from aws_lambda_powertools import Logger

    logger = Logger(service="tessera", logger_name="tessera.audit")

    def emit(entry: AuditEntry) -> None:
        logger.info("audit", extra={"audit": entry_to_log(entry)})

    return emit


def build_access(settings: Settings, store: VersionStore, stores: Any = None, emit: Any = "default") -> AccessParts:
    stores = stores if stores is not None else build_access_stores(settings, store)
    chain = getattr(stores, "chain_name", "main")
    if settings.audit_enabled:
        audit_log: AuditLog | DisabledAuditLog = AuditLog(
            stores,
            chain=chain,
            emit=(audit_logger() if settings.audit_stdout else None) if emit == "default" else emit,
            max_batch=getattr(stores, "max_batch", MAX_BATCH),  # DynamoDB: 100 items per transaction
            retention_seconds=settings.audit_retention_days * 86400,
        )
    else:
        audit_log = DisabledAuditLog()
    return AccessParts(
        stores=stores,
        authorizer=PolicyAuthorizer(stores),
        audit_log=audit_log,
        damper=FailureDamper(settings.auth_failure_limit, settings.auth_failure_window, settings.auth_penalty),
    )

BLOCKING_THREADS = 32
READY_PROBE_EVERY = 1.0  # seconds a /ready store probe's answer is reused (load balancers probe often)  # writes (each waits for an fsync) and, on remote stores, every store call


@dataclass
class Container:
    settings: Settings
    store: VersionStore
    keys: KeyService
    service: ConfigService
    authenticator: Authenticator
    access: AccessParts
    idempotency: IdempotencyStore | None = None  # None: the store keeps no Idempotency-Key claims
    sessions: SessionStore | None = None  # the console's sessions (None: no shared table; the console keeps them in memory)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="tessera"))
    feed_poller: FeedPoller = field(init=False)
    _probe: Any = field(default=None, init=False, repr=False)  # the store probe running or last run (/ready)
    _probed_at: float = field(default=float("-inf"), init=False, repr=False)

    def __post_init__(self) -> None:
        # Other processes' commits (--workers, other nodes) reach this process's watchers within one interval:
        # the embedded store's revision is a local read (every 20 ms costs nothing), a remote one a request.
        self.feed_poller = FeedPoller(self.service, 0.02 if self.inline_reads else POLL_INTERVAL)

    @property
    def inline_reads(self) -> bool:
        """Reads of the embedded store are memory-speed lookups (and the read cache answers most): they run on the
        event loop. A remote store's reads wait on the network, so they go to threads."""
        return self.store.backend_name == "local"

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read: inline on the event loop for the embedded store, in a thread otherwise."""
        if self.inline_reads:
            return fn(*args)
        return await self.blocking(fn, *args)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run what may wait on a disk flush or the network (a commit, an import) in a thread, in the caller's
        context (the request's deadline, ``core/deadline.py``, goes with it)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(context.run, fn, *args))

    def not_ready_reason(self) -> str | None:
        """Why this node cannot serve right now (the audit log or the store cannot take writes), or None."""
        audit_log = self.access.audit_log
        if not audit_log.ready:
            return audit_log.failure or "the audit log cannot be written"
        return None

    async def ready_reason(self) -> str | None:
        """:meth:`not_ready_reason`, then the store's write probe (at most one every ``READY_PROBE_EVERY`` seconds,
        run in a thread, shared by every ``/ready`` meanwhile): why the node cannot take writes, or None."""
        reason = self.not_ready_reason()
        probe = getattr(self.store, "write_probe", None)
        if reason is not None or probe is None:
            return reason
        loop = asyncio.get_running_loop()
        task = self._probe
        stale = task is None or task.get_loop() is not loop or (task.done() and loop.time() - self._probed_at >= READY_PROBE_EVERY)
        if stale:
            self._probed_at = loop.time()
            task = self._probe = loop.create_task(self.blocking(probe))
        result: str | None = await asyncio.shield(task)
        return result

    def close(self) -> None:
        self.access.close()  # flushes the audit writer before the store goes
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def build_local_keyring(settings: Settings, store: VersionStore | None = None) -> LocalKeyring:
    if settings.master_key:
        return LocalKeyring.from_env_value(settings.master_key)
    path = Path(settings.data_dir) / "keyring.json"
    # A missing keyring next to sealed values is a lost keyring, not a first start: refuse to make a new one.
    sealed = getattr(store, "iter_sealed_versions", None)
    first_start = path.exists() or sealed is None or not sealed(None, 1)
    return LocalKeyring.load_or_create(path, create=first_start)


def build_store(settings: Settings) -> VersionStore:
    if settings.backend == "aws":
        from tessera.core.backends.aws import (
            AwsStore,  # imported only when used: keeps local starts light
        )

        return AwsStore.from_settings(settings)
    from tessera.core.backends.sqlite import SQLiteStore

    data_dir = Path(settings.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like every file in it
    return SQLiteStore(data_dir / "tessera.db", change_log_retention=settings.change_log_retention)


def build_keys(settings: Settings, store: VersionStore | None = None) -> KeyService:
    if settings.backend == "aws":
        from tessera.core.backends.aws import KmsKeyService
        from tessera.core.rotation import ACTIVE_KMS_KEY_META

        # New writes follow the KMS key `tessera keys rotate --kms-key-id` recorded in the store's meta.
        source = functools.partial(store.get_meta, ACTIVE_KMS_KEY_META) if store is not None else None
        return CachingKeyService(KmsKeyService.from_settings(settings, active_key_source=source))
    return CachingKeyService(build_local_keyring(settings, store))


def build(settings: Settings | None = None, *, store: VersionStore | None = None, keys: KeyService | None = None) -> Container:
    settings = settings or Settings.from_env()
    store = store or build_store(settings)
    keys = keys or build_keys(settings, store)
    access = build_access(settings, store)
    service = ConfigService(store, keys, authorizer=access.authorizer, value_cache_entries=settings.value_cache_entries)
    service.import_seconds = settings.import_deadline
    authenticator = Authenticator(store, tokens=access.stores)
    access.bind(authenticator)
    if settings.root_token:
        authenticator.set_root_token(settings.root_token)
    return Container(settings, store, keys, service, authenticator, access, build_idempotency(store), build_sessions(store))


def build_idempotency(store: VersionStore) -> IdempotencyStore | None:
    from tessera.core.backends.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from tessera.core.backends.sqlite_idempotency import SQLiteIdempotencyStore

        return SQLiteIdempotencyStore(store)
    if store.backend_name == "aws":
        from tessera.core.backends.aws.idempotency import DynamoIdempotencyStore

        return DynamoIdempotencyStore(store.db)  # type: ignore[attr-defined]
    return None


def build_sessions(store: VersionStore) -> SessionStore | None:
    from tessera.core.backends.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from tessera.core.backends.sqlite_sessions import SQLiteSessionStore

        return SQLiteSessionStore(store)
    if store.backend_name == "aws":
        from tessera.core.backends.aws.sessions import DynamoSessionStore

        return DynamoSessionStore(store.db)  # type: ignore[attr-defined]
    return None
