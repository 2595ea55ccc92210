"""The data directory is private (issue 13 §5): 0700, every file in it 0600, whatever the umask; a directory an
older release left readable is tightened at start with one warning line; ``tessera serve`` refuses only when it
cannot tighten it. Real files, real ``tessera serve`` processes."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tessera.core.backends.sqlite import SQLiteStore
from tessera.local.files import DataDirError, secure_data_dir
from tests.servers import REPO, TESSERA, ServerProcess, free_port

pytestmark = pytest.mark.slow
TOKEN = "tsr_private-files-root-token-0123456789"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (root itself as ``.``) and its permission bits."""
    found = {".": mode(root)}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = mode(path)
    return found


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    loose = {name: oct(bits) for name, bits in found.items() if bits & 0o077}
    assert not loose, loose
    assert found["."] == 0o700, oct(found["."])
    return found


@contextlib.contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_server_under_umask_000_keeps_every_file_private(tmp_path):
    """Dev mode (root-token file), a secret (keyring), writes (WAL and shared memory open): all 0600 in a 0700
    directory, although the process runs with umask 000 (children inherit it)."""
    data = tmp_path / "data"
    with umask(0o000):
        server = ServerProcess(data, extra_args=["--dev"]).start()
    try:
        token = (data / "root-token").read_text().strip()
        with server.client(token) as client:
            assert client.put("/config/db.password", json={"value": "hunter2", "secret": True}).status_code == 201
            assert client.post("/auth/tokens", json={"service": "svc", "policies": []}).status_code == 201
            assert client.get("/config/db.password").status_code == 200
        found = assert_private(data)
        assert {"tessera.db", "tessera.db-wal", "tessera.db-shm", "keyring.json", "root-token"} <= set(found), found
        assert all(found[name] == 0o600 for name in found if name != "."), {n: oct(m) for n, m in found.items()}
    finally:
        server.stop()
    assert_private(data)
    assert "warning: made the data directory" not in server.log()  # nothing to tighten on a fresh start


def test_the_store_creates_its_files_0600_whatever_the_umask(tmp_path):
    data = tmp_path / "data"
    with umask(0o000):
        store = SQLiteStore(data / "tessera.db")
        try:
            store.put_meta("x", "1")
            files = {p.name: mode(p) for p in data.iterdir()}
        finally:
            store.close()
    assert set(files) >= {"tessera.db", "tessera.db-wal", "tessera.db-shm"}, files
    assert set(files.values()) == {0o600}, {n: oct(m) for n, m in files.items()}
    assert mode(data) == 0o700  # a directory the store creates is private too (the CLI's commands create it so)


def test_a_data_directory_made_by_another_command_needs_no_tightening(tmp_path):
    """``tessera keys``/``audit`` commands build the container before any server ran: what they create is private
    already, so the first ``tessera serve`` has nothing to warn about."""
    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings

    data = tmp_path / "data"
    with umask(0o022):
        build(Settings(data_dir=data)).close()
    assert_private(data)
    assert secure_data_dir(data) == []


def older_release_layout(data: Path) -> None:
    """What a release before this one left: a 0755 directory, the store's files 0644 (umask 022)."""
    server = ServerProcess(data, root_token=TOKEN).start()
    with server.client() as client:
        assert client.put("/config/app.name", json={"value": "old"}).status_code == 201
    server.kill9()  # leaves -wal and -shm behind, as a crash of the older release would
    os.chmod(data, 0o755)
    for name in ("tessera.db", "tessera.db-wal", "tessera.db-shm"):
        os.chmod(data / name, 0o644)
    (data / "audit").mkdir(mode=0o755)
    (data / "audit" / "segment-1.log").write_text("an older release's audit segment\n")
    os.chmod(data / "audit" / "segment-1.log", 0o644)


def test_start_tightens_what_an_older_release_left_readable_with_one_warning(tmp_path):
    data = tmp_path / "data"
    older_release_layout(data)
    server = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "second.log").start()
    try:
        with server.client() as client:
            assert client.get("/config/app.name").json()["value"] == "old"
        assert_private(data)
    finally:
        server.stop()
    warnings = [line for line in server.log().splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, server.log()
    for name in (". 755→700", "tessera.db 644→600", "tessera.db-wal 644→600", "audit 755→700",
                 "audit/segment-1.log 644→600"):
        assert name in warnings[0], warnings[0]
    assert "keyring.json" not in warnings[0]  # 0600 since its first write


def test_secure_data_dir_keeps_owner_bits_leaves_links_and_the_keyring_alone(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "tool.sh").write_text("#!/bin/sh\n")
    os.chmod(data / "tool.sh", 0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    os.chmod(outside, 0o644)
    (data / "link").symlink_to(outside)
    (data / "keyring.json").write_text("{}")
    os.chmod(data / "keyring.json", 0o640)
    changed = secure_data_dir(data)
    assert sorted(changed) == [". 755→700", "tool.sh 755→700"], changed
    assert mode(data / "tool.sh") == 0o700  # the owner's bits are kept
    assert mode(outside) == 0o644  # a link is never followed out of the directory
    assert mode(data / "keyring.json") == 0o640  # refused by its loader instead (tests/secrets/test_startup.py)
    assert secure_data_dir(data) == []  # idempotent
    new = tmp_path / "new" / "data"
    with umask(0o000):
        assert secure_data_dir(new) == []
    assert mode(new) == 0o700
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataDirError, match="not a directory|cannot create"):
        secure_data_dir(tmp_path / "a-file")


# ------------------------------------------------------------------ refusing when it cannot tighten
REFUSAL_SCRIPT = """
set -e
mount -t tmpfs -o size=8m,mode=0755 tmpfs "$DATA"
printf '' > "$DATA/tessera.db" && chmod 644 "$DATA/tessera.db"
mount -o remount,ro "$DATA"
set +e
"$@" 2> "$ERR"
echo "exit=$?"
stat -c '%n %a' "$DATA" "$DATA/tessera.db"
ls -A "$DATA"
"""


def test_serve_refuses_in_one_line_when_it_cannot_tighten(tmp_path):
    """A data directory left 0755 with a 0644 store on a read-only mount: ``tessera serve`` cannot tighten it, so it
    refuses to start, with one line naming what it could not change, and opens nothing. The mount lives in a
    private mount namespace of the child (``unshare``), so nothing outside the test sees it or outlives it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only file system in a private mount namespace")
    data, err = tmp_path / "data", tmp_path / "stderr.txt"
    data.mkdir()
    command = [*TESSERA, "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(data),
               "--root-token", TOKEN]
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", REFUSAL_SCRIPT, "sh",
                             *command], cwd=REPO, env={**os.environ, "DATA": str(data), "ERR": str(err)},
                            capture_output=True, text=True, timeout=120)
    assert "exit=" in result.stdout, (result.stdout, result.stderr)
    assert "exit=0" not in result.stdout, result.stdout
    lines = [line for line in err.read_text().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: tessera serve: refusing to start:") and "Read-only file system" in lines[0], lines
    assert f"{data} 755" in result.stdout and f"{data}/tessera.db 644" in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1] == "tessera.db", result.stdout  # nothing opened or created
