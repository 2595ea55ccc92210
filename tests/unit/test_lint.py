"""The style rules that tools can hold: ruff on the whole tree, mypy on every package (DESIGN.md, rule 8)."""

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


def test_mypy_is_clean_on_every_package():
    """tessera.core, .handlers, .local and .client in one run (check_untyped_defs on: bodies of unannotated
    functions are checked too). The SDK is also held to ``--strict`` (tests/unit/test_sdk_static.py)."""
    from tests.typecheck import FOLDERS, REPO, run

    assert set(FOLDERS) == {"core", "handlers", "local", "client"}
    result = run(list(FOLDERS))
    assert result.returncode == 0, result.stdout + result.stderr
    checked = int(result.stdout.rsplit("no issues found in ", 1)[1].split()[0])
    on_disk = sum(1 for folder in FOLDERS for path in (REPO / folder).rglob("*.py"))
    assert checked >= on_disk, f"mypy checked {checked} files, the packages hold {on_disk}"


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
