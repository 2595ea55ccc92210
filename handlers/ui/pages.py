"""Console pages: sign-in, browse, a key (value, reveal, edit, delete), history (diff, rollback), environments.

Audit: a request that does what an API request does is recorded under that request's action (``config.read``
when a value is shown, ``config.write``/``delete``/``rollback`` — recorded inside the commit, as from the API —,
``config.history``, ``env.list``, ``env.write``, ``diff``); what only the console does is ``ui.*``
(``ui.browse``, ``ui.login``, ``ui.signin``, ``ui.signout``, ``ui.new``, ``ui.key``, ``ui.static``). See docs/ui.md.
"""

from __future__ import annotations

import difflib
import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from tessera.core.errors import Forbidden, InvalidRequest, NotFound, TesseraError, Unauthenticated, VersionConflict, VersionsMoved
from tessera.core.model import DEFAULT, Scope, parse_key, parse_prefix, parse_scope, utcnow
from tessera.core.service import ResolvedLeaf
from tessera.handlers.deps import before_change, int_param
from tessera.handlers.ui.console import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    STATIC,
    Console,
    Refused,
    console_route,
    safe_next,
)
from tessera.handlers.ui.envgraph import env_graph

BROWSE_PAGE = 500
SEARCH_LIMIT = 1000
SHORT_VALUE = 120


def scope_query(scope: Scope, **more: Any) -> str:
    params = {"namespace": scope.namespace, "env": scope.env, **{k: v for k, v in more.items() if v not in (None, "")}}
    return urlencode(params)


# ---------------------------------------------------------------------------------------------- sign-in
@console_route("/ui/login", "ui.login")
async def login_page(ui: Console) -> Response:
    return ui.sign_in_page(None, 200)


@console_route("/ui/login", "ui.signin", ("POST",))
async def sign_in(ui: Console) -> Response:
    ui.same_origin()
    form = await ui.read_form()
    nonce = ui.request.cookies.get(LOGIN_COOKIE)
    if not nonce or form.get("login_nonce") != nonce:
        raise Refused(403, "csrf_refused", "the sign-in form has expired or came from elsewhere: reload it and try again")
    token = form.get("token", "").strip()
    container = ui.container
    try:
        cookie, principal, ends = await container.blocking(ui.sessions.sign_in, token)
    except Unauthenticated as exc:
        damper, client = container.access.damper, ui.auditor.client
        if token and damper.failure(client):
            return ui.render("login.html", 429, message="too many failed sign-ins from this address; retry later",
                             login_nonce=nonce, next=safe_next(form.get("next", "/ui")))  # fmt: skip
        record = await container.read(container.authenticator.identify, token) if token else None
        if record is not None:  # an expired or revoked token: name who still uses it
            ui.auditor.refused_token = (record.service, record.id)
        return ui.render("login.html", 401, message=exc.message, login_nonce=nonce, next=safe_next(form.get("next", "/ui")))
    ui.auditor.principal = principal
    ui.auditor.note(target=principal.id)
    response = ui.redirect(safe_next(form.get("next", "/ui")))
    lifetime = max(1, int((ends - utcnow()).total_seconds()))
    response.set_cookie(COOKIE, cookie, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict", max_age=lifetime)
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")
    return response


@console_route("/ui/logout", "ui.signout", ("POST",))
async def sign_out(ui: Console) -> Response:
    await ui.change()
    await ui.container.blocking(ui.sessions.sign_out, ui.cookie)
    response = ui.redirect("/ui/login")
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")
    return response


# ---------------------------------------------------------------------------------------------- browse
def namespaces_of(ui: Console, scope: Scope) -> list[str]:
    """Namespaces holding a key this token may list in ``scope``'s env, and the current one: offered by the
    namespace box, which takes any name (namespaces need no creation; a store that cannot name its namespaces,
    the aws one, offers only these two)."""
    lister = getattr(ui.container.store, "list_namespaces", None)
    names = set(lister()) if lister is not None else set()
    assert ui.principal is not None
    visible = {name for name in names if ui.service.list_page(ui.principal, Scope(name, scope.env), None, 1).leaves}
    return sorted(visible | {scope.namespace, DEFAULT})


def tree_rows(leaves: list[ResolvedLeaf]) -> list[dict[str, Any]]:
    """The key tree as rows: a group row the first time a path segment appears, then the leaf, indented."""
    rows: list[dict[str, Any]] = []
    previous: list[str] = []
    for leaf in leaves:
        parts = leaf.version.key.split(".")
        for depth in range(len(parts) - 1):
            if previous[: depth + 1] != parts[: depth + 1]:
                rows.append({"group": ".".join(parts[: depth + 1]), "name": parts[depth], "depth": depth})
        rows.append({"leaf": leaf, "name": parts[-1], "depth": len(parts) - 1})
        previous = parts
    return rows


def shown_value(ui: Console, scope: Scope, leaf: ResolvedLeaf) -> dict[str, Any]:
    """What a row may show: a plain value the token may read; never a secret's (that takes a reveal)."""
    assert ui.principal is not None
    readable = ui.service.can(ui.principal, "read", scope, leaf.version.key)
    if leaf.version.secret or not readable:
        return {"readable": readable, "text": None}
    text = json.dumps(ui.service.value_of(leaf.version), ensure_ascii=False)
    return {"readable": True, "text": text if len(text) <= SHORT_VALUE else text[:SHORT_VALUE] + "…"}


@console_route("/ui", "ui.browse")
async def browse(ui: Console) -> Response:
    principal = await ui.signed_in()
    scope = ui.scope()
    prefix = parse_prefix(ui.param("prefix") or None)
    search = ui.param("q").strip()
    after = ui.param("after") or None
    ui.auditor.note(target=prefix or None)
    service, container = ui.service, ui.container
    revision = await container.read(container.store.current_revision)  # before listing: live updates start here
    envs = await container.read(service.list_envs, principal)
    await container.read(service.require_env, scope.env)
    more = None
    if search:
        needle = search.lower()
        everything = await container.read(service.list, principal, scope, prefix)
        leaves = [leaf for leaf in everything if needle in leaf.version.key.lower()][:SEARCH_LIMIT]
    else:
        page = await container.read(service.list_page, principal, scope, prefix, BROWSE_PAGE, after)
        leaves, more = page.leaves, page.next
    rows = tree_rows(leaves)
    for row in rows:
        if "leaf" in row:
            row.update(shown_value(ui, scope, row["leaf"]))
    return ui.render(
        "browse.html",
        scope=scope,
        envs=envs,
        namespaces=await container.read(namespaces_of, ui, scope),
        prefix=prefix,
        search=search,
        rows=rows,
        count=len(leaves),
        more=scope_query(scope, prefix=prefix, after=more) if more else None,
        revision=revision,
        watch=[prefix, prefix + ".*"] if prefix else ["*"],
        can_write=service.can(principal, "write", scope, prefix + ".x" if prefix else "x"),
        notice=ui.param("notice"),
    )


# ---------------------------------------------------------------------------------------------- a key
def own_version(ui: Console, scope: Scope, key: str) -> int:
    """The latest version of ``key`` in ``scope``'s own env (deletions count; 0: never written there): what a
    compare-and-set against this page must name."""
    latest = ui.container.store.latest(scope, key)
    return latest.version if latest is not None else 0


def listed_leaf(ui: Console, scope: Scope, key: str) -> ResolvedLeaf:
    assert ui.principal is not None
    for leaf in ui.service.list_page(ui.principal, scope, key, 2).leaves:
        if leaf.version.key == key:
            return leaf
    raise NotFound("no value at this key (or this token may not list it)")


@console_route("/ui/keys/{key:anykey}", "ui.key")
async def key_page(ui: Console) -> Response:
    principal = await ui.signed_in()
    scope = ui.scope()
    key = ui.request.path_params["key"]
    ui.auditor.note(key=key)
    key = parse_key(key)
    service, container = ui.service, ui.container
    revision = await container.read(container.store.current_revision)
    leaf = await container.read(listed_leaf, ui, scope, key)
    can_read = service.can(principal, "read", scope, key)
    reveal = ui.param("reveal") == "1"
    value_shown, value = False, None
    if reveal or not leaf.version.secret:
        if reveal:
            ui.auditor.note("config.read")  # a reveal is a read, allowed or refused, recorded as one
        if reveal and not can_read:
            raise Forbidden("this token may not read this key, so its value cannot be revealed")
        if can_read:
            ui.auditor.note("config.read")  # a value leaves the server: recorded as the read it is
            result = await container.read(service.get, principal, scope, key)
            if result.version is not None:
                leaf = ResolvedLeaf(result.version, result.resolved_env or scope.env)
                ui.auditor.note(version=result.version.version)
            value_shown, value = True, result.value
    chain = await container.read(service.env_chain, scope.env)
    return ui.render(
        "key.html",
        scope=scope,
        key=key,
        leaf=leaf,
        chain=chain,
        can_read=can_read,
        value_shown=value_shown,
        value=value,
        edit_text=(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)) if value_shown else "",
        edit_type="string" if isinstance(value, str) else "json",
        expected=await container.read(own_version, ui, scope, key),
        can_write=service.can(principal, "write", scope, key),
        can_delete=service.can(principal, "delete", scope, key) and leaf.env == scope.env,
        can_history=service.can(principal, "history", scope, key),
        revision=revision,
        watch=[key],
        notice=ui.param("notice"),
        query=scope_query(scope),
    )


@console_route("/ui/new", "ui.new")
async def new_key(ui: Console) -> Response:
    await ui.signed_in()
    scope = ui.scope()
    return ui.render("new.html", scope=scope, prefix=ui.param("prefix"))


def parse_value(text: str, kind: str) -> Any:
    if kind == "string":
        return text
    if kind != "json":
        raise InvalidRequest("type must be string or json")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("the value is not valid JSON (choose 'string' to store it as text)") from exc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def required_version(ui: Console) -> int:
    """Every console write is compare-and-set: the form names the version its page showed."""
    expected = int_param(ui.param("expected_version"), "expected_version", minimum=0)
    if expected is None:
        raise InvalidRequest("expected_version is required (every console write is compare-and-set)")
    return expected


def stale(ui: Console, exc: VersionConflict, key: str, scope: Scope, what: str) -> Response:
    return ui.render("stale.html", 409, key=key, scope=scope, what=what, current=exc.current_version,
                     expected=ui.param("expected_version"), query=scope_query(scope))  # fmt: skip


@console_route("/ui/write", "config.write", ("POST",))
async def write(ui: Console) -> Response:
    form = await ui.change()
    principal = ui.principal
    scope = ui.scope()
    key = form.get("key", "")
    ui.auditor.note(key=key)
    service, container = ui.service, ui.container
    value = parse_value(form.get("value", ""), form.get("type", "json"))
    secret = None if form.get("creating") != "1" else form.get("secret") == "on"
    expected = required_version(ui)
    await before_change(ui.request, ui.auditor, service.audit_in_commit)
    try:
        result = await container.blocking(service.put, principal, scope, key, value, secret, expected, ui.auditor)
    except VersionConflict as exc:
        return stale(ui, exc, key, scope, "saved")
    ui.auditor.note(version=result.version.version)
    notice = "created" if result.created else ("saved" if result.changed else "unchanged")
    return ui.redirect(f"/ui/keys/{key}?{scope_query(scope, notice=notice)}")


@console_route("/ui/delete", "config.delete", ("POST",))
async def delete(ui: Console) -> Response:
    form = await ui.change()
    scope = ui.scope()
    key = form.get("key", "")
    ui.auditor.note(key=key)
    expected = required_version(ui)
    await before_change(ui.request, ui.auditor, ui.service.audit_in_commit)
    try:
        tombstone = await ui.container.blocking(ui.service.delete, ui.principal, scope, key, expected, ui.auditor)
    except VersionConflict as exc:
        return stale(ui, exc, key, scope, "deleted")
    ui.auditor.note(version=tombstone.version)
    return ui.redirect(f"/ui?{scope_query(scope, notice='deleted')}")


# ---------------------------------------------------------------------------------------------- history
def side_by_side(left: Any, right: Any) -> list[dict[str, Any]]:
    """Rows of a side-by-side line diff of two values (pretty JSON), each side tagged same/changed/added/removed."""
    a = json.dumps(left, ensure_ascii=False, indent=2).splitlines()
    b = json.dumps(right, ensure_ascii=False, indent=2).splitlines()
    rows: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows.extend({"left": a[i], "right": b[j1 + n], "tag": "same"} for n, i in enumerate(range(i1, i2)))
            continue
        span = max(i2 - i1, j2 - j1)
        for n in range(span):
            left, right = (a[i1 + n] if i1 + n < i2 else None), (b[j1 + n] if j1 + n < j2 else None)
            # a line on one side only is added or removed, even inside a replaced block of unequal lengths
            rows.append({"left": left, "right": right, "tag": "changed" if left is not None and right is not None
                         else ("removed" if right is None else "added")})  # fmt: skip
    return rows


@console_route("/ui/history/{key:anykey}", "config.history")
async def history(ui: Console) -> Response:
    principal = await ui.signed_in()
    scope = ui.scope()
    key = ui.request.path_params["key"]
    ui.auditor.note(key=key)
    key = parse_key(key)
    service, container = ui.service, ui.container
    before = int_param(ui.param("before"), "before", minimum=1)
    entries = await container.read(service.history, principal, scope, key, 100, before)
    current = await container.read(own_version, ui, scope, key)
    left, right = int_param(ui.param("a"), "a", minimum=1), int_param(ui.param("b"), "b", minimum=1)
    diff, diff_error = None, None
    if left is not None and right is not None:
        try:
            versions = [await container.read(service.get, principal, scope, key, number) for number in (left, right)]
            if any(v.version is not None and v.version.secret for v in versions):
                diff_error = "this key is secret: its versions are never shown, so they cannot be compared"
            else:
                diff = side_by_side(versions[0].value, versions[1].value)
        except TesseraError as exc:
            diff_error = f"cannot compare: {exc.message}"
    older = entries[-1].version.version if len(entries) == 100 and entries[-1].version.version > 1 else None
    return ui.render(
        "history.html",
        scope=scope,
        key=key,
        entries=entries,
        current=current,
        left=left,
        right=right,
        diff=diff,
        diff_error=diff_error,
        can_rollback=service.can(principal, "rollback", scope, key),
        older=scope_query(scope, before=older) if older else None,
        query=scope_query(scope),
        notice=ui.param("notice"),
        rolled_from=int_param(ui.param("from"), "from", minimum=1),
    )


@console_route("/ui/rollback", "config.rollback", ("POST",))
async def rollback(ui: Console) -> Response:
    form = await ui.change()
    scope = ui.scope()
    key = form.get("key", "")
    ui.auditor.note(key=key)
    target = int_param(form.get("version"), "version", minimum=1)
    if target is None:
        raise InvalidRequest("version is required")
    expected = required_version(ui)
    await before_change(ui.request, ui.auditor, ui.service.audit_in_commit)
    try:
        committed = await ui.container.blocking(ui.service.rollback, ui.principal, scope, key, target, ui.auditor, expected)
    except VersionConflict as exc:
        return stale(ui, exc, key, scope, "rolled back")
    ui.auditor.note(version=committed.version)
    return ui.redirect(f"/ui/history/{key}?{scope_query(scope, notice='rolled-back', **{'from': target})}")


# ---------------------------------------------------------------------------------------------- environments
@console_route("/ui/envs", "env.list")
async def environments(ui: Console) -> Response:
    principal = await ui.signed_in()
    service, container = ui.service, ui.container
    namespace = ui.param("namespace") or DEFAULT
    scope = ui.scope()
    envs = await container.read(service.list_envs, principal)
    names = [env.name for env in envs]
    source, target, prefix = ui.param("from"), ui.param("to"), ui.param("prefix")
    diff, promotable, sources = None, {}, {}
    if source and target:
        ui.auditor.note("diff", target=f"{source}..{target}")
        ui.auditor.env = None
        await container.read(service.require_env, source)
        await container.read(service.require_env, target)
        diff = await container.read(service.diff, principal, scope.namespace, source, target, prefix or None)
        # What promote would copy: keys only in ``from`` and keys that differ (keys only in ``to`` stay), each with
        # the version of the key in ``to`` this page saw (promote's compare-and-set), where this token may write.
        to_scope = Scope(scope.namespace, target)
        promotable = {
            item["key"]: item["to_version"]
            for item in diff["removed"] + diff["changed"]
            if service.can(principal, "write", to_scope, item["key"])
        }
        if promotable:  # and what the page shows of ``from``: promote refuses if that moved too (see promote)
            shown = await container.read(source_versions, ui, Scope(scope.namespace, source), prefix)
            sources = {key: shown[key] for key in promotable if key in shown}
    selected = ui.param("env") or (target or DEFAULT)
    chain = await container.read(service.env_chain, selected) if selected in names else [DEFAULT]
    return ui.render(
        "envs.html",
        scope=Scope(namespace, selected if selected in names else DEFAULT),
        envs=envs,
        graph=env_graph(envs, chain),
        chain=chain,
        source=source,
        target=target,
        prefix=prefix,
        diff=diff,
        promotable=promotable,
        sources=sources,
        notice=ui.param("notice"),
        promoted=ui.param("promoted"),
    )


EXPECTED_FIELD = "expected:"  # promote's form: one "expected:<key>" field per key, holding its version in ``to``
SOURCE_FIELD = "source:"  # and one "source:<key>" per key: "<env>:<version>" of the value ``from`` showed


def source_versions(ui: Console, source: Scope, prefix: str | None) -> dict[str, str]:
    """Where each key's value in ``source`` comes from now, as "<env>:<version>" (what a promote would copy)."""
    leaves = ui.service.resolved_leaves(source, parse_prefix(prefix or None))
    return {leaf.version.key: f"{leaf.env}:{leaf.version.version}" for leaf in leaves}


@console_route("/ui/promote", "config.promote", ("POST",))
async def promote(ui: Console) -> Response:
    """Promote the keys ticked on a diff page, compare-and-set against every version in ``to`` that page showed."""
    form = await ui.change()
    service, container = ui.service, ui.container
    source, target, prefix = form.get("from", ""), form.get("to", ""), form.get("prefix") or None
    namespace = form.get("namespace") or None
    ui.auditor.note(target=f"{source}..{target}")
    ui.auditor.note_scope(namespace, target or None)  # the environment it writes
    ui.auditor.many_commits = True  # each key's commit holds its own record, as from the API
    if not source or not target:
        raise InvalidRequest("from and to are required")
    to_scope = parse_scope(namespace, target)
    ui.auditor.note(scope=to_scope)
    await container.read(service.require_env, source)
    await container.read(service.require_env, target)
    keys = [value for name, value in ui.pairs if name == "keys"]
    if not keys:
        raise InvalidRequest("tick at least one key to promote")
    expected: dict[str, int] = {}  # for the ticked keys only: a key left unticked may move without stopping this
    for name, value in ui.pairs:
        if name.startswith(EXPECTED_FIELD) and name[len(EXPECTED_FIELD) :] in keys:
            number = int_param(value, name, minimum=0)
            if number is not None:
                expected[name[len(EXPECTED_FIELD) :]] = number
    back = {"namespace": to_scope.namespace, "from": source, "to": target, "prefix": prefix or ""}
    # The API's compare-and-set is on ``to``; a page also showed the values of ``from`` it would copy, so a value
    # changed there since is refused the same way (nothing promoted) rather than copied unseen.
    shown = {name[len(SOURCE_FIELD) :]: value for name, value in ui.pairs if name.startswith(SOURCE_FIELD)}
    from_scope = Scope(to_scope.namespace, source)
    now = await container.read(source_versions, ui, from_scope, prefix)
    source_moved = {
        key: now.get(key, "none")
        for key in keys
        if key in shown and shown[key] != now.get(key) and service.can(ui.principal, "read", from_scope, key)
    }
    if source_moved:
        return ui.render("stale_promote.html", 409, moved={}, source_moved=source_moved, shown=shown, expected=expected,
                         source=source, target=target, query=urlencode(back))  # fmt: skip
    await before_change(ui.request, ui.auditor, service.audit_in_commit)
    try:
        result = await container.blocking(
            service.promote, ui.principal, to_scope.namespace, source, target, prefix, keys, expected, ui.auditor
        )
    except VersionsMoved as exc:
        return ui.render("stale_promote.html", 409, moved=exc.current_versions, source_moved={}, shown=shown,
                         expected=expected, source=source, target=target, query=urlencode(back))  # fmt: skip
    ui.auditor.note(target=f"{source}..{target}")
    return ui.redirect(f"/ui/envs?{urlencode({**back, 'notice': 'promoted', 'promoted': len(result.promoted)})}")


@console_route("/ui/envs", "env.write", ("POST",))
async def put_env(ui: Console) -> Response:
    form = await ui.change()
    name, parent = form.get("name", ""), form.get("parent") or None
    ui.auditor.note(target=name)
    ui.service.require_admin(ui.principal)
    await before_change(ui.request, ui.auditor)
    await ui.container.blocking(ui.service.put_env, ui.principal, name, parent)
    return ui.redirect(f"/ui/envs?{urlencode({'env': name, 'notice': 'env-saved'})}")


# ---------------------------------------------------------------------------------------------- static files
@console_route("/ui/static/{name}", "ui.static")
async def static(ui: Console) -> Response:
    await ui.if_signed_in()
    name = ui.request.path_params["name"]
    ui.auditor.note(target=name)
    files = ui.request.app.state.console_static
    if name not in files:
        raise NotFound("no such file")
    return Response(files[name], media_type=STATIC[name], headers=SECURITY_HEADERS)


fallback = APIRouter(include_in_schema=False)


@fallback.api_route("/ui/{rest:path}", methods=["GET", "POST"], name="ui.unknown")
async def unknown(request: Request) -> Response:
    ui = Console(request, "ui.unknown")
    await ui.if_signed_in()
    return ui.error_page(404, "no_route", "no such page in the console")
