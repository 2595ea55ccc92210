"""``make fuzz``: the long schemathesis run (issue 13 §2) against a real ``tessera serve``, every phase (coverage,
fuzzing, stateful), with the root token and then a restricted one, every check of ``test_fuzz.py`` on. Prints the
figures ``docs/reliability.md`` records; exits non-zero if any check failed.

    .venv/bin/python -m tests.api.fuzz_long --seconds 120
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from tests.api.test_fuzz import ROOT_TOKEN, run_schemathesis, seed
from tests.servers import ServerProcess


def audited(server: ServerProcess) -> list[dict]:
    with server.client() as root:
        return root.get("/audit?limit=1000&phase=all").json()["entries"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=120, help="time budget of each token's run")
    parser.add_argument("--examples", type=int, default=100, help="examples per operation and phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", root_token=ROOT_TOKEN,
                               env={"TESSERA_AUTH_FAILURE_LIMIT": "1000000", "TESSERA_MAX_WATCH_SECONDS": "0.3"}).start()  # fmt: skip
        failed = False
        try:
            restricted = seed(server)
            # The restricted token first: the root token's stateful phase revokes tokens it lists (a link).
            for name, token in (("restricted", restricted), ("root", ROOT_TOKEN)):
                started = time.monotonic()
                report = Path(tmp) / f"{name}.ndjson"
                code, output = run_schemathesis(server, token, "coverage,fuzzing,stateful", args.examples, report,
                                                 "--max-time", str(args.seconds), "--continue-on-failure", output=True)  # fmt: skip
                seconds = time.monotonic() - started
                cases = re.search(r"(\d[\d,]*) generated", output)
                links = re.search(r"API Links:\s+(\d+) covered / (\d+)", output)
                issues = re.search(r"=+ (.*(?:issues? found|No issues found).*?) =+", output)
                print(f"{name}: exit {code}, {seconds:.0f} s, {cases.group(1) if cases else '?'} test cases, "
                      f"links {links.group(1) + '/' + links.group(2) if links else '?'}, "
                      f"{issues.group(1) if issues else 'see output'}", flush=True)  # fmt: skip
                if code != 0:
                    failed = True
                    print(output[-20000:])
            entries = audited(server)
            statuses: dict[int, int] = {}
            for entry in entries:
                statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
            writes = sum(1 for e in entries if e["action"] == "config.write" and e["status"] in (200, 201))
            print(f"server: the {len(entries)} most recent audited requests by status {dict(sorted(statuses.items()))}; "
                  f"config writes committed among them: {writes}; 5xx: {sum(n for s, n in statuses.items() if s >= 500)}")  # fmt: skip
            if "Traceback" in server.log():
                failed = True
                print("the server logged a traceback:\n" + server.log()[-5000:])
        finally:
            server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
