"""mypy over the installed import names (``tessera.core`` …), not the folder names.

mypy cannot follow the editable install's import hook, so this builds a tree of symlinks
(``build/typecheck/tessera/core -> core`` …) that has the installed layout, and runs mypy on it.

    python -m tests.typecheck              # every package: tessera.core, .handlers, .local, .client
    python -m tests.typecheck core handlers

It says which packages it checked before mypy's verdict. ``make lint`` runs it over every package, and
``tests/unit/test_lint.py`` does too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "handlers", "local", "client")


def build_tree(root: Path = REPO / "build" / "typecheck") -> Path:
    package = root / "tessera"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "py.typed"):
        link, target = package / name, REPO / "tessera" / name
        if target.exists() and not link.is_symlink():
            link.symlink_to(target)
    for folder in FOLDERS:
        link = package / folder
        if not link.is_symlink():
            link.symlink_to(REPO / folder, target_is_directory=True)
    return root


def run(folders: list[str]) -> subprocess.CompletedProcess[str]:
    unknown = set(folders) - set(FOLDERS)
    if unknown:
        raise SystemExit(f"unknown package(s) {sorted(unknown)}: choose from {', '.join(FOLDERS)}")
    root = build_tree()
    args = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml")]
    for folder in folders:
        args += ["-p", f"tessera.{folder}"]
    env = {**os.environ, "MYPYPATH": str(root)}
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def packages(folders: list[str]) -> str:
    return ", ".join(f"tessera.{folder}" for folder in folders)


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(FOLDERS)
    print(f"mypy over {packages(chosen)}", flush=True)
    result = run(chosen)
    sys.stdout.write(result.stdout + result.stderr)
    sys.exit(result.returncode)
