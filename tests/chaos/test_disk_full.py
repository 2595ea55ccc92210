"""Disk full (issue 13 §8): the data directory on a small tmpfs. Writes that do not fit are refused with a clear
``503`` and never applied, reads stay correct or fail closed, and once space returns the server serves again with
nothing lost and the audit chain intact. The tmpfs lives in a private mount namespace of the server (``unshare``),
so nothing outside the test sees it and it goes with the process; needs root."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import httpx
import pytest

from tests.chaos.harness import audit_verify, scale
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "tsr_chaos-disk-root-token-0123456789"
MOUNT = 'mount -t tmpfs -o size=6m,mode=0700 tessera-chaos "$0" && exec "$@"'


def test_disk_full_fails_closed_and_recovers(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: mounting a small tmpfs (in a private mount namespace) is how the disk fills up")
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs unshare and nsenter (util-linux)")
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, root_token=TOKEN, wrapper=["unshare", "--mount", "--propagation", "private",
                                                            "sh", "-c", MOUNT, str(data)])
    server.start(timeout=60)
    inside = ["nsenter", "-t", str(server.process.pid), "-m", "--"]
    acknowledged: dict[str, tuple[int, str]] = {}
    refused: list[tuple[str, int, dict]] = []
    refused_heads: dict[str, str] = {}  # key → the start of the value a refused write carried
    blob = "x" * 60_000  # under the 64 KiB value limit; a 6 MB disk holds a few dozen such versions
    try:
        with server.client() as client:
            for i in range(int(scale(400, 1000))):
                key = f"full.k{i % 20}"
                value = f"{i}-{blob}"
                try:
                    response = client.put(f"/config/{key}", json={"value": value}, timeout=30)
                except httpx.HTTPError as exc:
                    raise AssertionError(f"write {i}: the server stopped answering when the disk filled: {exc}") from exc
                if response.status_code in (200, 201):
                    acknowledged[key] = (response.json()["version"], value[:12])
                    continue
                refused.append((key, response.status_code, response.json()))
                refused_heads[key] = value[:12]
                if len(refused) >= 5:
                    break
            assert refused, "the disk never filled up"
            for _key, status, body in refused:
                assert status == 503 and set(body) == {"error"} and body["error"]["code"] == "unavailable", body
                assert blob not in str(body)  # a refusal never echoes the value
            assert server.process.poll() is None  # still running, failing closed
            ready = client.get("/ready", timeout=30)  # what a load balancer probes says so too
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready", ready.text
            for key, (version, head) in acknowledged.items():  # what was acknowledged is still what is read
                read = client.get(f"/config/{key}", timeout=30)
                assert read.status_code in (200, 503), read.text
                if read.status_code == 200:
                    assert (read.json()["version"], read.json()["value"][:12]) == (version, head)
            # Space returns (the volume grows): the server serves again without a restart.
            subprocess.run([*inside, "mount", "-o", "remount,size=256m", str(data)], check=True)
            deadline = time.monotonic() + 30
            while True:
                response = client.put("/config/full.after", json={"value": "space is back"}, timeout=30)
                if response.status_code in (200, 201) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert response.status_code == 201, response.text
            deadline = time.monotonic() + 10  # the probe's answer is reused for a second
            while client.get("/ready", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "/ready did not say ready once space returned"
                time.sleep(0.2)
            applied_anyway = []
            for key, (version, head) in acknowledged.items():  # nothing acknowledged lost, nothing refused applied
                read = client.get(f"/config/{key}").json()
                if (read["version"], read["value"][:12]) == (version + 1, refused_heads.get(key)):
                    applied_anyway.append(key)
                    continue
                assert (read["version"], read["value"][:12]) == (version, head), (key, read["version"])
            history = {k: [v["version"] for v in client.get(f"/config/history/{k}").json()["versions"]] for k in acknowledged}
            for key, versions in history.items():
                latest = acknowledged[key][0] + (key in applied_anyway)
                assert versions == list(range(len(versions), 0, -1)) and versions[0] == latest, (key, versions)
        audit_verify(data, prefix=inside)
    finally:
        server.stop()
    if applied_anyway:
        # Known, and the lead's audit rewrite (issue 8 §2) removes it: today a write's response record is a second
        # audit write after the commit; when the disk fills between the two, the write is committed but answered
        # 503 ("whether it took effect is unknown"). The contract: a mutation's record is durable together with the
        # mutation, and a committed write is never reported as failed.
        pytest.xfail(f"refused with 503 yet applied (the disk filled between the commit and its audit record): "
                     f"{applied_anyway}")
    print(f"disk full: {len(acknowledged)} keys acknowledged, {len(refused)} writes refused with 503, recovered")
