"""Cold start of the Lambda entry on this machine: import + init of ``tessera.handlers.lambda_`` in fresh processes.

Each run starts a new interpreter with Lambda's environment (``AWS_LAMBDA_FUNCTION_NAME``, ``_HANDLER``, the
template's ``TESSERA_*`` variables, fake credentials), so importing the module builds everything at module level as
Lambda's init phase does (settings, botocore clients, stores, the app or the live side). No network: building does
no I/O. Reported: median and minimum of wall time and of CPU time (CPU time is what a loaded, shared machine
disturbs least), over ``--runs`` processes per handler.

    .venv/bin/python -m bench.lambda_cold --runs 15
    .venv/bin/python infra/bundle.py --native --python-version 3.11 --out /tmp/tessera-bundle
    .venv/bin/python -m bench.lambda_cold --bundle /tmp/tessera-bundle    # what Lambda runs: the slim bundle alone

``--bundle`` runs each child with ``-S`` (no site-packages) and the bundle as its only path, as Lambda's runtime
imports from ``/var/task``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import time
t0, c0 = time.perf_counter(), time.process_time()
import tessera.handlers.lambda_ as entry
t1, c1 = time.perf_counter(), time.process_time()
assert entry._handler is not None or entry._live is not None, "init failed"
print(f"{(t1 - t0) * 1000:.1f} {(c1 - c0) * 1000:.1f}")
"""


def environment(handler: str, bundle: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TESSERA_", "PYTHON"))}
    if bundle:
        env["PYTHONPATH"] = bundle
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": "tessera-read", "_HANDLER": f"tessera.handlers.lambda_.{handler}",
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "TESSERA_BACKEND": "aws", "TESSERA_BUCKET": "tessera-values", "TESSERA_TABLE": "tessera",
        "TESSERA_KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        "TESSERA_ROOT_TOKEN_SHA256": "0" * 64, "TESSERA_CHANGE_LOG_RETENTION_DAYS": "30",
        "TESSERA_AUDIT_RETENTION_DAYS": "90", "POWERTOOLS_SERVICE_NAME": "tessera",
        "TESSERA_WS_ENDPOINT": "https://abc123.execute-api.us-east-1.amazonaws.com/live",
    })  # fmt: skip
    return env


def command(bundle: str | None) -> list[str]:
    return [sys.executable, *(["-S"] if bundle else []), "-c", CHILD]


def measure(handler: str, runs: int, bundle: str | None = None) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(runs):
        out = subprocess.run(command(bundle), env=environment(handler, bundle), capture_output=True, text=True, cwd=bundle,
                             timeout=120, check=True).stdout.split()  # fmt: skip
        walls.append(float(out[0]))
        cpus.append(float(out[1]))
    return {"wall_median_ms": statistics.median(walls), "wall_min_ms": min(walls),
            "cpu_median_ms": statistics.median(cpus), "cpu_min_ms": min(cpus)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--bundle", help="a directory built by infra/bundle.py (for this machine: --native)")
    args = parser.parse_args()
    subprocess.run(command(args.bundle), env=environment("handler", args.bundle), capture_output=True, timeout=120, cwd=args.bundle)
    report: dict[str, object] = {"bundle": args.bundle or "the venv"}
    report.update({handler: measure(handler, args.runs, args.bundle) for handler in ("handler", "live_handler")})
    report["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
