"""Builds the access-control and audit parts for the composition root (``handlers/bootstrap.py``).

Options come from the environment (documented in ``docs/audit.md``):
``TESSERA_AUDIT=off`` turns the audit log off — for the benchmark baseline only, never in production;
``TESSERA_AUTH_FAILURE_LIMIT`` / ``TESSERA_AUTH_FAILURE_WINDOW`` / ``TESSERA_AUTH_PENALTY`` tune the damping.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.core.access_model import AuditEntry
from tessera.core.access_service import AccessService
from tessera.core.audit import MAX_BATCH, AuditLog, DisabledAuditLog, entry_to_log
from tessera.core.auth import Authenticator
from tessera.core.damping import FailureDamper
from tessera.core.errors import Unavailable
from tessera.core.policy import PolicyAuthorizer
from tessera.core.ports import VersionStore
from tessera.core.settings import Settings

logger = logging.getLogger("tessera")


@dataclass(frozen=True)
class AccessOptions:
    audit_enabled: bool = True
    # Each record also as a JSON log line on stdout: on Lambda (where stdout is CloudWatch Logs) by default,
    # elsewhere when asked (TESSERA_AUDIT_STDOUT=1); the audit log itself is the record either way.
    audit_stdout: bool = False
    failure_limit: int = 100
    failure_window: float = 60.0
    penalty_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccessOptions:
        env = os.environ if environ is None else environ
        stdout_default = "on" if env.get("AWS_LAMBDA_FUNCTION_NAME") else "off"
        return cls(
            audit_enabled=env.get("TESSERA_AUDIT", "on").lower() not in ("off", "0", "false", "no"),
            audit_stdout=env.get("TESSERA_AUDIT_STDOUT", stdout_default).lower() in ("on", "1", "true", "yes"),
            failure_limit=int(env.get("TESSERA_AUTH_FAILURE_LIMIT", "100")),
            failure_window=float(env.get("TESSERA_AUTH_FAILURE_WINDOW", "60")),
            penalty_seconds=float(env.get("TESSERA_AUTH_PENALTY", "30")),
        )


@dataclass
class AccessParts:
    stores: Any  # TokenStore + PolicyStore + AuditStore
    authorizer: PolicyAuthorizer
    audit_log: AuditLog | DisabledAuditLog
    damper: FailureDamper
    options: AccessOptions
    access: AccessService | None = None

    def bind(self, authenticator: Authenticator) -> AccessService:
        self.access = AccessService(self.stores, self.stores, self.stores, self.authorizer, authenticator)
        return self.access

    def close(self) -> None:
        self.audit_log.close()


def build_access_stores(settings: Settings, store: VersionStore) -> Any:
    """The token, policy and audit stores of the configured backend (one object implements all three)."""
    from tessera.core.backends.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from tessera.core.backends.sqlite_access import SQLiteAccessStore

        return SQLiteAccessStore(store)
    if settings.backend == "aws":
        try:
            from tessera.core.backends.aws_access import DynamoAccessStore  # only when used
        except ImportError as exc:
            # Fail closed: tokens, policies and the audit log in memory would let a node run unaudited.
            raise Unavailable(
                f"the aws backend cannot load its token, policy and audit stores ({exc.name or exc}); not starting"
            ) from exc
        return DynamoAccessStore.for_store(store)
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


def build_access(
    settings: Settings, store: VersionStore, options: AccessOptions | None = None, stores: Any = None, emit: Any = "default"
) -> AccessParts:
    options = options or AccessOptions.from_env()
    stores = stores if stores is not None else build_access_stores(settings, store)
    chain = getattr(stores, "chain_name", "main")
    if options.audit_enabled:
        audit_log: AuditLog | DisabledAuditLog = AuditLog(
            stores,
            chain=chain,
            emit=(audit_logger() if options.audit_stdout else None) if emit == "default" else emit,
            max_batch=getattr(stores, "max_batch", MAX_BATCH),  # DynamoDB: 100 items per transaction
            retention_seconds=settings.audit_retention_days * 86400,
        )
    else:
        audit_log = DisabledAuditLog()
    return AccessParts(
        stores=stores,
        authorizer=PolicyAuthorizer(stores),
        audit_log=audit_log,
        damper=FailureDamper(options.failure_limit, options.failure_window, options.penalty_seconds),
        options=options,
    )
