"""Shared helpers of the secrets tests: raw storage bytes, and every form a canary could leak in."""

from __future__ import annotations

import base64
import json
from pathlib import Path


def leak_forms(canary: str) -> list[bytes]:
    """The canary as plaintext, JSON-escaped, base64 (several alignments), hex, and UTF-16."""
    raw = canary.encode()
    forms = [raw, json.dumps(canary).encode(), raw.hex().encode(), canary.encode("utf-16-le")]
    for shift in range(3):
        chunk = base64.b64encode(b"\0" * shift + raw)[4:-4]  # the stable middle of each alignment
        forms.append(chunk)
    return forms


def find_leaks(blob: bytes, canary: str) -> list[bytes]:
    return [form for form in leak_forms(canary) if form in blob]


def sqlite_files(data_dir: Path) -> dict[str, bytes]:
    """The embedded store's database file and its WAL and shared-memory files, whatever exists now."""
    return {p.name: p.read_bytes() for p in Path(data_dir).iterdir() if p.name.startswith("tessera.db")}
