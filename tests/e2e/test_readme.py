"""The README's walk-through runs verbatim against `tessera serve --dev` (only the port differs)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.servers import REPO, ServerProcess

pytestmark = pytest.mark.slow


def walkthrough_script() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    # the walk-through and every later block that talks to $URL, run in order in one shell
    return "\n".join(block for block in blocks if "$URL" in block or "URL=" in block)


def test_readme_walkthrough(tmp_path):
    server = ServerProcess(tmp_path / ".tessera", extra_args=["--dev"]).start()
    try:
        script = walkthrough_script().replace("URL=http://127.0.0.1:8200", f"URL={server.url}")
        script = script.replace("curl -s", "curl -s -w '\\n'")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        codes = []
        for line in lines:
            if line.startswith("{"):
                body = json.loads(line)
                if "error" in body:
                    codes.append(body["error"]["code"])
        # the walk-through shows its refusals on purpose: a lost compare-and-set, a read after delete, a forbidden read
        assert codes == ["version_conflict", "not_found", "forbidden"], result.stdout
        assert "304" in lines
        watched = json.loads(next(line for line in lines if line.startswith('{"revision"')))
        assert [e["key"] for e in watched["events"]] == ["features.new_checkout"]
        assert "DATABASE_PASSWORD=s3cret" in lines
        assert '"value":"jwt-signing-key"' in result.stdout and '"allowed":false' in result.stdout
        assert '"outcome":"denied"' in result.stdout and '"outcome":"allowed"' in result.stdout
    finally:
        server.stop()
