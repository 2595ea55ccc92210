"""``tessera serve --config-file`` never silently reverts an API change (issue 12 §4): a config file edited between
restarts, with and without API changes to the same keys, a deletion through the API, a first start over a store
the API already wrote, ``.env`` files, and ``--watch-config`` applying edits while running."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.servers import ServerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
TOKEN = "tsr_config-file-root-token-abcdefghij"


class Restarts:
    def __init__(self, tmp_path: Path, config: Path, *extra: str) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.extra = list(extra)
        self.count = 0

    def start(self) -> ServerProcess:
        self.count += 1
        return ServerProcess(self.tmp_path / "data", root_token=TOKEN, log_path=self.tmp_path / f"start{self.count}.log",
                             extra_args=["--config-file", str(self.config), *self.extra]).start()

    def cycle(self) -> str:
        """Start, stop, and return the start's banner line about the file."""
        server = self.start()
        server.stop()
        return banner(server)


def banner(server: ServerProcess) -> str:
    match = re.search(r"^Imported .*$", server.log(), re.M)
    assert match, server.log()
    return match.group(0)


def read(server: ServerProcess, key: str) -> dict:
    with server.client() as client:
        return client.get(f"/config/{key}").json()


def test_a_file_edited_between_restarts_with_and_without_api_changes(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("app:\n  name: one\n  color: red\n  size: 1\n  gone: x\n")
    restarts = Restarts(tmp_path, config)
    assert "4 created" in restarts.cycle()

    # Edited without API changes: applied.
    config.write_text("app:\n  name: two\n  color: red\n  size: 1\n  gone: x\n")
    server = restarts.start()
    try:
        assert "1 updated, 3 unchanged" in banner(server) and "conflict" not in banner(server)
        body = read(server, "app.name")
        assert body["value"] == "two" and body["updated_by"] == "config-file"
        with server.client() as client:  # the API changes three keys, deletes one
            client.put("/config/app.name", json={"value": "from-api"}).raise_for_status()
            client.put("/config/app.color", json={"value": "blue"}).raise_for_status()
            client.put("/config/app.size", json={"value": 5}).raise_for_status()
            client.delete("/config/app.gone").raise_for_status()
    finally:
        server.stop()

    # Restart with the file unchanged: nothing reverted, the API's values kept without a conflict.
    line = restarts.cycle()
    assert "4 kept as changed through the API" in line and "conflict" not in line, line

    # The file now changes name (also changed by the API: conflict, API wins), size to the API's own value (they
    # agree), and gone (deleted by the API: a conflict, stays deleted); color is unchanged in the file (kept).
    config.write_text("app:\n  name: three\n  color: red\n  size: 5\n  gone: y\n  new: fresh\n")
    server = restarts.start()
    try:
        line = banner(server)
        assert "1 created" in line and "1 kept" in line and "2 conflict(s)" in line, line
        assert "app.gone, app.name" in line or "app.name, app.gone" in line
        assert read(server, "app.name")["value"] == "from-api"
        assert read(server, "app.color")["value"] == "blue"
        assert read(server, "app.new")["value"] == "fresh"
        assert read(server, "app.gone")["error"]["code"] == "not_found"
    finally:
        server.stop()

    # Conflicts are named at every start until the two agree.
    assert "2 conflict(s)" in restarts.cycle()
    config.write_text("app:\n  name: from-api\n  color: red\n  size: 5\n  new: fresh\n")
    line = restarts.cycle()
    assert "conflict" not in line and "1 kept" in line, line


def test_a_first_start_over_keys_the_api_wrote_reverts_nothing(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, root_token=TOKEN).start()
    try:
        with server.client() as client:
            client.put("/config/db.host", json={"value": "api-host"}).raise_for_status()
    finally:
        server.stop()
    config = tmp_path / "config.json"
    config.write_text('{"db": {"host": "file-host", "port": 5432}}')
    line = Restarts(tmp_path, config).cycle()
    assert "1 created" in line and "1 conflict(s)" in line and "db.host" in line, line
    server = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "after.log").start()
    try:
        assert read(server, "db.host")["value"] == "api-host"
    finally:
        server.stop()


def test_a_dotenv_config_file(tmp_path):
    config = tmp_path / ".env"
    config.write_text('DATABASE__HOST="db.internal" # the primary\nLEAK=${TESSERA_ROOT_TOKEN}\nMULTI="a\nb"\n')
    server = Restarts(tmp_path, config).start()
    try:
        assert "3 created" in banner(server)
        assert read(server, "database.host")["value"] == "db.internal"
        assert read(server, "leak")["value"] == "${TESSERA_ROOT_TOKEN}"  # interpolation is off
        assert read(server, "multi")["value"] == "a\nb"
    finally:
        server.stop()


def test_watch_config_applies_edits_while_running(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("svc:\n  level: info\n  owner: file\n")
    server = Restarts(tmp_path, config, "--watch-config").start()
    try:
        assert "Watching" in server.log()
        with server.client() as client:
            client.put("/config/svc.owner", json={"value": "api"}).raise_for_status()
        time.sleep(1.1)  # a new modification time for the edit
        config.write_text("svc:\n  level: debug\n  owner: file2\n")
        assert wait_for(lambda: read(server, "svc.level").get("value") == "debug", timeout=20)
        assert read(server, "svc.owner")["value"] == "api"  # the API's change wins here too
        assert wait_for(lambda: "Reloaded" in server.log() and "svc.owner" in server.log(), timeout=10)
        config.write_text("svc: [broken\n")
        assert wait_for(lambda: "warning: --watch-config" in server.log(), timeout=20)
        assert read(server, "svc.level")["value"] == "debug"  # a bad edit changes nothing and stops nothing
        config.write_text("svc:\n  level: warn\n  owner: file2\n")
        assert wait_for(lambda: read(server, "svc.level").get("value") == "warn", timeout=20)
    finally:
        server.stop()
