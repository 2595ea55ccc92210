"""Is reusing a data key across writes worth it? (issue 4: "writes may reuse a data key ... if measured worthwhile")

Measures, in one run on this machine, a fresh data key per write (what Tessera does: the baseline) against a
data key reused for up to ``--reuse`` writes (a bench-only wrapper; Tessera has no such mode):

- ``seal`` alone, local keyring: the whole crypto cost of a write;
- ``ConfigService.put`` on the embedded backend (SQLite, WAL, ``synchronous=FULL``);
- ``ConfigService.put`` on the aws backend under in-process moto, and one KMS ``GenerateDataKey`` alone (the
  call reuse would save), with the KMS calls counted per put. moto's DynamoDB transactions are slow and get
  slower as the table grows, so absolute aws figures mean little; the variants alternate in blocks so the
  drift falls on both alike.

Prints medians, throughput and ratios against the fresh-key baseline of the same backend.

    .venv/bin/python -m bench.data_key_reuse [--writes 400] [--aws-writes 60] [--reuse 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")

import moto  # noqa: E402,F401  (before any boto3 session)

from tessera.core import crypto  # noqa: E402
from tessera.core.backends.keyring import LocalKeyring  # noqa: E402
from tessera.core.model import ROOT, Scope  # noqa: E402
from tessera.core.ports import DataKey, KeyService  # noqa: E402
from tessera.core.service import ConfigService  # noqa: E402


class ReusingKeyService:
    """Bench only: hands out the same data key for ``uses`` generate calls. It keeps the *first* write's
    encryption context, so a real implementation would have to drop (namespace, env, key, version) from the
    KMS context — the binding this benchmark is weighing against speed."""

    def __init__(self, inner: KeyService, uses: int) -> None:
        self.inner = inner
        self.uses = uses
        self._current: DataKey | None = None
        self._left = 0

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        if self._current is None or self._left == 0:
            self._current = self.inner.generate_data_key(context)
            self._left = self.uses
        self._left -= 1
        return self._current

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        return self.inner.decrypt_data_key(key_id, wrapped, context)


def timed(fn: Callable[[int], object], count: int) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples


def line(name: str, samples: list[float], baseline: list[float] | None = None) -> str:
    median = statistics.median(samples)
    ratio = median / statistics.median(baseline) if baseline else 1.0
    return f"{name:<52} median {median * 1e6:9.1f} us   {1 / median:8.0f} ops/s   {ratio:5.2f}x"


def alternating(variants: dict[str, Callable[[int], object]], rounds: int, block: int) -> dict[str, list[float]]:
    """Blocks of each variant in turn (order flipped every round), so drift — a growing table, a warming
    file, fsync noise — falls on both alike rather than on whichever ran second."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    counter = 0
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            for _ in range(block):
                start = time.perf_counter()
                variants[name](counter)
                samples[name].append(time.perf_counter() - start)
                counter += 1
    return samples


def putter(service: ConfigService, tag: str) -> Callable[[int], object]:
    scope = Scope("bench", "default")
    return lambda i: service.put(ROOT, scope, f"{tag}.k{i % 50}", f"value-{i}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=400, help="puts per variant on the embedded backend")
    parser.add_argument("--aws-writes", type=int, default=60, help="puts per variant on moto")
    parser.add_argument("--reuse", type=int, default=100, help="writes per reused data key")
    args = parser.parse_args()
    scope = Scope("bench", "default")
    value = b'"a value of about forty bytes, as JSON"'

    with tempfile.TemporaryDirectory() as tmp:
        ring = LocalKeyring.load_or_create(Path(tmp) / "keyring.json")
        reusing = ReusingKeyService(ring, args.reuse)
        seals = alternating(
            {"fresh": lambda i: crypto.seal(ring, scope, "k", i + 1, value), "reuse": lambda i: crypto.seal(reusing, scope, "k", i + 1, value)},
            rounds=10, block=500,
        )
        print("seal only (local keyring), 5000 seals of a 40-byte value each")
        print(line("fresh data key per seal (baseline)", seals["fresh"]))
        print(line(f"data key reused for {args.reuse} seals", seals["reuse"], seals["fresh"]))

    from tessera.core.backends.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        ring = LocalKeyring.load_or_create(Path(tmp) / "keyring.json")
        store = SQLiteStore(Path(tmp) / "tessera.db")
        puts = alternating(
            {
                "fresh": putter(ConfigService(store, crypto.CachingKeyService(ring)), "fresh"),
                "reuse": putter(ConfigService(store, crypto.CachingKeyService(ReusingKeyService(ring, args.reuse))), "reuse"),
            },
            rounds=8, block=max(args.writes // 8, 1),
        )
        store.close()
    print(f"\nembedded backend (SQLite, WAL, synchronous=FULL), {len(puts['fresh'])} puts each, alternating blocks")
    print(line("put, fresh data key (baseline)", puts["fresh"]))
    print(line(f"put, data key reused for {args.reuse} writes", puts["reuse"], puts["fresh"]))

    from tessera.core.backends.aws import KmsKeyService
    from tests.aws.support import KEY_ALIAS, moto_target

    with moto_target() as target:
        store = target.store()
        fresh_kms = KmsKeyService(target.clients.kms, KEY_ALIAS)
        reuse_kms = KmsKeyService(target.clients.kms, KEY_ALIAS)
        puts = alternating(
            {
                "fresh": putter(ConfigService(store, crypto.CachingKeyService(fresh_kms)), "fresh"),
                "reuse": putter(ConfigService(store, crypto.CachingKeyService(ReusingKeyService(reuse_kms, args.reuse))), "reuse"),
            },
            rounds=6, block=max(args.aws_writes // 6, 1),
        )
        writes = len(puts["fresh"])
        per_put = {name: kms.calls["kms:GenerateDataKey"] / writes for name, kms in (("fresh", fresh_kms), ("reuse", reuse_kms))}
        context = crypto.encryption_context(scope, "k", 1)
        generate = timed(lambda i: fresh_kms.generate_data_key(context), 200)
    print(f"\naws backend under in-process moto, {writes} puts each, alternating blocks")
    print(line("put, fresh data key (baseline)", puts["fresh"]))
    print(line(f"put, data key reused for {args.reuse} writes", puts["reuse"], puts["fresh"]))
    print(line("  of which: one KMS GenerateDataKey (moto)", generate, puts["fresh"]))
    print(f"  KMS GenerateDataKey calls per put: fresh {per_put['fresh']:.2f}, reused {per_put['reuse']:.2f}")


if __name__ == "__main__":
    main()
