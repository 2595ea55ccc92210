"""Console sessions live in the store, so they work across ``tessera serve --workers`` and across nodes, and end
everywhere at once: a session opened on one worker or node is honoured by every other, and a sign-out or a
revoked token on one ends it on all of them."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.crypto import CachingKeyService
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.aws.support import moto_target
from tests.servers import ServerProcess
from tests.ui.conftest import ORIGIN, ROOT, ROOT_TOKEN, hidden, make_token, sign_in

DEADLINE = 30.0  # seconds: revocation reaches every node within about one; this bounds a loaded machine's wait


def until(condition, message: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


@pytest.fixture
def two_aws_nodes():
    """Two app processes' worth of state (two containers, two apps) on one DynamoDB table, under moto."""
    with moto_target() as target:
        containers = [
            build(
                Settings(backend="aws", bucket=target.bucket, table=target.table, root_token=ROOT_TOKEN),
                store=target.store(),
                keys=CachingKeyService(target.kms()),
            )  # fmt: skip
            for _ in range(2)
        ]
        with (
            TestClient(create_app(containers[0]), base_url=ORIGIN) as a,
            TestClient(create_app(containers[1]), base_url=ORIGIN) as b,
        ):
            yield a, b
        for container in containers:
            container.close()


@pytest.mark.aws
def test_a_session_opened_on_one_aws_node_works_on_another_and_ends_everywhere(two_aws_nodes):
    a, b = two_aws_nodes
    sign_in(a)
    cookie = {"cookie": f"tessera_console={a.cookies.get('tessera_console')}"}
    page = b.get("/ui", headers=cookie)
    assert page.status_code == 200 and 'id="who">root<' in page.text
    csrf = hidden(page.text, "csrf")
    assert (
        b.post("/ui/logout", data={"csrf": csrf}, headers={**cookie, "origin": ORIGIN}, follow_redirects=False).status_code == 303
    )
    assert a.get("/ui", headers=cookie).status_code == 401  # signed out on b: ended on a

    token = make_token(a, "console-user", [{"path": "*", "capabilities": ["list"]}])
    a.cookies.clear()
    sign_in(a, token)
    cookie = {"cookie": f"tessera_console={a.cookies.get('tessera_console')}"}
    assert b.get("/ui", headers=cookie).status_code == 200
    token_id = b.get("/auth/self", headers={"Authorization": f"Bearer {token}"}).json()["id"]
    assert b.delete(f"/auth/tokens/{token_id}", headers=ROOT).status_code == 204  # revoked on b
    until(lambda: a.get("/ui", headers=cookie).status_code == 401, "the revoked token's session still works on node a")


def worker_of(response: httpx.Response) -> str:
    return response.headers["x-request-id"][:12]  # each worker process prefixes its request ids with its own random id


@pytest.mark.slow
def test_a_session_works_on_every_worker_and_ends_on_all(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=ROOT_TOKEN, extra_args=["--workers", "2"]).start(timeout=120)
    try:
        origin = {"origin": server.url}

        def sign_in_over_http(token: str) -> str:
            # By hand: the server is plain http and the cookie Secure, which httpx's jar (unlike a browser on
            # 127.0.0.1) would not send back.
            login = httpx.get(server.url + "/ui/login", timeout=60)
            nonce = login.cookies["tessera_console_login"]
            done = httpx.post(server.url + "/ui/login", data={"token": token, "login_nonce": hidden(login.text, "login_nonce")},
                              headers={**origin, "cookie": f"tessera_console_login={nonce}"}, timeout=60)  # fmt: skip
            assert done.status_code == 303, done.text
            found = re.search(r"tessera_console=([^;]+)", done.headers["set-cookie"])
            assert found
            return f"tessera_console={found.group(1)}"

        def on_every_worker(cookie: str, status: int) -> str:
            """GET /ui on fresh connections until both workers have answered; every answer must be ``status``."""
            seen: dict[str, str] = {}
            for _ in range(200):
                page = httpx.get(server.url + "/ui", headers={"cookie": cookie}, timeout=60)  # a new connection each
                assert page.status_code == status, (worker_of(page), page.status_code)
                seen[worker_of(page)] = page.text
                if len(seen) == 2:
                    return next(iter(seen.values()))
            raise AssertionError("only one worker answered 200 requests on fresh connections")

        cookie = sign_in_over_http(ROOT_TOKEN)
        page = on_every_worker(cookie, 200)
        assert 'id="who">root<' in page
        signed_out = httpx.post(server.url + "/ui/logout", data={"csrf": hidden(page, "csrf")}, headers={**origin, "cookie": cookie},
                                timeout=60)  # fmt: skip
        assert signed_out.status_code == 303
        on_every_worker(cookie, 401)

        with server.client() as api:
            api.put("/policies/lister", json={"rules": [{"path": "*", "capabilities": ["list"]}]}).raise_for_status()
            created = api.post("/auth/tokens", json={"service": "lister", "policies": ["lister"]}).json()
            cookie = sign_in_over_http(created["token"])
            on_every_worker(cookie, 200)
            assert api.delete(f"/auth/tokens/{created['id']}").status_code == 204

        def ended_everywhere() -> bool:
            try:
                on_every_worker(cookie, 401)
                return True
            except AssertionError:
                return False

        until(ended_everywhere, "the revoked token's session still works on a worker")
    finally:
        server.stop()
