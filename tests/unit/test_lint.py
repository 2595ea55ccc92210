"""The style rules that tools can hold: ruff on the whole tree, mypy on core/ (DESIGN.md, rule 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import REPO

pytestmark = pytest.mark.slow


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "tessera", "core", "handlers", "local", "client", "tests", "bench"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_core():
    from tests.typecheck import run

    result = run(["core"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


def test_bare_folder_imports_are_banned(tmp_path):
    """Inside the project everything imports ``tessera.…``: a bare ``core`` would be an application's own."""
    probe = REPO / "bench" / "_banned_import_probe.py"
    probe.write_text("from core.errors import NotFound\nimport client.sdk\n\n__all__ = [\"NotFound\", \"client\"]\n")
    try:
        result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "TID251", str(probe)],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert result.returncode == 1 and result.stdout.count("TID251") == 2, result.stdout
