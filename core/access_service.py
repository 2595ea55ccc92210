"""Tokens, policies, explain and the audit query: the admin side of access control.

Every method takes the calling principal and checks ``admin`` itself (except ``whoami``), so handlers stay
three lines. Token strings are returned once by :meth:`AccessService.create_token` and never stored.

>>> # access.create_token(ROOT, "auth-svc", ["auth-read"], 86400)  → ("tsr_…", TokenRecord(...))
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tessera.core.access import CAPABILITIES
from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import REQUEST, RESPONSE
from tessera.core.auth import Authenticator
from tessera.core.errors import Forbidden, InvalidRequest, NotFound
from tessera.core.idempotency import IdempotencyGuard
from tessera.core.model import ROOT, Principal, Scope, parse_key, parse_scope, utcnow
from tessera.core.policy import Decision, PolicyAuthorizer
from tessera.core.ports import AuditStore, PolicyStore, TokenStore
from tessera.core.tokens import generate_token, hash_token

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
RESERVED_SERVICES = frozenset({ROOT.service, "config-file"})  # they name the root token and the startup file
DEFAULT_TTL_SECONDS = 30 * 24 * 3600
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
MAX_POLICIES_PER_TOKEN = 64
MAX_RULES = 1000
MAX_AUDIT_LIMIT = 1000


def check_name(raw: object, what: str) -> str:
    if not isinstance(raw, str) or not NAME.match(raw):
        raise InvalidRequest(f"'{what}' must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")
    return raw


def parse_rules(body: dict[str, Any]) -> tuple[Rule, ...]:
    rules = body.get("rules")
    if not isinstance(rules, list):
        raise InvalidRequest("'rules' must be a list of rules")
    if len(rules) > MAX_RULES:
        raise InvalidRequest(f"a policy has at most {MAX_RULES} rules")
    return tuple(Rule.from_dict(raw) for raw in rules)


def parse_time(raw: str) -> datetime:
    # An unencoded "+00:00" arrives as " 00:00" (a query string's "+" is a space): take it as meant.
    raw = raw.strip().replace(" ", "+")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InvalidRequest("'since' must be an RFC 3339 time") from exc
    if moment.tzinfo is None:
        raise InvalidRequest("'since' needs a time zone (e.g. 2026-11-29T10:00:00Z)")
    return moment


class AccessService:
    def __init__(
        self,
        tokens: TokenStore,
        policies: PolicyStore,
        audit: AuditStore,
        authorizer: PolicyAuthorizer,
        authenticator: Authenticator,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.tokens = tokens
        self.policies = policies
        self.audit = audit
        self.authorizer = authorizer
        self.authenticator = authenticator
        self.clock = clock

    def require_admin(self, principal: Principal) -> None:
        if not self.authorizer.allowed(principal, "admin", Scope(), "*"):
            raise Forbidden("this token lacks the admin capability")

    # ------------------------------------------------------------------ tokens
    def create_token(
        self, principal: Principal, service: object, policies: object, ttl_seconds: object, guard: IdempotencyGuard | None = None
    ) -> tuple[str, TokenRecord]:
        """A new token; its string is returned here once. ``guard``: the request's ``Idempotency-Key`` claim, marked
        in the same transaction where the store allows it (so a retry never creates a second token)."""
        self.require_admin(principal)
        service = check_name(service, "service")
        if service in RESERVED_SERVICES:
            raise InvalidRequest(f"the service name '{service}' is reserved")
        if policies is None:
            policies = []
        if not isinstance(policies, list) or len(policies) > MAX_POLICIES_PER_TOKEN:
            raise InvalidRequest(f"'policies' must be a list of at most {MAX_POLICIES_PER_TOKEN} policy names")
        names = tuple(dict.fromkeys(check_name(name, "policies") for name in policies))
        if ttl_seconds is None:
            ttl_seconds = DEFAULT_TTL_SECONDS
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"'ttl_seconds' must be an integer between 1 and {MAX_TTL_SECONDS}")
        token = generate_token()
        now = self.clock()
        record = TokenRecord(
            id="tok_" + secrets.token_hex(8),
            service=service,
            policies=names,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        if guard is not None and getattr(self.tokens, "idempotency", False):
            self.tokens.create_token(record, guard=guard)  # type: ignore[call-arg]
        else:
            self.tokens.create_token(record)
        return token, record

    def list_tokens(self, principal: Principal) -> list[TokenRecord]:
        self.require_admin(principal)
        return self.tokens.list_tokens()

    def revoke_token(self, principal: Principal, token_id: str) -> None:
        self.require_admin(principal)
        record = self.tokens.get_token(token_id)
        if record is None:
            raise NotFound("no such token")
        self.tokens.revoke_token(token_id, self.clock())  # revoking twice is harmless: 204 both times
        self.authenticator.forget(record.token_hash)

    # ------------------------------------------------------------------ policies
    def put_policy(self, principal: Principal, name: str, body: dict[str, Any]) -> tuple[bool, PolicyDoc]:
        self.require_admin(principal)
        name = check_name(name, "name")
        rules = parse_rules(body)
        existed = self.policies.get_policy(name) is not None
        doc = self.policies.put_policy(name, rules, self.clock())
        self.authorizer.invalidate()
        return not existed, doc

    def list_policies(self, principal: Principal) -> list[PolicyDoc]:
        self.require_admin(principal)
        return self.policies.list_policies()

    def get_policy(self, principal: Principal, name: str) -> PolicyDoc:
        self.require_admin(principal)
        doc = self.policies.get_policy(name)
        if doc is None:
            raise NotFound("no such policy")
        return doc

    def delete_policy(self, principal: Principal, name: str) -> None:
        self.require_admin(principal)
        if not self.policies.delete_policy(name):
            raise NotFound("no such policy")
        self.authorizer.invalidate()

    # ------------------------------------------------------------------ explain
    def explain(self, principal: Principal, body: dict[str, Any]) -> tuple[TokenRecord | None, Decision]:
        """Which rule decides ``capability`` on ``key`` for a token (``token_id``) or a service's tokens."""
        self.require_admin(principal)
        capability = body.get("capability", "read")
        if capability not in CAPABILITIES:
            raise InvalidRequest(f"'capability' must be one of {', '.join(CAPABILITIES)}")
        for name in ("namespace", "env", "key", "token_id", "service"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InvalidRequest(f"'{name}' must be a string")
        scope = parse_scope(body.get("namespace"), body.get("env"))
        key = "*" if capability == "admin" and not body.get("key") else parse_key(body.get("key"))
        record, names = self._policies_of(body.get("token_id"), body.get("service"))
        if record is not None and record.id == ROOT.id:
            return record, Decision(True)
        return record, self.authorizer.explain(names, capability, scope, key)

    def _policies_of(self, token_id: object, service: object) -> tuple[TokenRecord | None, tuple[str, ...]]:
        if token_id:
            if token_id == ROOT.id:
                return TokenRecord(ROOT.id, ROOT.service, (), "", self.clock(), None), ()
            record = self.tokens.get_token(str(token_id))
            if record is None:
                raise NotFound("no such token")
            return record, record.policies
        if service:
            now = self.clock()
            live = [t for t in self.tokens.list_tokens() if t.service == service and t.live(now)]
            if not live:
                raise NotFound("no live token for this service")
            return None, tuple(dict.fromkeys(name for t in live for name in t.policies))
        raise InvalidRequest("give 'token_id' or 'service'")

    # ------------------------------------------------------------------ audit
    def query_audit(
        self,
        principal: Principal,
        key: str | None,
        service: str | None,
        since: str | None,
        limit: int,
        phase: str = RESPONSE,
    ) -> list[AuditEntry]:
        """``phase``: "response" (default, one entry per request), "request" (the pre-entries of mutating
        requests), or "all"."""
        self.require_admin(principal)
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_AUDIT_LIMIT}")
        if phase not in (RESPONSE, REQUEST, "all"):
            raise InvalidRequest(f"phase must be {RESPONSE}, {REQUEST} or all")
        chosen = None if phase == "all" else phase
        return self.audit.query(key or None, service or None, parse_time(since) if since else None, limit, chosen)
