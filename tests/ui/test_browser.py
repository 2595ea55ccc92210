"""The console in a real browser: headless Chromium (Debian's) driven by Selenium against a real ``tessera serve``.

One browser and one server for the whole module; every wait is bounded. Screenshots of the main pages go to
``$TESSERA_UI_SCREENSHOTS`` when set (``TESSERA_UI_SCREENSHOTS=docs/ui make test`` refreshes the ones in the
README), else to a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess
from tests.ui.browser import ensure_chromium, start_chromium

# The first test may wait for apt-get to install chromium (a minute or two on a fresh machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT_TOKEN = "tsr_browser-root-token-0123456789abcdef"
XSS = "<script>document.title='pwned'</script>"
WAIT = 60  # seconds: the bound of every wait (a loaded 2-core machine answers in well under one)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = ensure_chromium()
    if reason is not None and os.environ.get("CI"):
        pytest.fail(f"the browser tests cannot run on CI: {reason}")  # never a silent skip there
    if reason is not None:
        pytest.skip(reason)
    server = ServerProcess(tmp_path_factory.mktemp("console") / "data", root_token=ROOT_TOKEN).start(timeout=120)
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ROOT_TOKEN}"}, timeout=60)
    api.put("/envs/staging", json={"parent": "default"})
    api.put("/envs/prod", json={"parent": "staging"})
    for key, value in {"app.name": "shop", "app.banner": XSS, "database.host": "db.internal", "database.port": 5432,
                       "database.pool.max": 20, "billing.rate": 42, "billing.plan": "gold"}.items():  # fmt: skip
        assert api.put(f"/config/{key}", json={"value": value}).status_code == 201
    api.put("/config/db.password", json={"value": "hunter2-secret", "secret": True})
    api.put("/config/database.host?env=staging", json={"value": "staging-db.internal"})
    api.put("/config/database.host?env=prod", json={"value": "prod-db.internal"})
    api.put("/config/features.checkout?env=prod", json={"value": True})
    api.put("/policies/viewer", json={"rules": [
        {"path": "*", "capabilities": ["list", "read", "history"]},
        {"path": "billing.*", "capabilities": ["list", "read", "history"], "effect": "deny"},
        {"path": "db.password", "capabilities": ["read"], "effect": "deny"},
    ]})  # fmt: skip
    api.put("/policies/deployer", json={"rules": [{"path": "*", "capabilities": ["list", "read", "write"]}]})
    server.viewer = api.post("/auth/tokens", json={"service": "viewer", "policies": ["viewer"]}).json()["token"]
    server.deployer = api.post("/auth/tokens", json={"service": "deploy-bot", "policies": ["deployer"]}).json()["token"]
    server.api = api
    yield server
    api.close()
    server.stop()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("TESSERA_UI_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait_for(driver, condition, message: str):
    """Poll ``condition`` until it holds, at most ``WAIT`` seconds; an element replaced or not there yet while
    the browser is still loading counts as "not yet" (a loaded machine is slow, not wrong)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=ignored).until(condition, message)


def submit(driver, element_id: str, condition, message: str):
    """Click ``element_id`` (a submit button or link) and wait for the page it leads to: first the current page
    going away (so nothing of it is mistaken for the next one), then ``condition`` on the new one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    page = driver.find_element(By.TAG_NAME, "html")
    by_id(driver, element_id).click()
    stale = expected_conditions.staleness_of(page)

    def gone(d):
        try:
            return stale(d)
        except WebDriverException as exc:  # chromedriver asked about a node mid-navigation: "not yet", look again
            if "inspector" in str(exc):
                return False
            raise

    wait_for(driver, gone, f"the page to change after clicking #{element_id}")
    return wait_for(driver, condition, message)


def text_of(element_id: str):
    def condition(driver) -> str | bool:
        return by_id(driver, element_id).text or False

    return condition


def sign_in(driver, server, token: str, base: str | None = None) -> None:
    driver.get((base or server.url) + "/ui/login")
    driver.delete_all_cookies()
    driver.get((base or server.url) + "/")
    assert driver.current_url.endswith("/ui")
    by_id(driver, "token").send_keys(token)
    submit(driver, "sign-in", lambda d: css(d, "#keys"), "the browse page after signing in")


def as_root(driver, server) -> None:
    """Make sure the browser is signed in as root (a test that failed half-way may have left anything)."""
    driver.get(server.url + "/ui")
    who = css(driver, "#who")
    if not who or who[0].text != "root":
        sign_in(driver, server, ROOT_TOKEN)


def row(driver, key: str):
    found = [r for r in css(driver, "tr.leaf") if r.get_attribute("data-key") == key]
    return found[0] if found else None


def test_sign_in_and_browse(browser, server, shots):
    browser.get(server.url + "/ui/login")
    browser.delete_all_cookies()
    browser.get(server.url + "/ui")
    assert "Sign in" in browser.title
    by_id(browser, "token").send_keys("tsr_wrong-token-0123456789")
    message = submit(browser, "sign-in", text_of("login-error"), "the refusal of a wrong token")
    assert "unknown, expired or revoked" in message
    browser.save_screenshot(str(shots / "sign-in.png"))
    sign_in(browser, server, ROOT_TOKEN)
    assert by_id(browser, "who").text == "root"
    groups = [r.text for r in css(browser, "tr.group")]
    assert "database." in groups and "pool." in groups
    host = row(browser, "database.host")
    assert '"db.internal"' in host.text and "default" in host.text and "root" in host.text
    assert "secret" in row(browser, "db.password").text and "hunter2" not in browser.page_source
    browser.get(server.url + "/ui?env=prod")
    host = row(browser, "database.host")
    assert "prod-db.internal" in host.text and host.find_element("css selector", ".env").text == "prod"
    assert row(browser, "database.port").find_element("css selector", ".env").text == "default"  # which env supplied it
    browser.save_screenshot(str(shots / "browse.png"))
    by_id(browser, "search").send_keys("pool")
    submit(browser, "search-go", lambda d: d.current_url.endswith("q=pool"), "the search's answer")
    assert [r.get_attribute("data-key") for r in css(browser, "tr.leaf")] == ["database.pool.max"]


def test_a_value_holding_script_is_rendered_as_text(browser, server):
    as_root(browser, server)
    assert XSS in row(browser, "app.banner").text
    browser.get(server.url + "/ui/keys/app.banner")
    assert by_id(browser, "value-text").text == f'"{XSS}"'
    assert "pwned" not in browser.title
    assert not browser.execute_script("return document.querySelectorAll('main script').length")


def test_edit_with_compare_and_set_and_a_stale_page_gets_409(browser, server, shots):
    as_root(browser, server)
    browser.get(server.url + "/ui/keys/app.name")
    browser.save_screenshot(str(shots / "key.png"))
    box = by_id(browser, "edit-value")
    box.clear()
    box.send_keys("shop-2")
    submit(browser, "save", lambda d: css(d, "#notice"), "the saved notice")
    assert by_id(browser, "version").text == "2"
    assert server.api.get("/config/app.name").json()["value"] == "shop-2"
    # The page now shows version 2; someone else writes version 3; saving from this page must be refused.
    assert server.api.put("/config/app.name", json={"value": "shop-3"}).status_code == 200
    box = by_id(browser, "edit-value")
    box.clear()
    box.send_keys("from-a-stale-page")
    submit(browser, "save", lambda d: css(d, "#stale-message"), "the stale page's refusal")
    assert by_id(browser, "error-status").text.startswith("409")
    assert by_id(browser, "current-version").text == "3"
    browser.save_screenshot(str(shots / "stale-409.png"))
    assert server.api.get("/config/app.name").json()["value"] == "shop-3"


def test_create_and_delete_with_the_secret_flag(browser, server):
    as_root(browser, server)
    browser.get(server.url + "/ui/new?prefix=app")
    name = by_id(browser, "new-key-name")
    name.clear()
    name.send_keys("app.api_key")
    by_id(browser, "new-value").send_keys("k-123")
    by_id(browser, "new-secret").click()
    submit(browser, "create", lambda d: css(d, "#notice"), "the created notice")
    assert by_id(browser, "secret").text == "yes" and "k-123" not in browser.page_source
    assert server.api.get("/config/app.api_key").json()["secret"] is True
    submit(browser, "delete", lambda d: css(d, "#keys"), "the browse page after deleting")
    assert server.api.get("/config/app.api_key").status_code == 404


def test_history_diff_and_rollback(browser, server, shots):
    v1 = ["eu-west-1", "us-east-1", "ap-south-1"]
    versions = [v1, [*v1, "sa-east-1"], ["eu-west-1", "us-east-2", "ap-south-1", "sa-east-1"]]
    for value in versions:
        assert server.api.put("/config/app.regions", json={"value": value}).status_code in (200, 201)
    as_root(browser, server)
    browser.get(server.url + "/ui/history/app.regions")
    shown = [r.get_attribute("data-version") for r in css(browser, "#history tbody tr")]
    assert shown == ["3", "2", "1"]  # newest first
    by_id(browser, "a-1").click()
    by_id(browser, "b-3").click()
    submit(browser, "compare", lambda d: css(d, "#version-diff"), "the side-by-side diff")
    rows = [
        [c.text.strip() for c in r.find_elements("css selector", "td")] + [r.get_attribute("class")]
        for r in css(browser, "#version-diff tbody tr")
    ]
    assert ['"eu-west-1",', '"eu-west-1",', "same"] in rows  # line by line, side by side
    assert ['"us-east-1",', '"us-east-2",', "changed"] in rows
    assert ["", '"sa-east-1"', "added"] in rows  # a line only on the right
    browser.save_screenshot(str(shots / "history.png"))
    submit(browser, "rollback-to-1", lambda d: css(d, "#notice"), "the rolled-back notice")
    body = server.api.get("/config/app.regions").json()
    assert body["value"] == v1 and body["version"] == 4
    # A rollback from a page that missed a change is refused like a stale edit.
    server.api.put("/config/app.regions", json={"value": ["meanwhile"]})
    submit(browser, "rollback-to-2", lambda d: css(d, "#stale-message"), "the stale rollback's refusal")
    assert by_id(browser, "current-version").text == "5"
    assert server.api.get("/config/app.regions").json()["version"] == 5


def test_diff_two_environments(browser, server, shots):
    from selenium.webdriver.support.ui import Select

    as_root(browser, server)
    browser.get(server.url + "/ui/envs")
    assert len(css(browser, "#env-graph rect")) == 3 and len(css(browser, "#env-graph line")) == 2
    Select(by_id(browser, "diff-from")).select_by_visible_text("staging")
    Select(by_id(browser, "diff-to")).select_by_visible_text("prod")
    submit(browser, "diff-go", lambda d: css(d, "#env-diff"), "the environment diff")
    changed = {r.get_attribute("data-key"): r.text for r in css(browser, "#env-diff tr.changed")}
    added = {r.get_attribute("data-key") for r in css(browser, "#env-diff tr.added")}
    assert "staging-db.internal" in changed["database.host"] and "prod-db.internal" in changed["database.host"]
    assert added == {"features.checkout"}
    assert len(css(browser, "#env-graph line.on")) == 2  # prod → staging → default drawn as the chain
    browser.save_screenshot(str(shots / "environments.png"))


def test_promote_with_compare_and_set_and_a_stale_page_gets_409(browser, server, shots):
    from selenium.webdriver.support.ui import Select

    server.api.put("/config/service.url?env=staging", json={"value": "https://staging.example"})
    server.api.put("/config/service.url?env=prod", json={"value": "https://old.example"})
    as_root(browser, server)
    browser.get(server.url + "/ui/envs?namespace=default&from=staging&to=prod&prefix=service")
    assert css(browser, "#promote-service\\.url")[0].is_selected()
    browser.save_screenshot(str(shots / "promote.png"))
    notice = submit(browser, "promote", text_of("notice"), "the promoted notice")
    assert "Promoted 1 key" in notice
    assert server.api.get("/config/service.url?env=prod").json()["value"] == "https://staging.example"
    # A page that missed a change in the target promotes nothing and says so.
    server.api.put("/config/service.url?env=staging", json={"value": "https://next.example"})
    browser.get(server.url + "/ui/envs")
    Select(by_id(browser, "diff-from")).select_by_visible_text("staging")
    Select(by_id(browser, "diff-to")).select_by_visible_text("prod")
    submit(browser, "diff-go", lambda d: css(d, "#promote"), "the diff with its promote button")
    server.api.put("/config/service.url?env=prod", json={"value": "https://hotfix.example"})
    submit(browser, "promote", lambda d: css(d, "#stale-message"), "the stale promote's refusal")
    assert by_id(browser, "error-status").text.startswith("409")
    assert [r.get_attribute("data-key") for r in css(browser, "#moved tbody tr")] == ["service.url"]
    assert server.api.get("/config/service.url?env=prod").json()["value"] == "https://hotfix.example"


def test_live_update_arrives_without_a_reload(browser, server, shots):
    as_root(browser, server)
    browser.get(server.url + "/ui")
    browser.execute_script("window.notReloaded = true")
    deployer = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.deployer}"}, timeout=60)

    def arrived(driver) -> bool:
        # The socket subscribes from the revision the page was rendered at, so a write that lands before it has
        # subscribed is still sent: one write is enough.
        return "live-value" in (row(driver, "database.port").text or "")

    assert deployer.put("/config/database.port", json={"value": "live-value"}).status_code == 200
    deployer.close()
    wait_for(browser, arrived, "the live update in the row")
    note = wait_for(browser, lambda d: by_id(d, "live-note").is_displayed() and by_id(d, "live-note"), "the live note")
    assert "database.port" in note.text and "deploy-bot" in note.text
    assert browser.execute_script("return window.notReloaded === true")
    assert row(browser, "database.port").find_element("css selector", ".by").text == "deploy-bot"
    browser.save_screenshot(str(shots / "live-update.png"))


def test_csrf_refusal(browser, server):
    as_root(browser, server)
    browser.get(server.url + "/ui/keys/database.host")
    browser.execute_script("document.querySelector('#edit-form input[name=csrf]').value = 'forged-by-another-site'")
    by_id(browser, "edit-value").send_keys("-changed")
    code = submit(browser, "save", text_of("error-code"), "the refusal page")
    assert code == "csrf_refused"
    assert server.api.get("/config/database.host").json()["value"] == "db.internal"


def test_the_api_refuses_the_session_cookie(browser, server):
    as_root(browser, server)
    cookie = browser.get_cookie("tessera_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert browser.execute_script("return document.cookie") == ""  # no script can read it
    response = httpx.get(
        server.url + "/config/database.host", headers={"Cookie": f"tessera_console={cookie['value']}"}, timeout=60
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    browser.get(server.url + "/config/database.host")  # the browser does not even send it there (Path=/ui)
    assert "unauthenticated" in browser.page_source


def test_a_secure_cookie_works_on_plain_http_loopback(browser, server):
    """The cookie is ``Secure`` and the server plain http: browsers keep it for 127.0.0.1 and localhost (both
    "potentially trustworthy"), which is how ``make run`` serves the console."""
    assert server.url.startswith("http://127.0.0.1:")
    as_root(browser, server)
    assert browser.get_cookie("tessera_console")["secure"]
    localhost = server.url.replace("127.0.0.1", "localhost")
    sign_in(browser, server, ROOT_TOKEN, base=localhost)
    assert browser.current_url.startswith(localhost) and by_id(browser, "who").text == "root"
    assert browser.get_cookie("tessera_console")["secure"]


def test_the_content_security_policy_is_enforced_and_no_page_breaks_it(browser, server):
    as_root(browser, server)
    browser.get_log("browser")  # drop what earlier tests logged
    for path in ("/ui", "/ui/keys/app.name", "/ui/history/app.name", "/ui/new", "/ui/envs?from=staging&to=prod",
                 "/ui/admin/tokens", "/ui/admin/policies", "/ui/admin/audit", "/ui/login"):  # fmt: skip
        browser.get(server.url + path)
        violations = [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]
        assert not violations, (path, violations)
    # An inline script (what an injected <script> would be) does not run: the policy blocks it.
    browser.get(server.url + "/ui")
    browser.execute_script(
        "var s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; document.body.appendChild(s)"
    )
    assert browser.execute_script("return window.inlineRan === undefined")
    assert any("Content Security Policy" in entry["message"] for entry in browser.get_log("browser"))


def test_admin_pages(browser, server, shots):
    as_root(browser, server)
    browser.get(server.url + "/ui/admin/tokens")
    by_id(browser, "token-service").send_keys("made-in-console")
    by_id(browser, "token-policies").send_keys("viewer")
    token = submit(browser, "token-create", text_of("new-token"), "the new token, shown once")
    assert (
        token.startswith("tsr_")
        and httpx.get(server.url + "/auth/self", headers={"Authorization": f"Bearer {token}"}, timeout=60).status_code == 200
    )
    browser.save_screenshot(str(shots / "tokens.png"))
    browser.get(server.url + "/ui/admin/tokens")
    assert token not in browser.page_source
    browser.get(server.url + "/ui/admin/policies?edit=viewer")
    by_id(browser, "explain-who").send_keys("viewer")
    by_id(browser, "explain-key").send_keys("billing.rate")
    answer = submit(browser, "explain-go", text_of("explain-answer"), "the explain answer")
    assert "Denied" in answer and "viewer" in answer
    browser.save_screenshot(str(shots / "policies.png"))
    browser.get(server.url + "/ui/admin/audit?service=deploy-bot")
    assert "config.write" in by_id(browser, "audit").text
    report = submit(browser, "verify", text_of("verify-report"), "the verify report")
    assert "intact" in report
    browser.get(server.url + "/ui/admin/audit")
    browser.save_screenshot(str(shots / "audit.png"))


def test_a_restricted_token_cannot_see_billing_or_reveal_a_secret(browser, server, shots):
    as_root(browser, server)
    submit(browser, "sign-out", lambda d: css(d, "#token"), "the sign-in page after signing out")
    sign_in(browser, server, server.viewer)
    keys = [r.get_attribute("data-key") for r in css(browser, "tr.leaf")]
    assert "app.name" in keys and "db.password" in keys
    assert not [k for k in keys if k.startswith("billing")] and "billing" not in by_id(browser, "keys").text
    assert not css(browser, "header nav a[href='/ui/admin/tokens']")
    browser.save_screenshot(str(shots / "restricted.png"))
    browser.get(server.url + "/ui/keys/db.password")
    assert not css(browser, "#reveal") and css(browser, "#no-reveal")
    browser.get(server.url + "/ui/keys/db.password?reveal=1")
    assert by_id(browser, "error-status").text.startswith("403") and "hunter2" not in browser.page_source
    browser.get(server.url + "/ui/keys/billing.rate")
    assert by_id(browser, "error-status").text.startswith("404")
    entries = server.api.get("/audit", params={"service": "viewer", "limit": "50"}).json()["entries"]
    assert any(e["action"] == "config.read" and e["key"] == "db.password" and e["outcome"] == "denied" for e in entries)
