"""core/'s domain modules import no I/O library: boto3, FastAPI, SQLite, httpx stay in adapters and handlers."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
FORBIDDEN = {"boto3", "botocore", "fastapi", "starlette", "sqlite3", "httpx", "uvicorn", "mangum", "moto", "handlers", "local", "client"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("core.backends"):
                roots.add("core.backends")
    return roots


def test_core_domain_imports_no_io_library():
    offenders = {}
    for path in CORE.glob("*.py"):
        bad = imported_roots(path) & (FORBIDDEN | {"core.backends"})
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_formats_round_trip():
    from core.formats import flatten, nest, parse_dotenv, to_dotenv

    flat = dict(flatten({"database": {"host": "db", "port": 5432}, "api-key": "a b"}))
    assert nest(flat) == {"database": {"host": "db", "port": 5432}, "api-key": "a b"}
    assert to_dotenv(flat) == 'API_KEY="a b"\nDATABASE_HOST=db\nDATABASE_PORT=5432\n'
    assert parse_dotenv('export DATABASE__HOST="db"\nAPI_KEY=x # note\n') == {"database.host": "db", "api_key": "x"}


def test_refused_settings_never_echo_secrets():
    import pytest
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError) as info:
        Settings(root_token="short-secret-x", master_key="bWFzdGVyLWtleS1tYXRlcmlhbA==")
    assert "short-secret-x" not in str(info.value)
    with pytest.raises(ValidationError) as info:
        Settings(backend="aws", master_key="bWFzdGVyLWtleS1tYXRlcmlhbA==", root_token="a-long-enough-root-token")
    assert "bWFzdGVy" not in str(info.value) and "a-long-enough-root-token" not in str(info.value)
    assert "a-long-enough-root-token" not in repr(Settings(root_token="a-long-enough-root-token"))


def test_dotenv_export_is_safe_to_source(tmp_path):
    import subprocess

    from core.formats import parse_dotenv, to_dotenv

    nasty = {"a": "hi `touch pwned1` $(touch pwned2) ${HOME} \"q\" \\ 'single'\nline two"}
    env_file = tmp_path / "x.env"
    env_file.write_text(to_dotenv(nasty))
    result = subprocess.run(["bash", "-c", f"set -a; . {env_file}; printf %s \"$A\""], cwd=tmp_path, capture_output=True, text=True)
    assert not (tmp_path / "pwned1").exists() and not (tmp_path / "pwned2").exists()
    assert result.stdout == nasty["a"].replace("\n", "\\n") or result.stdout == nasty["a"]
    assert parse_dotenv(env_file.read_text()) == nasty


def test_import_size_is_bounded_against_alias_bombs():
    import pytest

    from core.errors import InvalidRequest
    from core.formats import flatten, parse_content

    bomb = "a: &a {x0: 1, x1: 1, x2: 1, x3: 1, x4: 1, x5: 1, x6: 1, x7: 1, x8: 1, x9: 1}\n"
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} {{" + ", ".join(f"y{i}: *{previous}" for i in range(10)) + "}\n"
    document = parse_content("yaml", bomb)  # aliases share objects: loading is cheap
    with pytest.raises(InvalidRequest):
        flatten(document)  # expanding is what the bound stops, early
    nested = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidRequest):
        parse_content("json", '{"v": ' + nested + "}")
