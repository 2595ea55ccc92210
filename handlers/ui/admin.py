"""Console admin pages: tokens (a new token's string shown once), policies (validated edits, an explain box),
the audit log with filters, and ``audit verify``. Each needs ``admin``, checked by the access service itself."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response

from tessera.core.audit import entry_to_api
from tessera.core.audit import verify as verify_chains
from tessera.core.errors import InvalidRequest, TesseraError
from tessera.handlers.deps import before_change, int_param
from tessera.handlers.ui.console import Console, console_route

EXAMPLE_RULES = [
    {"path": "app.*", "capabilities": ["read", "list", "history"], "effect": "allow", "namespaces": ["*"], "envs": ["*"]}
]


def access_of(ui: Console) -> Any:
    access = ui.container.access.access
    assert access is not None
    return access


# ---------------------------------------------------------------------------------------------- tokens
async def tokens_page(ui: Console, status: int = 200, **context: Any) -> Response:
    access = access_of(ui)
    tokens = await ui.container.read(access.list_tokens, ui.principal)
    return ui.render("tokens.html", status, tokens=tokens, **context)


@console_route("/ui/admin/tokens", "token.list")
async def tokens(ui: Console) -> Response:
    await ui.signed_in()
    return await tokens_page(ui, notice=ui.param("notice"))


@console_route("/ui/admin/tokens", "token.create", ("POST",))
async def create_token(ui: Console) -> Response:
    form = await ui.change()
    access = access_of(ui)
    access.require_admin(ui.principal)
    policies = [name.strip() for name in form.get("policies", "").split(",") if name.strip()]
    ttl = int_param(form.get("ttl_seconds"), "ttl_seconds", minimum=1)
    await before_change(ui.request, ui.auditor)
    try:
        token, record = await ui.container.blocking(
            access.create_token, ui.principal, form.get("service", ""), policies, ttl, None
        )
    except InvalidRequest as exc:
        ui.auditor.note(target=None)
        return await tokens_page(ui, 400, error=exc.message, form=form)
    ui.auditor.note(target=record.id)
    # 201: the page holds the token string, shown this once (and never stored: the page is no-store)
    return await tokens_page(ui, 201, created=record, created_token=token)


@console_route("/ui/admin/tokens/revoke", "token.revoke", ("POST",))
async def revoke_token(ui: Console) -> Response:
    form = await ui.change()
    access = access_of(ui)
    token_id = form.get("token_id", "")
    ui.auditor.note(target=token_id)
    access.require_admin(ui.principal)
    await before_change(ui.request, ui.auditor)
    await ui.container.blocking(access.revoke_token, ui.principal, token_id)
    return ui.redirect("/ui/admin/tokens?notice=revoked")


# ---------------------------------------------------------------------------------------------- policies
async def policies_page(ui: Console, status: int = 200, **context: Any) -> Response:
    access = access_of(ui)
    docs = await ui.container.read(access.list_policies, ui.principal)
    editing = context.pop("editing", None)
    if editing is None:
        name = ui.param("edit")
        doc = next((d for d in docs if d.name == name), None)
        rules = [rule.to_dict() for rule in doc.rules] if doc is not None else EXAMPLE_RULES
        editing = {"name": name if doc is not None else "", "rules": json.dumps(rules, indent=2)}
    context.setdefault("explain", None)
    return ui.render("policies.html", status, policies=docs, editing=editing, **context)


@console_route("/ui/admin/policies", "policy.list")
async def policies(ui: Console) -> Response:
    await ui.signed_in()
    return await policies_page(ui, notice=ui.param("notice"))


@console_route("/ui/admin/policies", "policy.write", ("POST",))
async def put_policy(ui: Console) -> Response:
    form = await ui.change()
    access = access_of(ui)
    name = form.get("name", "")
    ui.auditor.note(target=name)
    access.require_admin(ui.principal)
    editing = {"name": name, "rules": form.get("rules", "")}
    try:
        rules = json.loads(form.get("rules", ""))
    except ValueError:
        return await policies_page(ui, 400, editing=editing, error="the rules are not valid JSON")
    await before_change(ui.request, ui.auditor)
    try:
        await ui.container.blocking(access.put_policy, ui.principal, name, {"rules": rules})
    except InvalidRequest as exc:
        return await policies_page(ui, 400, editing=editing, error=exc.message)
    return ui.redirect("/ui/admin/policies?notice=saved")


@console_route("/ui/admin/policies/delete", "policy.delete", ("POST",))
async def delete_policy(ui: Console) -> Response:
    form = await ui.change()
    access = access_of(ui)
    name = form.get("name", "")
    ui.auditor.note(target=name)
    access.require_admin(ui.principal)
    await before_change(ui.request, ui.auditor)
    await ui.container.blocking(access.delete_policy, ui.principal, name)
    return ui.redirect("/ui/admin/policies?notice=deleted")


@console_route("/ui/admin/explain", "auth.explain")
async def explain(ui: Console) -> Response:
    await ui.signed_in()
    access = access_of(ui)
    who = ui.param("who").strip()
    body = {
        "capability": ui.param("capability", "read"),
        "key": ui.param("key") or None,
        "namespace": ui.param("namespace") or None,
        "env": ui.param("env") or None,
        ("token_id" if who.startswith("tok_") or who == "root" else "service"): who or None,
    }
    asked = {k: v for k, v in body.items() if v is not None}
    try:
        record, decision = await ui.container.read(access.explain, ui.principal, asked)
        answer: dict[str, Any] = {"decision": decision.to_dict(), "token_id": record.id if record is not None else None}
    except TesseraError as exc:
        if exc.status == 403:
            raise
        answer = {"error": exc.message}
    return await policies_page(ui, explain={"asked": {"who": who, **asked}, **answer})


# ---------------------------------------------------------------------------------------------- audit
@console_route("/ui/admin/audit", "audit.read")
async def audit(ui: Console) -> Response:
    await ui.signed_in()
    access = access_of(ui)
    filters = {name: ui.param(name).strip() for name in ("key", "service", "since", "phase")}
    limit = int_param(ui.param("limit"), "limit", minimum=1, maximum=1000) or 100
    entries = await ui.container.read(
        access.query_audit, ui.principal, filters["key"] or None, filters["service"] or None, filters["since"] or None, limit,
        filters["phase"] or "response",
    )  # fmt: skip
    return ui.render(
        "audit.html",
        entries=[{**entry_to_api(entry), "method": entry.method, "path": entry.path} for entry in entries],
        filters=filters,
        limit=limit,
        report=None,
    )


class HeadBoundReader:
    """The audit store as of one moment: entries past the chain heads read first are not walked, so records
    appended while ``verify`` runs (this server keeps serving) are not taken for insertions."""

    def __init__(self, stores: Any) -> None:
        self.stores = stores
        self.heads: dict[str, tuple[int, str]] = stores.chains()
        if hasattr(stores, "chain_starts"):
            self.chain_starts = stores.chain_starts

    def chains(self) -> dict[str, tuple[int, str]]:
        return dict(self.heads)

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[Any]:
        last = self.heads.get(chain, (0, ""))[0]
        return [entry for entry in self.stores.chain_entries(chain, after_seq, limit) if entry.seq <= last]


def verify_now(stores: Any) -> dict[str, Any]:
    return verify_chains(HeadBoundReader(stores)).to_dict()


@console_route("/ui/admin/verify", "audit.verify")
async def verify(ui: Console) -> Response:
    await ui.signed_in()
    access_of(ui).require_admin(ui.principal)
    report = await ui.container.blocking(verify_now, ui.container.access.stores)
    return ui.render("audit.html", entries=[], filters={}, limit=100, report=report)
