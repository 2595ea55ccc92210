"""The seam between the config service and access control.

The service asks ``authorizer.allowed(principal, capability, scope, key)`` before it touches a key; the
policy engine (``core/policy.py``) implements it. Until a principal has policies, only the root token may act.
"""

from __future__ import annotations

from typing import Protocol

from tessera.core.model import Principal, Scope

CAPABILITIES = ("read", "list", "history", "write", "delete", "rollback", "admin")


class Authorizer(Protocol):
    def allowed(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool: ...


class RootOnly:
    """Everything for the root token, nothing for anyone else."""

    def allowed(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool:
        return principal.is_root
