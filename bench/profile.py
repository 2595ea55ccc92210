"""Where a read's time goes: py-spy samples a ``tessera serve`` process while wrk loads its plain GET.

Starts Tessera (embedded backend, 1 process, audit on), seeds the read keys and a service token whose policy is
evaluated, runs wrk on ``GET /config/svc.db_url`` and records the server with ``py-spy record`` (speedscope
format, 100 Hz). Prints the functions with the most self time (the frame on top of the stack) and the most
inclusive time, and keeps the profile file (open it at https://www.speedscope.app or with ``py-spy``'s viewer).

    .venv/bin/python -m bench.profile --seconds 10 --out docs/profiles/read-path.speedscope.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.loadgen import Request, run_wrk, wrk_available
from bench.procs import Processes
from bench.targets import PLAIN_KEY, check_read, seed_reads, start_tessera


def py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


# Leaf frames of a thread that waits for work (py-spy cannot tell these threads idle in this container).
IDLE_LEAVES = {"Condition.wait", "Event.wait", "Queue.get", "SimpleQueue.get", "_worker", "select", "poll", "sleep"}
EVENT_LOOP_C = "Runner.run"  # the loop's own C code (uvloop, httptools, socket I/O, and its epoll wait)


def _frame_name(frame: dict, with_line: bool = False) -> str:
    file = frame.get("file") or ""
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = file.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    line = frame.get("line")
    return f"{frame['name']} ({file}{':' + str(line) if with_line and line else ''})"


def summarise(profile_path: Path, top: int = 10) -> dict:
    """Self and inclusive shares of the busy samples of a speedscope file, per function, and per thread kind."""
    data = json.loads(profile_path.read_text())
    frames = data["shared"]["frames"]
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    busy = idle = 0.0
    for profile in data["profiles"]:
        thread = profile.get("name", "")
        kind = "event loop (main thread)" if "MainThread" in thread else "audit writer" if "audit" in thread else "thread pool" if "worker" in thread.lower() else "other threads"
        for stack, weight in zip(profile["samples"], profile["weights"], strict=False):
            if not stack:
                continue
            leaf = frames[stack[-1]]["name"]
            if leaf in IDLE_LEAVES:
                idle += weight
                continue
            busy += weight
            threads[kind] += weight
            names = [_frame_name(frames[index]) for index in stack]
            self_time[names[-1]] += weight
            for name in set(names):
                inclusive[name] += weight
    busy = busy or 1.0
    return {
        "self": [(name, weight / busy) for name, weight in self_time.most_common(top)],
        "inclusive": [(name, weight / busy) for name, weight in inclusive.most_common(top * 4)],
        "threads": [(name, weight / busy) for name, weight in threads.most_common()],
        "busy_seconds": busy,
        "idle_seconds": idle,
    }


def record(out: Path, seconds: float, rate: int = 100, gil: bool = False) -> tuple[dict, float]:
    """Profile file at ``out``; returns the summary and wrk's req/s while being sampled."""
    spy = py_spy()
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    if not wrk_available():
        raise SystemExit("wrk is not installed: apt-get install wrk")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, Processes() as procs:
        server = start_tessera(procs, Path(tmp), "tessera-profiled")
        token = seed_reads(server)
        check_read(server, token, f"/config/{PLAIN_KEY}")
        request = Request(f"{server.url}/config/{PLAIN_KEY}", headers={"Authorization": f"Bearer {token}"})
        run_wrk(request, 2)  # warm-up
        spy_process = subprocess.Popen(
            [spy, "record", "-p", str(server.pid), "-d", str(int(seconds)), "-r", str(rate), "-f", "speedscope",
             "-o", str(out), "--subprocesses", "--nonblocking", *(["--gil"] if gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            loaded = run_wrk(request, seconds)
            spy_process.wait(timeout=seconds + 60)
        finally:
            if spy_process.poll() is None:
                spy_process.kill()
                spy_process.wait(10)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {spy_process.stderr.read().decode()[-1000:] if spy_process.stderr else ''}")
    return summarise(out), loaded.rps


def markdown(summary: dict) -> str:
    lines = ["| # | function (self time) | share of busy samples |", "|---|---|---:|"]
    for rank, (name, share) in enumerate(summary["self"], 1):
        note = " — C code of the event loop (uvloop, httptools, socket I/O) and its epoll wait" if name.startswith(EVENT_LOOP_C) else ""
        lines.append(f"| {rank} | `{name}`{note} | {share:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("docs/profiles/read-path.speedscope.json"))
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    args = parser.parse_args()
    summary, rps = record(args.out, args.seconds, gil=args.gil)
    print(f"profile: {args.out}; busy {summary['busy_seconds']:.1f} thread-s, idle {summary['idle_seconds']:.1f} thread-s; "
          f"wrk under py-spy: {rps:.0f} req/s")  # fmt: skip
    print("busy samples by thread: " + ", ".join(f"{name} {share:.0%}" for name, share in summary["threads"]))
    print(markdown(summary))
    print("\ninclusive (share of busy samples with the function on the stack):")
    for name, share in summary["inclusive"]:
        print(f"  {share:6.1%}  {name}")


if __name__ == "__main__":
    main()
