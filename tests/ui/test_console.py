"""The console over HTTP (no browser): sign-in, the cookie's reach, CSRF and Origin, headers, escaping, access
control, compare-and-set, and the audit record of every console request. The browser suite is test_browser.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tessera.handlers.app import create_app
from tests.ui.conftest import ORIGIN, ROOT, ROOT_TOKEN, audit_entries, hidden, make_token, sign_in

XSS = "<script>document.title='pwned'</script>"


def test_root_redirects_to_the_console_and_the_console_asks_for_a_token(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 303, 307) and response.headers["location"] == "/ui"
    page = client.get("/ui")
    assert page.status_code == 401 and 'name="token"' in page.text


def test_security_headers_on_every_page(client):
    for response in (
        client.get("/ui"),
        client.get("/ui/login"),
        client.get("/ui/no-such-page"),
        client.get("/ui/static/console.js"),
    ):
        headers = response.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert headers["x-request-id"]
    assert "<script>" not in client.get("/ui/login").text.replace('<script src="/ui/static/console.js" defer></script>', "")


def test_session_cookie_is_secure_httponly_strict_and_scoped_to_ui(client):
    page = client.get("/ui/login")
    response = client.post("/ui/login", data={"token": ROOT_TOKEN, "login_nonce": hidden(page.text, "login_nonce")},
                           headers={"origin": ORIGIN}, follow_redirects=False)  # fmt: skip
    cookie = next(
        value for name, value in response.headers.multi_items() if name == "set-cookie" and value.startswith("tessera_console=")
    )
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert {"secure", "httponly"} <= set(attributes)
    assert attributes["samesite"].lower() == "samesite=strict" and attributes["path"] == "Path=/ui"
    assert ROOT_TOKEN not in cookie


def test_the_api_never_takes_the_session_cookie(client):
    sign_in(client)
    assert client.get("/ui").status_code == 200  # the console takes it
    cookie = client.cookies.get("tessera_console")
    for method, path in (
        ("GET", "/config/app.name"),
        ("GET", "/config"),
        ("GET", "/auth/self"),
        ("GET", "/audit"),
        ("PUT", "/config/x"),
    ):
        response = client.request(method, path, headers={"cookie": f"tessera_console={cookie}"}, json={"value": 1})
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"
    with client.websocket_connect("/ws", headers={"cookie": f"tessera_console={cookie}"}) as socket:  # the API's socket
        socket.send_json({"type": "subscribe", "keys": ["*"]})  # no auth message: the cookie must not stand in for it
        refusal = socket.receive_json()
    assert refusal["type"] == "error" and refusal["code"] == "unauthenticated"


def test_a_wrong_token_is_refused_and_recorded(client):
    page = client.get("/ui/login")
    response = client.post("/ui/login", data={"token": "tsr_not-a-token-0123456789", "login_nonce": hidden(page.text, "login_nonce")},
                           headers={"origin": ORIGIN})  # fmt: skip
    assert response.status_code == 401 and "tessera_console=" not in response.headers.get("set-cookie", "")
    assert any(e["action"] == "ui.signin" and e["status"] == 401 for e in audit_entries(client))


def test_sign_in_needs_its_form_nonce_and_our_origin(client):
    page = client.get("/ui/login")
    nonce = hidden(page.text, "login_nonce")
    assert (
        client.post("/ui/login", data={"token": ROOT_TOKEN, "login_nonce": "forged"}, headers={"origin": ORIGIN}).status_code
        == 403
    )
    refused = client.post(
        "/ui/login", data={"token": ROOT_TOKEN, "login_nonce": nonce}, headers={"origin": "https://evil.example"}
    )
    assert refused.status_code == 403 and "origin_refused" in refused.text


def test_changes_need_the_csrf_token(client):
    csrf = sign_in(client)
    form = {"key": "app.name", "value": "v", "type": "string", "expected_version": "0", "creating": "1"}
    for bad in ({}, {"csrf": ""}, {"csrf": "0" * 64}):
        response = client.post("/ui/write", data={**form, **bad}, follow_redirects=False)
        assert response.status_code == 403 and "csrf_refused" in response.text
    assert client.get("/config/app.name", headers=ROOT).status_code == 404  # nothing written
    assert client.post("/ui/write", data={**form, "csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/config/app.name", headers=ROOT).json()["value"] == "v"
    refused = [e for e in audit_entries(client) if e["action"] == "config.write" and e["status"] == 403]
    assert len(refused) == 3 and all(e["service"] == "root" for e in refused)


def test_a_foreign_origin_is_refused_even_with_the_csrf_token(client):
    csrf = sign_in(client)
    response = client.post("/ui/logout", data={"csrf": csrf}, headers={"origin": "https://evil.example"})
    assert response.status_code == 403
    assert client.get("/ui").status_code == 200  # still signed in


def test_values_holding_markup_are_shown_as_text(client):
    client.put("/config/app.banner", json={"value": XSS}, headers=ROOT)
    client.put("/config/app.list", json={"value": [XSS, 1]}, headers=ROOT)
    sign_in(client)
    for path in ("/ui", "/ui/keys/app.banner", "/ui/history/app.banner", "/ui/keys/app.list"):
        page = client.get(path).text
        assert "<script>document" not in page, path
        assert "&lt;script&gt;document.title=" in page, path
    # What anyone can put in the audit log (a refused request's path) is text on the audit page as well.
    assert client.get("/config/<script>document.title='pwned'</script>").status_code == 401
    page = client.get("/ui/admin/audit?limit=1000").text
    assert "<script>document" not in page and "&lt;script&gt;document.title=" in page


def test_secrets_are_masked_until_revealed_and_the_reveal_is_a_read(client):
    client.put("/config/db.password", json={"value": "hunter2-secret", "secret": True}, headers=ROOT)
    sign_in(client)
    assert "hunter2-secret" not in client.get("/ui").text
    assert "hunter2-secret" not in client.get("/ui/keys/db.password").text
    assert "hunter2-secret" not in client.get("/ui/history/db.password").text
    revealed = client.get("/ui/keys/db.password?reveal=1")
    assert "hunter2-secret" in revealed.text
    reads = [e for e in audit_entries(client, key="db.password") if e["action"] == "config.read"]
    assert reads and reads[0]["service"] == "root" and reads[0]["version"] == 1 and reads[0]["status"] == 200


def test_a_restricted_token_sees_only_what_it_may_list_and_cannot_reveal(client):
    client.put("/config/billing.rate", json={"value": 42}, headers=ROOT)
    client.put("/config/app.name", json={"value": "shop"}, headers=ROOT)
    client.put("/config/app.key", json={"value": "s3cr3t-app-key", "secret": True}, headers=ROOT)
    token = make_token(client, "viewer", [
        {"path": "*", "capabilities": ["list", "history"]},
        {"path": "app.name", "capabilities": ["read"]},
        {"path": "billing.*", "capabilities": ["list", "read", "history"], "effect": "deny"},
    ])  # fmt: skip
    sign_in(client, token)
    page = client.get("/ui").text
    assert "app.name" in page and "app.key" in page and "billing" not in page
    assert client.get("/ui/keys/billing.rate").status_code == 404
    assert 'id="reveal"' not in client.get("/ui/keys/app.key").text
    refused = client.get("/ui/keys/app.key?reveal=1")
    assert refused.status_code == 403 and "s3cr3t-app-key" not in refused.text
    assert client.get("/ui/admin/tokens").status_code == 403
    assert "Tokens" not in client.get("/ui").text.split("<main>")[0]  # no admin navigation


def test_edits_are_compare_and_set_and_a_stale_page_gets_409(client):
    client.put("/config/app.name", json={"value": "one"}, headers=ROOT)
    csrf = sign_in(client)
    page = client.get("/ui/keys/app.name").text
    expected = hidden(page, "expected_version")
    client.put("/config/app.name", json={"value": "two"}, headers=ROOT)  # someone else, meanwhile
    stale = client.post(
        "/ui/write", data={"csrf": csrf, "key": "app.name", "value": "three", "type": "string", "expected_version": expected}
    )
    assert stale.status_code == 409 and "version_conflict" in stale.text and 'id="current-version">2<' in stale.text
    assert client.get("/config/app.name", headers=ROOT).json()["value"] == "two"
    missing = client.post("/ui/write", data={"csrf": csrf, "key": "app.name", "value": "x", "type": "string"})
    assert missing.status_code == 400  # no expected_version: refused, every console write is compare-and-set


def test_rollback_is_compare_and_set_and_recorded_in_its_commit(client):
    for value in ("one", "two"):
        client.put("/config/app.name", json={"value": value}, headers=ROOT)
    csrf = sign_in(client)
    form = {"csrf": csrf, "key": "app.name", "version": "1", "expected_version": "1"}
    assert client.post("/ui/rollback", data=form).status_code == 409
    done = client.post("/ui/rollback", data={**form, "expected_version": "2"}, follow_redirects=False)
    assert done.status_code == 303
    body = client.get("/config/app.name", headers=ROOT).json()
    assert body["value"] == "one" and body["version"] == 3
    rollbacks = [e for e in audit_entries(client, key="app.name") if e["action"] == "config.rollback" and e["status"] == 200]
    assert len(rollbacks) == 1 and rollbacks[0]["version"] == 3 and rollbacks[0]["service"] == "root"


def test_revoking_the_token_ends_its_session(client):
    token = make_token(client, "short", [{"path": "*", "capabilities": ["list"]}])
    sign_in(client, token)
    assert client.get("/ui").status_code == 200
    token_id = client.get("/auth/self", headers={"Authorization": f"Bearer {token}"}).json()["id"]
    assert client.delete(f"/auth/tokens/{token_id}", headers=ROOT).status_code == 204
    assert client.get("/ui").status_code == 401


def test_sign_out_ends_the_session_on_the_server(client):
    csrf = sign_in(client)
    cookie = client.cookies.get("tessera_console")
    assert client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    client.cookies.set("tessera_console", cookie, domain="testserver.local", path="/ui")  # a copy kept elsewhere
    assert client.get("/ui", headers={"cookie": f"tessera_console={cookie}"}).status_code == 401


def test_every_console_request_is_recorded_as_the_signed_in_token(client):
    token = make_token(client, "auditee", [{"path": "*", "capabilities": ["list", "read", "write", "history"]}])
    client.put("/config/app.name", json={"value": "one"}, headers=ROOT)
    csrf = sign_in(client, token)
    client.get("/ui")
    client.get("/ui/keys/app.name")
    client.get("/ui/history/app.name")
    client.get("/ui/static/console.css")
    client.post("/ui/write", data={"csrf": csrf, "key": "app.name", "value": "two", "type": "string", "expected_version": "1"})
    mine = [e for e in audit_entries(client, service="auditee")]
    actions = {e["action"] for e in mine}
    assert {"ui.signin", "ui.browse", "config.read", "config.history", "ui.static", "config.write"} <= actions
    write = next(e for e in mine if e["action"] == "config.write")
    assert write["version"] == 2 and write["key"] == "app.name" and write["token_id"].startswith("tok_")


def test_live_socket_checks_origin_and_session(client):
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ui/ws", headers={"origin": ORIGIN}) as socket:
            socket.receive_text()  # no session
    sign_in(client)
    cookie = f"tessera_console={client.cookies.get('tessera_console')}"
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ui/ws", headers={"origin": "https://evil.example", "cookie": cookie}) as socket:
            socket.receive_text()
    refused = [e["status"] for e in audit_entries(client) if e["action"] == "ui.ws.connect"]
    assert sorted(refused) == [401, 403]


def test_live_socket_sends_changes_with_who_made_them(client):
    client.put("/config/app.name", json={"value": "one"}, headers=ROOT)
    sign_in(client)
    revision = client.get("/health").json()["revision"]
    cookie = f"tessera_console={client.cookies.get('tessera_console')}"  # the test client's sockets skip its jar
    with client.websocket_connect("/ui/ws?namespace=default&env=default", headers={"origin": ORIGIN, "cookie": cookie}) as socket:
        socket.send_json({"type": "subscribe", "keys": ["app.*"], "since": revision})
        client.put("/config/app.name", json={"value": XSS}, headers=ROOT)
        change = socket.receive_json()
    assert change["type"] == "change" and change["key"] == "app.name" and change["changed_by"] == "root"
    assert change["resolved"]["version"] == 2 and change["resolved"]["value"] == f'"{XSS}"'


def test_admin_pages_create_a_token_once_and_explain(client):
    csrf = sign_in(client)
    created = client.post(
        "/ui/admin/tokens", data={"csrf": csrf, "service": "made-in-console", "policies": "", "ttl_seconds": "60"}
    )
    assert created.status_code == 201
    token = created.text.split('id="new-token">')[1].split("<")[0]
    assert token.startswith("tsr_") and token not in client.get("/ui/admin/tokens").text
    assert client.get("/auth/self", headers={"Authorization": f"Bearer {token}"}).json()["service"] == "made-in-console"
    bad = client.post(
        "/ui/admin/policies", data={"csrf": csrf, "name": "p", "rules": '[{"path": "a..b", "capabilities": ["read"]}]'}
    )
    assert bad.status_code == 400 and 'id="policy-error"' in bad.text
    good = client.post("/ui/admin/policies", data={"csrf": csrf, "name": "p", "rules": '[{"path": "a.*", "capabilities": ["read"]}]'},
                       follow_redirects=False)  # fmt: skip
    assert good.status_code == 303
    client.post("/auth/tokens", json={"service": "svc-p", "policies": ["p"]}, headers=ROOT)
    answer = client.get("/ui/admin/explain", params={"who": "svc-p", "capability": "read", "key": "a.b"}).text
    assert "Allowed" in answer and "<code>p</code>" in answer
    verify = client.get("/ui/admin/verify")
    assert verify.status_code == 200 and "Audit log intact" in verify.text


def promote_form(page: str) -> dict[str, list[str]]:
    """The promote form of an environments page as a browser would send it (every box ticked, as shown)."""
    import re

    form = page.split('id="promote-form"')[1].split("</form>")[0]
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form):
        fields.setdefault(name, []).append(value)
    for key in re.findall(r'name="keys" value="([^"]+)" form="promote-form"', page):
        fields.setdefault("keys", []).append(key)
    return fields


def test_promote_copies_the_ticked_keys_with_compare_and_set(client):
    client.put("/envs/staging", json={"parent": "default"}, headers=ROOT)
    client.put("/envs/prod", json={"parent": "default"}, headers=ROOT)
    client.put("/config/db.host?env=staging", json={"value": "staging-db"}, headers=ROOT)
    client.put("/config/db.host?env=prod", json={"value": "prod-db"}, headers=ROOT)
    client.put("/config/db.port?env=staging", json={"value": 5433}, headers=ROOT)
    client.put("/config/db.pass?env=staging", json={"value": "s3cr3t-pass", "secret": True}, headers=ROOT)
    client.put("/config/only.prod?env=prod", json={"value": 1}, headers=ROOT)
    sign_in(client)
    page = client.get("/ui/envs", params={"from": "staging", "to": "prod"}).text
    assert "s3cr3t-pass" not in page
    form = promote_form(page)
    assert sorted(form["keys"]) == ["db.host", "db.pass", "db.port"]  # only.prod (only in to) stays
    assert form["expected:db.host"] == ["1"] and form["expected:db.port"] == ["0"]
    form["keys"] = ["db.host", "db.pass"]  # db.port unticked
    client.put("/config/db.port?env=prod", json={"value": 1}, headers=ROOT)  # an unticked key moves: no matter
    done = client.post("/ui/promote", data=form, follow_redirects=False)
    assert done.status_code == 303 and "notice=promoted" in done.headers["location"]
    assert "Promoted 2 keys" in client.get(done.headers["location"]).text
    prod = {key: client.get(f"/config/{key}?env=prod", headers=ROOT).json() for key in ("db.host", "db.pass")}
    assert prod["db.host"]["value"] == "staging-db" and prod["db.host"]["version"] == 2
    assert prod["db.pass"]["value"] == "s3cr3t-pass" and prod["db.pass"]["secret"] is True
    assert client.get("/config/db.port?env=prod", headers=ROOT).json()["value"] == 1  # not ticked: not promoted
    promotes = [e for e in audit_entries(client, phase="all") if e["action"] == "config.promote"]
    assert promotes and all(e["service"] == "root" for e in promotes)
    assert any(e["key"] == "db.host" and e["version"] == 2 for e in promotes)  # each key's commit holds its record


def test_promote_from_a_stale_page_gets_409_and_promotes_nothing(client):
    client.put("/envs/staging", json={"parent": "default"}, headers=ROOT)
    client.put("/config/a.one?env=staging", json={"value": "new-1"}, headers=ROOT)
    client.put("/config/a.two?env=staging", json={"value": "new-2"}, headers=ROOT)
    client.put("/config/a.two", json={"value": "old-2"}, headers=ROOT)
    sign_in(client)
    form = promote_form(client.get("/ui/envs", params={"from": "staging", "to": "default"}).text)
    client.put("/config/a.two", json={"value": "meanwhile"}, headers=ROOT)  # someone else, after the page was shown
    stale = client.post("/ui/promote", data=form)
    assert stale.status_code == 409 and "version_conflict" in stale.text and 'data-key="a.two"' in stale.text
    assert 'data-key="a.one"' not in stale.text.split('id="moved"')[1]
    assert client.get("/config/a.one", headers=ROOT).status_code == 404  # all or nothing
    assert client.get("/config/a.two", headers=ROOT).json()["value"] == "meanwhile"
    without_csrf = client.post("/ui/promote", data={**form, "csrf": "forged"})
    assert without_csrf.status_code == 403 and "csrf_refused" in without_csrf.text


def test_promote_needs_write_in_the_target(client):
    client.put("/envs/staging", json={"parent": "default"}, headers=ROOT)
    client.put("/config/app.x?env=staging", json={"value": 2}, headers=ROOT)
    client.put("/config/app.x", json={"value": 1}, headers=ROOT)
    token = make_token(client, "reader", [{"path": "*", "capabilities": ["list", "read"]}])
    sign_in(client, token)
    page = client.get("/ui/envs", params={"from": "staging", "to": "default"}).text
    assert 'data-key="app.x"' in page and 'id="promote-form"' not in page  # nothing it may promote: no form
    csrf = hidden(client.get("/ui").text, "csrf")
    refused = client.post(
        "/ui/promote", data={"csrf": csrf, "from": "staging", "to": "default", "keys": "app.x", "expected:app.x": "1"}
    )
    assert refused.status_code == 403
    assert client.get("/config/app.x", headers=ROOT).json()["value"] == 1


def test_browse_offers_the_namespaces_this_token_may_list(client):
    client.put("/config/app.name?namespace=team-a", json={"value": "a"}, headers=ROOT)
    client.put("/envs/prod", json={"parent": "default"}, headers=ROOT)
    client.put("/config/app.name?namespace=team-b&env=prod", json={"value": "b"}, headers=ROOT)
    client.put("/config/app.name?namespace=team-c", json={"value": "c"}, headers=ROOT)
    token = make_token(
        client, "team-a-only", [{"path": "*", "capabilities": ["list", "read"], "namespaces": ["team-a", "default"]}]
    )

    def offered(page: str) -> list[str]:
        import re

        return re.findall(r'<option value="([^"]+)">', page.split('<datalist id="namespaces">')[1].split("</datalist>")[0])

    sign_in(client)
    assert offered(client.get("/ui").text) == ["default", "team-a", "team-c"]  # team-b holds keys in prod only
    assert offered(client.get("/ui?env=prod").text) == ["default", "team-a", "team-b", "team-c"]
    page = client.get("/ui?namespace=team-c").text
    assert 'id="namespace" list="namespaces" value="team-c"' in page and 'data-key="app.name"' in page
    client.cookies.clear()
    sign_in(client, token)
    assert offered(client.get("/ui").text) == ["default", "team-a"]


def test_the_sign_in_page_says_when_a_secure_cookie_cannot_be_kept(container):
    """Over plain http the Secure cookie is kept by browsers on loopback hosts only: elsewhere the page says so."""
    app = create_app(container)
    for base, warned in (("http://127.0.0.1:8200", False), ("http://localhost:8200", False), ("http://[::1]:8200", False),
                         ("https://config.example", False), ("http://config.example", True), ("http://10.0.0.5:8200", True)):  # fmt: skip
        with TestClient(app, base_url=base) as browser:
            assert ('id="insecure"' in browser.get("/ui/login").text) is warned, base


def test_promote_refuses_a_value_of_from_the_page_did_not_show(client):
    client.put("/envs/staging", json={"parent": "default"}, headers=ROOT)
    client.put("/config/a.one?env=staging", json={"value": "seen"}, headers=ROOT)
    client.put("/config/a.one", json={"value": "old"}, headers=ROOT)
    sign_in(client)
    form = promote_form(client.get("/ui/envs", params={"from": "staging", "to": "default"}).text)
    assert form["source:a.one"] == ["staging:1"]
    client.put("/config/a.one?env=staging", json={"value": "never-seen"}, headers=ROOT)  # changed in from meanwhile
    stale = client.post("/ui/promote", data=form)
    assert stale.status_code == 409 and 'id="source-moved"' in stale.text and "staging:2" in stale.text
    assert client.get("/config/a.one", headers=ROOT).json()["value"] == "old"  # nothing promoted
    fresh = promote_form(client.get("/ui/envs", params={"from": "staging", "to": "default"}).text)
    assert client.post("/ui/promote", data=fresh, follow_redirects=False).status_code == 303
    assert client.get("/config/a.one", headers=ROOT).json()["value"] == "never-seen"


def test_the_version_diff_is_side_by_side_line_by_line():
    from tessera.handlers.ui.pages import side_by_side

    rows = side_by_side(["a", "b", "c"], ["a", "B", "c", "d"])
    assert [(r["left"], r["right"], r["tag"]) for r in rows] == [
        ("[", "[", "same"),
        ('  "a",', '  "a",', "same"),
        ('  "b",', '  "B",', "changed"),
        ('  "c"', '  "c",', "changed"),
        (None, '  "d"', "added"),  # only on the right, inside the replaced block
        ("]", "]", "same"),
    ]
    assert [r["tag"] for r in side_by_side([1, 2, 3], "text")] == ["changed", "removed", "removed", "removed", "removed"]


def test_every_console_change_needs_the_csrf_token(client):
    """Every POST route of the console (sign-in aside: it has its own nonce) refuses a form without the session's
    CSRF token before doing anything, whatever else the form holds."""
    csrf = sign_in(client)
    from tessera.handlers.ui.console import router  # every console page registers its routes here

    posts = sorted(route.path for route in router.routes if "POST" in (getattr(route, "methods", None) or ()))
    assert {"/ui/write", "/ui/delete", "/ui/rollback", "/ui/promote", "/ui/envs", "/ui/logout", "/ui/admin/tokens",
            "/ui/admin/tokens/revoke", "/ui/admin/policies", "/ui/admin/policies/delete"} <= set(posts)  # fmt: skip
    form = {"key": "app.name", "value": "x", "type": "string", "expected_version": "0", "creating": "1", "version": "1",
            "name": "qa", "parent": "default", "service": "svc", "token_id": "tok_x", "rules": "[]", "from": "default",
            "to": "default", "keys": "app.name"}  # fmt: skip
    for path in posts:
        if path in ("/ui/login", "/ui/{rest:path}"):
            continue
        for bad in ({}, {"csrf": "forged"}, {"csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}):
            response = client.post(path, data={**form, **bad}, headers={"origin": ORIGIN}, follow_redirects=False)
            assert response.status_code == 403 and "csrf_refused" in response.text, (path, bad, response.status_code)
    assert client.get("/config/app.name", headers=ROOT).status_code == 404
    assert "qa" not in [env["name"] for env in client.get("/envs", headers=ROOT).json()["envs"]]
    assert client.get("/ui").status_code == 200  # still signed in: the sign-out was refused too


def test_live_socket_closes_when_the_token_is_revoked(client):
    token = make_token(client, "watcher", [{"path": "*", "capabilities": ["list", "read"]}])
    token_id = client.get("/auth/self", headers={"Authorization": f"Bearer {token}"}).json()["id"]
    sign_in(client, token)
    cookie = f"tessera_console={client.cookies.get('tessera_console')}"
    with client.websocket_connect("/ui/ws", headers={"origin": ORIGIN, "cookie": cookie}) as socket:
        socket.send_json({"type": "subscribe", "keys": ["*"], "since": client.get("/health").json()["revision"]})
        assert client.delete(f"/auth/tokens/{token_id}", headers=ROOT).status_code == 204
        ended = socket.receive_json()  # the session is re-checked every second
        assert ended == {"type": "error", "code": "unauthenticated", "message": "the session has ended"}
        with pytest.raises(WebSocketDisconnect):
            socket.receive_json()
