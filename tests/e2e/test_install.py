"""The base distribution is the SDK alone: installed into a fresh venv, ``from tessera import Client, AsyncClient``
works and neither the server nor the AWS stack is installed or imported.

How it stays offline and current on a clean CI machine:
- ``make .venv/.installed`` (the install step of ``make test``, while the package index is reachable) fills
  ``.venv/wheelhouse`` with wheels of the base dependencies (httpx, websockets, tenacity, cachetools and theirs) and of the
  build tools (setuptools, wheel). Installing packages is setup, not test traffic.
- This test copies the current source to a temporary folder, builds its wheel there (build isolation on, build tools
  from the wheelhouse, ``--no-index``: no network, nothing written into the repository), creates a bare venv and
  installs that wheel into it with this venv's pip (``pip --python``, ``--no-index --find-links .venv/wheelhouse``). An install that needed anything the base distribution does not declare fails here, and so does
  a heavy dependency sneaking into the base list (it would be missing from the wheelhouse, so pip could not resolve it).
- A wheelhouse that is missing (a venv not made by ``make``) fails with the command that makes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.servers import REPO

pytestmark = pytest.mark.slow
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
SOURCE = ["pyproject.toml", "README.md", "tessera", "core", "handlers", "local", "client"]
HEAVY = ["fastapi", "starlette", "uvicorn", "boto3", "botocore", "aws_lambda_powertools", "mangum", "typer", "rich",
         "cryptography", "pydantic", "yaml"]

PROBE = """
import importlib.util, json, sys
from tessera import AsyncClient, Client, Entry, TesseraError, Unavailable
print(json.dumps({
    "imported": sorted(name for name in sys.modules if name.split(".")[0] in HEAVY),
    "installed": sorted(name for name in HEAVY if importlib.util.find_spec(name) is not None),
    "client": Client.__module__,
    "async_client": AsyncClient.__module__,
}))
"""


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def test_base_install_is_the_sdk_alone(tmp_path):
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `make .venv/.installed` (it is part of `make test`)")
    source = tmp_path / "source"
    for name in SOURCE:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--find-links", WHEELHOUSE,
        "--wheel-dir", dist, source)
    (wheel,) = dist.glob("tessera_config-*.whl")

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)  # this pip installs into it (--python): no ensurepip, no pip in the way
    python = fresh / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    run(*pip, "install", "--quiet", "--no-index", "--find-links", WHEELHOUSE, wheel)

    probe = f"HEAVY = {HEAVY!r}\n{PROBE}"
    found = json.loads(run(python, "-c", probe, cwd=tmp_path).stdout)
    assert found["imported"] == [] and found["installed"] == [], found
    assert found["client"].startswith("tessera.client.sdk") and found["async_client"].startswith("tessera.client.sdk")
    installed = {line.split("==")[0].lower().replace("_", "-") for line in run(*pip, "freeze", "--all").stdout.split()}
    assert {"tessera-config", "httpx", "websockets", "tenacity", "cachetools"} <= installed
    assert not installed & {"fastapi", "uvicorn", "boto3", "typer", "rich", "pydantic", "cryptography"}
