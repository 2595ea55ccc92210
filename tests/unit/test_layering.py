"""core/'s domain modules import no I/O library: boto3, FastAPI, SQLite, httpx stay in adapters and handlers."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
FORBIDDEN = {
    "boto3", "botocore", "fastapi", "starlette", "sqlite3", "httpx", "uvicorn", "mangum", "moto",
    "tessera.handlers", "tessera.local", "tessera.client", "tessera.core.backends",
}  # fmt: skip


def _root(module: str) -> set[str]:
    """``boto3.session`` → {"boto3"}; ``tessera.core.backends.sqlite`` → {"tessera", "tessera.core", "tessera.core.backends"}."""
    parts = module.split(".")
    return {".".join(parts[:n]) for n in range(1, min(len(parts), 3) + 1)} if parts[0] == "tessera" else {parts[0]}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                roots |= _root(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots |= _root(node.module)
    return roots


def test_core_domain_imports_no_io_library():
    offenders = {}
    for path in CORE.glob("*.py"):
        bad = imported_roots(path) & FORBIDDEN
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_formats_round_trip():
    from tessera.core.formats import flatten, nest, parse_dotenv, to_dotenv

    flat = dict(flatten({"database": {"host": "db", "port": 5432}, "api-key": "a b"}))
    assert nest(flat) == {"database": {"host": "db", "port": 5432}, "api-key": "a b"}
    assert to_dotenv(flat) == 'API_KEY="a b"\nDATABASE_HOST=db\nDATABASE_PORT=5432\n'
    assert parse_dotenv('export DATABASE__HOST="db"\nAPI_KEY=x # note\n') == {"database.host": "db", "api_key": "x"}


def test_refused_settings_never_echo_secrets():
    import pytest
    from pydantic import ValidationError

    from tessera.core.settings import Settings

    with pytest.raises(ValidationError) as info:
        Settings(root_token="short-secret-x", master_key="bWFzdGVyLWtleS1tYXRlcmlhbA==")
    assert "short-secret-x" not in str(info.value)
    with pytest.raises(ValidationError) as info:
        Settings(backend="aws", master_key="bWFzdGVyLWtleS1tYXRlcmlhbA==", root_token="a-long-enough-root-token")
    assert "bWFzdGVy" not in str(info.value) and "a-long-enough-root-token" not in str(info.value)
    assert "a-long-enough-root-token" not in repr(Settings(root_token="a-long-enough-root-token"))


def test_dotenv_export_is_safe_to_source(tmp_path):
    import subprocess

    from tessera.core.formats import parse_dotenv, to_dotenv

    nasty = {"a": "hi `touch pwned1` $(touch pwned2) ${HOME} \"q\" \\ 'single'\nline two"}
    env_file = tmp_path / "x.env"
    env_file.write_text(to_dotenv(nasty))
    result = subprocess.run(["bash", "-c", f"set -a; . {env_file}; printf %s \"$A\""], cwd=tmp_path, capture_output=True, text=True)
    assert not (tmp_path / "pwned1").exists() and not (tmp_path / "pwned2").exists()
    assert result.stdout == nasty["a"].replace("\n", "\\n") or result.stdout == nasty["a"]
    assert parse_dotenv(env_file.read_text()) == nasty


def test_import_size_is_bounded_against_alias_bombs():
    import pytest

    from tessera.core.errors import InvalidRequest, PayloadTooLarge
    from tessera.core.formats import flatten, parse_content

    bomb = "a: &a {x0: 1, x1: 1, x2: 1, x3: 1, x4: 1, x5: 1, x6: 1, x7: 1, x8: 1, x9: 1}\n"
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} {{" + ", ".join(f"y{i}: *{previous}" for i in range(10)) + "}\n"
    with pytest.raises(PayloadTooLarge):
        parse_content("yaml", bomb)  # measured per distinct object, before anything expands it
    with pytest.raises(InvalidRequest):
        flatten({f"k{i}": i for i in range(10_001)})  # the key bound, counted as leaves are produced
    nested = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidRequest):
        parse_content("json", '{"v": ' + nested + "}")
