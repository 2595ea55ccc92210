"""``python -m tests.cluster emulator --host H --port P`` or ``python -m tests.cluster up`` (from the repository root)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    emulator = commands.add_parser("emulator", help="the local AWS stand-in (moto, patched to hold load)")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.command == "emulator":
        from tests.cluster.emulator import serve

        serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
