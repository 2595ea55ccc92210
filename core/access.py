"""The seam between the config service and access control.

The service asks ``authorizer.allowed(principal, capability, scope, key)`` before it touches a key; the
policy engine (``core/policy.py``) implements it. Until a principal has policies, only the root token may act.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from tessera.core.model import Principal, Scope

CAPABILITIES = ("read", "list", "history", "write", "delete", "rollback", "admin")


class Authorizer(Protocol):
    def allowed(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool: ...

    def decision_key(self, principal: Principal) -> Hashable:
        """Equal for two principals only if every decision is the same for both (same policies, same versions):
        what the service may cache a redacted answer under."""
        ...


class RootOnly:
    """Everything for the root token, nothing for anyone else."""

    def allowed(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool:
        return principal.is_root

    def decision_key(self, principal: Principal) -> Hashable:
        return principal.is_root
