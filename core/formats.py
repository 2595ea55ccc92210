"""Config file formats: flattening nested objects into dotted leaves, and json/yaml/dotenv in and out.

>>> flatten({"database": {"host": "db", "port": 5432}, "feature.flag": True})
[('database.host', 'db'), ('database.port', 5432), ('feature.flag', True)]
>>> to_dotenv({"database.host": "db", "api-key": "x"})
'API_KEY=x\\nDATABASE_HOST=db\\n'
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import yaml
from dotenv.main import dotenv_values
from dotenv.parser import parse_stream

from tessera.core.errors import InvalidRequest, PayloadTooLarge

FORMATS = ("json", "yaml", "dotenv")


MAX_IMPORT_KEYS = 10_000
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # an import's size once YAML aliases are expanded (JSON-encoded, estimated)
MAX_VALUE_DEPTH = 64  # the contract's bound on a value's nesting (arrays inside arrays)
MAX_DOCUMENT_DEPTH = 32 + MAX_VALUE_DEPTH  # 32 key segments of objects, then a value nested at most 64 deep


def value_depth(value: Any, limit: int = MAX_VALUE_DEPTH) -> int:
    """How deeply containers nest in ``value`` (``1`` → 0, ``[[1]]`` → 2), counting no further than ``limit + 1``.

    Iterative, and it stops at the first container past ``limit``: a hostile value costs at most one walk of
    what the body parser already produced, never a recursion or an unbounded expansion.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def check_document(document: Any) -> None:
    """Refuse, before any work, a parsed import whose expanded size, depth or key count passes the limits.

    YAML aliases make one parsed object stand in many places, so a few hundred bytes can describe gigabytes
    (an "alias bomb"). Sizes are summed per distinct object, memoized by identity: the cost is linear in what
    the parser built, never in the expansion. A document that refers to itself (``&a [*a]``) is refused too.
    Too big (bytes or keys): ``413 payload_too_large``; too deep or cyclic: ``400 invalid_request``.
    """
    measured: dict[int, tuple[int, int, int]] = {}  # id → (estimated bytes, depth, leaf keys)
    visiting: set[int] = set()
    stack: list[tuple[Any, bool]] = [(document, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        ident = id(node)
        if children_done:
            size, depth, leaves = 2, 0, 0
            is_dict = isinstance(node, dict)
            children: Any = node.values() if isinstance(node, dict) else node
            for child in children:
                if isinstance(child, str):
                    size += len(child) + 3
                    leaves += 1
                elif isinstance(child, (dict, list)):
                    child_size, child_depth, child_leaves = measured[id(child)]
                    size += child_size + 1
                    if child_depth > depth:
                        depth = child_depth
                    leaves += child_leaves if isinstance(child, dict) else 1
                else:
                    size += 9  # a number, true, false or null
                    leaves += 1
            if is_dict:
                size += sum(len(str(name)) + 3 for name in node)
            visiting.discard(ident)
            measured[ident] = (size, depth + 1, leaves)
            if size > MAX_DOCUMENT_BYTES:
                raise PayloadTooLarge(f"the document expands to more than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB (YAML aliases included)")
            if depth + 1 > MAX_DOCUMENT_DEPTH:
                raise InvalidRequest(f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels")
            if leaves > MAX_IMPORT_KEYS:
                raise PayloadTooLarge(f"an import may hold at most {MAX_IMPORT_KEYS} keys")
            continue
        if ident in measured:
            continue
        if ident in visiting:
            raise InvalidRequest("the document refers to itself (a recursive YAML alias)")
        visiting.add(ident)
        if len(visiting) > MAX_DOCUMENT_DEPTH:
            raise InvalidRequest(f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels")
        stack.append((node, True))
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)) and id(child) not in measured:
                stack.append((child, False))


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
    r"""``DATABASE__HOST=db`` → ``{"database.host": "db"}``: lower-cased, segments split on ``__``.

    python-dotenv parses (quotes, ``# comments``, ``export``, multi-line quoted values) with interpolation OFF:
    ``X=${TESSERA_ROOT_TOKEN}`` stays that text. With python-dotenv's default it would be filled in from the
    environment of the process parsing it (the server's), handing any writer the root token or the AWS keys.

    >>> parse_dotenv('QUOTED="a b" # comment\nDATABASE__HOST=db\nLEAK=${HOME}\n')
    {'quoted': 'a b', 'database.host': 'db', 'leak': '${HOME}'}
    """
    double_quoted: dict[str, bool] = {}
    for binding in parse_stream(io.StringIO(content)):
        if binding.error or (binding.key is not None and binding.value is None):
            raise InvalidRequest(f"dotenv line {binding.original.line} is not NAME=value")
        if binding.key is not None:
            double_quoted[binding.key] = binding.original.string.partition("=")[2].lstrip().startswith('"')
    parsed = dotenv_values(stream=io.StringIO(content), interpolate=False)
    values: dict[str, Any] = {}
    for name, value in parsed.items():
        text = value or ""
        if double_quoted.get(name):  # as a shell reads it (and as to_dotenv writes it): \$ is $, \` is `
            text = re.sub(r"\\([$`])", r"\1", text)
        values[".".join(name.lower().split("__"))] = text
    return values


def parse_content(fmt: str, content: str) -> dict[str, Any]:
    """Parse an import body; anything but an object at the top is an ``invalid_request``."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}")
    try:
        if fmt == "json":
            data = json.loads(content)
        elif fmt == "yaml":
            # libyaml's loader when present (several times faster); the same safe constructors either way.
            data = yaml.load(content, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
            if data is None:
                data = {}
        else:
            data = parse_dotenv(content)
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"content is not valid {fmt}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"{fmt} content must hold an object at the top")
    if fmt == "yaml":
        # Only YAML can expand (aliases). JSON's size is its text's (the body is at most 1 MiB) and its depth
        # is bounded per value when each key is checked; dotenv is flat.
        check_document(data)
    return data


def _yaml(flat: dict[str, Any]) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    try:
        return yaml.dump(nest(flat), Dumper=dumper, sort_keys=True, allow_unicode=True)
    except RecursionError:
        pass
    # The emitter recurses per level: values deeper than the contract's limit go in as JSON flow text (JSON's
    # arrays and strings are YAML flow collections and scalars), through placeholders the emitter leaves alone.
    deep: dict[str, str] = {}
    shallow: dict[str, Any] = {}
    for key, value in flat.items():
        if value_depth(value) > MAX_VALUE_DEPTH:
            placeholder = f"tessera-deep-value-{len(deep)}-{id(value)}"
            deep[placeholder] = iterative_dumps(value)
            shallow[key] = placeholder
        else:
            shallow[key] = value
    text = yaml.dump(nest(shallow), Dumper=dumper, sort_keys=True, allow_unicode=True)
    for placeholder, flow in deep.items():
        text = text.replace(placeholder, flow, 1)
    return text


def iterative_dumps(document: Any) -> str:
    """JSON text of ``document`` with an explicit stack: no recursion, whatever the nesting."""
    out: list[str] = []
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, _Token):
            out.append(item.text)
        elif isinstance(item, dict):
            out.append("{")
            pairs = list(item.items())
            stack.append(_Token("}"))
            for index in range(len(pairs) - 1, -1, -1):
                name, value = pairs[index]
                stack.append(value)
                stack.append(_Token(json.dumps(str(name), ensure_ascii=False) + ":"))
                if index:
                    stack.append(_Token(","))
        elif isinstance(item, list):
            out.append("[")
            stack.append(_Token("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Token(","))
        else:
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)


class _Token:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text




def render(fmt: str, flat: dict[str, Any]) -> tuple[str, str]:
    """Render an export; returns (body, media type). Total: values nested far deeper than the contract allows
    today (stored by an older release) render too."""
    if fmt == "json":
        try:
            return json.dumps(nest(flat), indent=2, ensure_ascii=False) + "\n", "application/json"
        except RecursionError:
            return iterative_dumps(nest(flat)) + "\n", "application/json"
    if fmt == "yaml":
        return _yaml(flat), "application/yaml"
    if fmt == "dotenv":
        return to_dotenv(flat), "text/plain; charset=utf-8"
    raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}")
