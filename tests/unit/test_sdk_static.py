"""The SDK's own checks that need no server: its docstring examples run, and it is mypy --strict clean."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import pytest

from tessera.client.sdk import _http, client, errors, store, types


@pytest.mark.parametrize("module", [errors, types, store, _http, client], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_mypy_strict_is_clean_on_the_sdk():
    from tests.typecheck import REPO, build_tree

    root = build_tree()
    args = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--strict", "-p", "tessera.client.sdk"]
    result = subprocess.run(args, cwd=root, env={**os.environ, "MYPYPATH": str(root)}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
