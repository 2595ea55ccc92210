"""``tessera run --watch -- CMD`` (issue 12 §6), through the console script against a real server: CMD restarts
when a value it was given changes (SIGTERM, then SIGKILL after the grace period), not for ``--no-restart-on``
keys nor for keys it was not given; signals reach CMD; ``tessera run`` ends with CMD's status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.servers import ServerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
TOKEN = "tsr_cli-run-watch-root-token-abcdefgh"
SCRIPT = str(Path(sys.executable).with_name("tessera"))

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    out, prefix, ignore_term = sys.argv[1], sys.argv[2], sys.argv[3] == "ignore"
    def note(text):
        with open(out, "a") as f:
            f.write(text + "\\n")
    def on_term(*_):
        note(f"term {os.getpid()}")
        if not ignore_term:
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    note(f"start {os.getpid()} {os.environ.get(prefix + '_VALUE')} {os.environ.get(prefix + '_QUIET')}")
    for _ in range(1200):
        time.sleep(0.1)
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("runwatch") / "data", root_token=TOKEN).start()
    yield process
    process.stop()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def start(server: ServerProcess, tmp_path: Path, prefix: str, *flags: str, ignore_term: bool = False) -> tuple[subprocess.Popen, Path]:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out = tmp_path / "out.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(TESSERA_ADDR=server.url, TESSERA_TOKEN=TOKEN)
    process = subprocess.Popen(
        [SCRIPT, "run", "--prefix", prefix, "--watch", *flags, "--", sys.executable, str(child), str(out), prefix.upper(),
         "ignore" if ignore_term else "obey"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(lines(out)) == 1, timeout=30), (lines(out), process.poll())
    return process, out


def put(server: ServerProcess, key: str, value: object) -> None:
    with server.client() as client:
        client.put(f"/config/{key}", json={"value": value}).raise_for_status()


def test_restarts_on_a_change_and_not_for_quiet_or_other_keys(server, tmp_path):
    prefix = "rw" + uuid.uuid4().hex[:8]
    put(server, f"{prefix}.value", 1)
    put(server, f"{prefix}.quiet", "a")
    process, out = start(server, tmp_path, prefix, "--no-restart-on", f"{prefix}.quiet", "--grace", "5")
    try:
        first_pid = lines(out)[0].split()[1]
        assert lines(out)[0].split()[2:] == ["1", "a"]
        put(server, f"{prefix}.quiet", "b")  # --no-restart-on
        put(server, f"other{prefix}", "x")  # not injected
        put(server, f"{prefix}.value", 1)  # no new version, nothing changes
        assert not wait_for(lambda: len(lines(out)) > 1, timeout=3)
        put(server, f"{prefix}.value", 2)
        assert wait_for(lambda: len(lines(out)) >= 3, timeout=30), lines(out)
        term, restarted = lines(out)[1], lines(out)[2]
        assert term == f"term {first_pid}"  # SIGTERM first, and the old one ended before the new one started
        assert restarted.split()[2:] == ["2", "b"]  # the new start has every current value, quiet ones included
        process.send_signal(signal.SIGTERM)  # passed on to CMD; tessera run ends with its status
        assert process.wait(30) == 0
        assert lines(out)[-1] == f"term {restarted.split()[1]}"
        assert "changed; restarting" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_sigkill_after_the_grace_period(server, tmp_path):
    prefix = "rk" + uuid.uuid4().hex[:8]
    put(server, f"{prefix}.value", "one")
    process, out = start(server, tmp_path, prefix, "--grace", "1", ignore_term=True)
    try:
        put(server, f"{prefix}.value", "two")
        assert wait_for(lambda: any(line.startswith("start") and " two " in line for line in lines(out)), timeout=30)
        assert [line.split()[0] for line in lines(out)] == ["start", "term", "start"]
        process.send_signal(signal.SIGINT)
        process.wait(30)
        assert "SIGKILL" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_ends_with_the_status_of_cmd(server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(TESSERA_ADDR=server.url, TESSERA_TOKEN=TOKEN)
    done = subprocess.run([SCRIPT, "run", "--watch", "--", sys.executable, "-c", "raise SystemExit(3)"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
