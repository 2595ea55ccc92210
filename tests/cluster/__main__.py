"""``python -m tests.cluster emulator --host H --port P`` or ``python -m tests.cluster up`` (from the repository root)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    emulator = commands.add_parser("emulator", help="the local AWS stand-in (moto, patched to hold load)")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=5000)
    up = commands.add_parser("up", help="the emulator and three `tessera serve --backend aws` nodes; prints URLs and the root token")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--emulator-port", type=int, default=0, help="default: any free port")
    up.add_argument("--workdir", type=Path, default=None, help="logs and data (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if args.command == "emulator":
        from tests.cluster.emulator import serve

        serve(args.host, args.port)
    elif args.command == "up":
        from tests.cluster.harness import up as start_cluster

        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tessera-cluster-"))
        start_cluster(workdir, args.nodes, args.emulator_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
