"""Fills a data directory before its server starts: many keys, or many versions of one key, in seconds.

Runs in its own process (the harness starts it) and writes through Tessera's own service layer (``build`` of
``tessera.core.backends.factory``, ``ConfigService.put`` as the root principal), so the data is exactly what the
server would have written. Only durability is relaxed: every SQLite connection this process opens runs with
``synchronous=OFF`` (an fsync per put would make 100,000 keys take minutes); the file is complete and consistent
when the process exits, and the server opens it with its own settings.

    python -m bench.seed --data-dir D --keys scale.k:100000 --versions scale.v10:10 --versions scale.v10k:10000
    python -m bench.seed --data-dir D --keys list.k:2000@l2k     # 2,000 keys in namespace l2k
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path


class _NoSyncConnection(sqlite3.Connection):
    """Turns the store's ``PRAGMA synchronous=FULL`` into ``OFF``: seeding is not measured and need not be durable."""

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.replace(" ", "").lower().startswith("pragmasynchronous"):
            sql = "PRAGMA synchronous=OFF"
        return super().execute(sql, *args)  # type: ignore[arg-type]


def _patch_sqlite() -> None:
    original = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        kwargs.setdefault("factory", _NoSyncConnection)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    sqlite3.connect = connect  # type: ignore[assignment]


def _spec(text: str) -> tuple[str, int, str]:
    """``prefix:count[@namespace]``."""
    name, _, rest = text.partition(":")
    count, _, namespace = rest.partition("@")
    return name, int(count), namespace or "default"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--keys", action="append", default=[], help="prefix:count[@namespace]: keys prefix.000000 …")
    parser.add_argument("--versions", action="append", default=[], help="key:count[@namespace]: that many versions of key")
    args = parser.parse_args()
    _patch_sqlite()
    from tessera.core.backends.factory import build
    from tessera.core.model import ROOT, Scope
    from tessera.core.settings import Settings

    args.data_dir.mkdir(parents=True, exist_ok=True)
    container = build(Settings.from_env(data_dir=args.data_dir))
    service = container.service
    started = time.perf_counter()
    written = 0
    try:
        for spec in args.keys:
            prefix, count, namespace = _spec(spec)
            scope = Scope(namespace=namespace)
            for index in range(count):
                service.put(ROOT, scope, f"{prefix}.{index:06d}", f"value-{index}")
            written += count
        for spec in args.versions:
            key, count, namespace = _spec(spec)
            scope = Scope(namespace=namespace)
            for index in range(count):
                service.put(ROOT, scope, key, index)
            written += count
    finally:
        container.close()
    print(f"seeded {written} writes in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
