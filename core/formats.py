"""Config file formats: flattening nested objects into dotted leaves, and json/yaml/dotenv in and out.

>>> flatten({"database": {"host": "db", "port": 5432}, "feature.flag": True})
[('database.host', 'db'), ('database.port', 5432), ('feature.flag', True)]
>>> to_dotenv({"database.host": "db", "api-key": "x"})
'API_KEY=x\\nDATABASE_HOST=db\\n'
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tessera.core.errors import InvalidRequest

FORMATS = ("json", "yaml", "dotenv")


MAX_IMPORT_KEYS = 10_000


def flatten(values: dict[str, Any], prefix: str = "", max_keys: int = MAX_IMPORT_KEYS) -> list[tuple[str, Any]]:
    """Nested or dotted objects → ``[(dotted.key, leaf value)]``; empty objects contribute nothing.

    Stops with ``invalid_request`` past ``max_keys`` leaves: YAML aliases can make a few hundred bytes expand
    to millions of leaves (an "alias bomb"), so the count is checked as leaves are produced, not afterwards.
    """
    leaves: list[tuple[str, Any]] = []
    # Depth-first in document order, with an explicit stack: no recursion limit to hit on deep documents.
    stack = [(prefix, iter(values.items()))]
    while stack:
        base, items = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        name, value = entry
        key = f"{base}.{name}" if base else str(name)
        if isinstance(value, dict):
            stack.append((key, iter(value.items())))
            continue
        leaves.append((key, value))
        if len(leaves) > max_keys:
            raise InvalidRequest(f"an import may hold at most {max_keys} keys")
    return leaves


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` → ``{"a": {"b": 1, "c": 2}}``."""
    tree: dict[str, Any] = {}
    for key in sorted(flat):
        node = tree
        *parents, leaf = key.split(".")
        for segment in parents:
            node = node.setdefault(segment, {})
        node[leaf] = flat[key]
    return tree


def dotenv_name(key: str) -> str:
    """``database.host`` → ``DATABASE_HOST`` (``-`` becomes ``_``): the names ``tessera run`` injects."""
    return key.replace("-", "_").replace(".", "_").upper()


def _dotenv_quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if re.fullmatch(r"[A-Za-z0-9_./:@+-]*", text):
        return text
    # Inside double quotes a shell still expands $ and backticks: escape both, so sourcing the file runs nothing.
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("$", "\\$").replace("`", "\\`")
    )
    return f'"{escaped}"'


def to_dotenv(flat: dict[str, Any]) -> str:
    lines = [f"{dotenv_name(key)}={_dotenv_quote(flat[key])}" for key in sorted(flat, key=dotenv_name)]
    return "".join(line + "\n" for line in lines)


def parse_dotenv(content: str) -> dict[str, Any]:
    """``DATABASE__HOST=db`` → ``{"database.host": "db"}``: lower-cased, segments split on ``__``."""
    values: dict[str, Any] = {}
    for number, raw in enumerate(content.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidRequest(f"dotenv line {number} is not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value)
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[".".join(name.lower().split("__"))] = value
    return values


def parse_content(fmt: str, content: str) -> dict[str, Any]:
    """Parse an import body; anything but an object at the top is an ``invalid_request``."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}")
    try:
        if fmt == "json":
            data = json.loads(content)
        elif fmt == "yaml":
            data = yaml.safe_load(content)
            if data is None:
                data = {}
        else:
            data = parse_dotenv(content)
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"content is not valid {fmt}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"{fmt} content must hold an object at the top")
    return data


def render(fmt: str, flat: dict[str, Any]) -> tuple[str, str]:
    """Render an export; returns (body, media type)."""
    if fmt == "json":
        return json.dumps(nest(flat), indent=2, ensure_ascii=False) + "\n", "application/json"
    if fmt == "yaml":
        return yaml.safe_dump(nest(flat), sort_keys=True, allow_unicode=True), "application/yaml"
    if fmt == "dotenv":
        return to_dotenv(flat), "text/plain; charset=utf-8"
    raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}")
