"""The dev start (issue 12 §7): ``make run`` installs only what running needs, the banner prints the ``export``
lines to paste, the dev console shows one short line per request, and dotenv content is parsed with interpolation
off (``${TESSERA_ROOT_TOKEN}`` in an imported file stays text, also on a server whose environment holds it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO, ServerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
SCRIPT = str(Path(sys.executable).with_name("tessera"))


def test_make_run_installs_only_what_running_needs(tmp_path):
    planned = subprocess.run(["make", "-n", "run", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert planned.returncode == 0, planned.stderr
    installs = [line for line in planned.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[server,cli]'"], planned.stdout
    assert "tessera serve --dev" in planned.stdout


def test_the_dev_banner_and_one_short_line_per_request(tmp_path):
    server = ServerProcess(tmp_path / ".tessera", extra_args=["--dev"]).start()
    try:
        banner = server.log()
        token = (tmp_path / ".tessera" / "root-token").read_text().strip()
        assert f"  export TESSERA_ADDR={server.url}\n" in banner and f"  export TESSERA_TOKEN={token}\n" in banner
        assert "$TOKEN" not in banner  # every variable the banner uses, it sets
        # The pasted lines work: the CLI reads them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        exports = dict(re.findall(r"^  export (TESSERA_\w+)=(\S+)$", banner, re.M))
        result = subprocess.run([SCRIPT, "get", "database.host"], env={**env, **exports}, capture_output=True, text=True,
                                timeout=60)
        assert result.stdout == "db.internal\n", result.stderr
        before = len(server.log().splitlines())
        with server.client(token) as client:
            client.get("/config/app.name").raise_for_status()
            assert client.get("/config/nothing.here").status_code == 404
        assert wait_for(lambda: "GET /config/nothing.here 404" in server.log(), timeout=10)
        request_lines = server.log().splitlines()[before:]
        assert any(re.fullmatch(r"\d\d:\d\d:\d\d GET /config/app\.name 200 \d+\.\dms", line) for line in request_lines), request_lines
        assert all(len(line) < 200 for line in request_lines)  # short lines, never the JSON audit record
        assert not any('"audit"' in line for line in request_lines)
    finally:
        server.stop()


def test_dotenv_interpolation_stays_off(tmp_path, monkeypatch):
    from tessera.core.formats import parse_content

    monkeypatch.setenv("TESSERA_ROOT_TOKEN", "tsr_must-never-leak-0123456789")
    parsed = parse_content("dotenv", "A=${TESSERA_ROOT_TOKEN}\nB=\"${AWS_SECRET_ACCESS_KEY:-x}\"\nC=$HOME\n")
    assert parsed == {"a": "${TESSERA_ROOT_TOKEN}", "b": "${AWS_SECRET_ACCESS_KEY:-x}", "c": "$HOME"}

    root = "tsr_dev-start-root-token-0123456789ab"
    server = ServerProcess(tmp_path / "data", env={"TESSERA_ROOT_TOKEN": root}).start()
    try:
        with server.client(root) as client:
            answer = client.post("/config/import", json={"format": "dotenv", "content": "LEAK=${TESSERA_ROOT_TOKEN}\n"})
            assert answer.json()["created"] == 1, answer.text
            assert client.get("/config/leak").json()["value"] == "${TESSERA_ROOT_TOKEN}"
    finally:
        server.stop()
