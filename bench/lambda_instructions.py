"""Instructions executed by the Lambda entry's import + init (valgrind's callgrind): a figure the machine's load
does not move, to compare builds where wall and CPU times are too noisy (a shared machine).

    .venv/bin/python infra/bundle.py --native --python-version 3.11 --out /tmp/tessera-bundle
    .venv/bin/python -m bench.lambda_instructions --bundle /tmp/tessera-bundle [--baseline DIR]

``--baseline DIR``: a directory holding an older ``tessera/`` package (``core`` and ``handlers``) whose entry built
lazily (``_build()`` on the first request); it runs with this venv's packages. Each figure is the whole process's
count less an empty interpreter's (``-c pass``, with or without ``site``), so it is import + init alone. About a
minute per figure (callgrind runs the interpreter some 50x slower).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from bench.lambda_cold import CHILD, environment

LAZY_CHILD = "import tessera.handlers.lambda_ as entry\nentry._build()\n"


def instructions(command: list[str], env: dict[str, str], cwd: str) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                         env={**env, "PYTHONMALLOC": "malloc"}, cwd=cwd, capture_output=True, text=True, timeout=900)  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a directory built by infra/bundle.py --native")
    parser.add_argument("--baseline", help="a directory with an older tessera/ package (lazy build)")
    args = parser.parse_args()
    python, repo = sys.executable, str(__import__("pathlib").Path(__file__).resolve().parents[1])
    empty_site = instructions([python, "-c", "pass"], environment("handler"), repo)
    report: dict[str, float] = {}
    if args.baseline:
        env = {**environment("handler"), "AWS_LAMBDA_FUNCTION_NAME": ""}
        report["baseline"] = instructions([python, "-c", LAZY_CHILD], env, args.baseline) - empty_site
    report["venv"] = instructions([python, "-c", CHILD], environment("handler"), repo) - empty_site
    if args.bundle:
        empty = instructions([python, "-S", "-c", "pass"], environment("handler", args.bundle), args.bundle)
        report["bundle"] = instructions([python, "-S", "-c", CHILD], environment("handler", args.bundle), args.bundle) - empty
    if "baseline" in report:
        report.update({f"{name}_vs_baseline": round(value / report["baseline"], 3) for name, value in list(report.items())
                       if name != "baseline"})  # fmt: skip
    print(json.dumps({name: (f"{value / 1e6:,.0f} M" if value > 10 else value) for name, value in report.items()}, indent=2))


if __name__ == "__main__":
    main()
