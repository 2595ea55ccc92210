"""``make bench-quick`` end to end: it completes and prints its table (the numbers are not checked).

Works whether or not etcd and wrk are installed (their rows then say "absent" and the built-in load generator
stands in for wrk).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import REPO

pytestmark = pytest.mark.slow


def test_bench_quick_completes_and_prints_the_table(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--docs", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "req/s" in out and "p99 ms" in out and "issue 8 targets:" in out, out[-3000:]
    for row in ("bare ASGI app", "Tessera GET plain key, service token, 1 worker", "watch latency, Tessera /ws",
                "GET /config over", "import tessera.handlers.lambda_"):  # fmt: skip
        assert row in out, out[-3000:]
    section = (tmp_path / "benchmarks.md").read_text()
    assert "BEGIN make-bench" in section and "END make-bench" in section
