"""Schemathesis against the declared OpenAPI document (issue 13 §1, §2), in-process over ASGI, bounded for
``make test`` (a few examples per operation; ``make fuzz`` runs the long form, ``tests/fuzz/``).

Every generated request is sent twice, with the root token and with a restricted one, and every response checked:
no 5xx, status and content type declared, body and headers conforming to the declared schemas. The stateful phase
follows the document's links: create → read → history → rollback (and delete). The last test proves the fuzzing
was not vacuous: writes got through body parsing and were committed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tessera.core.settings import Settings
from tessera.handlers.app import create_api
from tessera.handlers.openapi import OPERATIONS
from tests.servers import ServerProcess

ROOT_TOKEN = "tsr_fuzz-root-token-0123456789abcdef"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]  # fmt: skip
EXAMPLES = 3
pytestmark = pytest.mark.slow
ANSWERED: dict[str, set[int]] = {}  # "METHOD /path" → the statuses fuzzed requests got
CONFIG = {"phases": {"examples": {"enabled": False}, "coverage": {"enabled": False}},
          "generation": {"mode": "positive", "max-examples": EXAMPLES}}  # fmt: skip


def seed(server: ServerProcess) -> str:
    """An environment, a policy, a key, and a restricted token (returned), told apart from fuzzed requests."""
    with server.client() as root:
        root.headers["X-Request-Id"] = "seed"
        root.put("/envs/prod", json={"parent": "default"}).raise_for_status()
        rules = [{"path": "*", "capabilities": ["read", "list", "history"]},
                 {"path": "team.*", "capabilities": ["write", "delete", "rollback"]}]  # fmt: skip
        root.put("/policies/restricted", json={"rules": rules}).raise_for_status()
        root.put("/config/team.seed", json={"value": "seed"}).raise_for_status()
        return root.post("/auth/tokens", json={"service": "restricted", "policies": ["restricted"]}).json()["token"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real ``tessera serve`` (what a client generator or a fuzzer talks to), seeded; watches held 0.3 s at most."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", root_token=ROOT_TOKEN,
                           env={"TESSERA_AUTH_FAILURE_LIMIT": "1000000", "TESSERA_MAX_WATCH_SECONDS": "0.3"}).start()  # fmt: skip
    try:
        yield server, seed(server)
    finally:
        server.stop()


def declared_document() -> dict:
    """The document alone (it depends on the routes, not on data): collected without opening a store."""
    return create_api(SimpleNamespace(settings=Settings(root_token=ROOT_TOKEN)), console=False).openapi()


schema = schemathesis.openapi.from_dict(declared_document(), config=SchemathesisConfig.from_dict(CONFIG))


# One pytest item per operation (schemathesis' own parametrize gives its items one node id, which pytest-xdist
# collapses to the first operation).
@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS), ids=[f"{m.upper()} {p}" for m, p in sorted(OPERATIONS)])
def test_every_operation_conforms_for_root_and_a_restricted_token(method, path, world):
    server, token = world
    operation = schema[path][method.upper()]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        for bearer in (ROOT_TOKEN, token):
            response = case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {bearer}"},
                                              checks=CHECKS, timeout=70)  # fmt: skip
            ANSWERED.setdefault(f"{method.upper()} {path}", set()).add(response.status_code)

    fuzz()


def run_schemathesis(server: ServerProcess, token: str, phases: str, examples: int, report: Path, *extra: str,
                     output: bool = False) -> Any:  # fmt: skip
    """The schemathesis command line against ``server`` (its engine runs the stateful phase against a live API,
    where hypothesis' own replays would meet a server whose state moved on). Its exit status (and output)."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json",
               "--phases", phases, "--checks", ",".join(check.__name__ for check in CHECKS), "--mode", "positive",
               "--max-examples", str(examples), "--header", f"Authorization: Bearer {token}", "--no-shrink",
               "--request-timeout", "70", "--report", "ndjson", "--report-ndjson-path", str(report), *extra]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if output:
        return run.returncode, run.stdout + run.stderr
    if run.returncode != 0:
        print(run.stdout[-20000:], run.stderr[-5000:])
    return run.returncode


def test_stateful_links_create_read_history_rollback(world, tmp_path):
    """The stateful phase follows the document's links; afterwards the audit log shows keys it created and then
    read, listed the history of or rolled back (by the links' parameters)."""
    server, _ = world
    with server.client() as root:
        before = {e["id"] for e in root.get("/audit?limit=1000").json()["entries"]}
    # The config operations only (make fuzz runs every link): the chain under test is among them.
    assert run_schemathesis(server, ROOT_TOKEN, "stateful", 10 * EXAMPLES, tmp_path / "stateful.ndjson",
                            "--include-path-regex", "^/config") == 0  # fmt: skip
    with server.client() as root:
        made = [e for e in root.get("/audit?limit=1000").json()["entries"] if e["id"] not in before]
    created = {e["key"] for e in made if e["action"] == "config.write" and e["status"] == 201}
    followed = {e["action"] for e in made if e["key"] in created and e["action"] != "config.write"}
    assert created and followed & {"config.read", "config.history", "config.rollback"}, sorted((e["action"], e["status"]) for e in made)


def test_fuzzed_writes_got_through_body_parsing():
    """The issue's finding: not one fuzzed write got past body parsing. Now generated bodies are valid ones: each
    kind of write succeeded at least once (statuses seen by the test above, with either token)."""
    for operation in ("PUT /config/{key}", "PUT /policies/{name}", "PUT /envs/{name}", "POST /auth/tokens", "POST /config/import"):
        assert ANSWERED.get(operation, set()) & {200, 201}, (operation, ANSWERED.get(operation))
