"""A data directory written by release 0.1 (tests/data/release-0.1, made by that release's `tessera serve`)
keeps working: values, secrets, environments, tokens, policies and its audit chain, extended by new records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.servers import ServerProcess

RELEASE = Path(__file__).resolve().parents[1] / "data" / "release-0.1"

pytestmark = pytest.mark.slow


@pytest.fixture
def old_data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    for name in ("tessera.db", "keyring.json"):
        shutil.copy2(RELEASE / name, data / name)
    (data / "keyring.json").chmod(0o600)
    return data


def test_a_release_0_1_data_directory_is_served_and_extended(old_data_dir):
    tokens = json.loads((RELEASE / "tokens.json").read_text())
    server = ServerProcess(old_data_dir).start()
    try:
        with server.client(tokens["root_token"]) as root:
            assert root.get("/config/database.host").json()["value"] == "db2.internal"
            assert root.get("/config/database.host?env=prod").json()["value"] == "db.prod"
            assert root.get("/config/database.password").json()["value"] == "s3cr3t-old-release"
            assert [v["version"] for v in root.get("/config/history/database.host").json()["versions"]] == [2, 1]
            assert root.put("/config/database.port", json={"value": 5432}).status_code == 201
            listing = root.get("/config?limit=2").json()
            assert [k["key"] for k in listing["keys"]] == ["database.host", "database.password"] and listing["next"]
            old_audit = root.get("/audit?limit=1000&phase=all").json()["entries"]
            assert any(e["action"] == "policy.write" for e in old_audit)  # written by the old release
        with server.client(tokens["app_token"]) as app:
            assert app.get("/config/database.password").json()["value"] == "s3cr3t-old-release"
            assert app.put("/config/database.host", json={"value": "x"}).status_code == 403
    finally:
        server.stop()
    from typer.testing import CliRunner

    from tessera.client.cli import app as cli

    result = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(old_data_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["entries"] > 16  # the 16 old records and the new ones, one chain
