"""The style rules that tools can hold: ruff on the whole tree, mypy on core/ (DESIGN.md, rule 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import REPO

pytestmark = pytest.mark.slow


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "core", "handlers", "local", "client", "tests", "bench"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_core():
    result = subprocess.run([sys.executable, "-m", "mypy", "core"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
