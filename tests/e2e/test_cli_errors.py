"""Every mistake ends in one ``error: …`` line and a non-zero exit, through the installed console script: bad
``tessera serve`` settings and files, ports, the data-directory lock, a watch with the server down, ``run`` over
10,000 keys. A traceback appears only with ``--debug``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.slow
TOKEN = "tsr_cli-errors-root-token-abcdefghijk"
SCRIPT = str(Path(sys.executable).with_name("tessera"))


def run(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    environment.update(env)
    return subprocess.run([SCRIPT, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "listening" not in result.stdout
    return lines[0]


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *args, cwd=tmp_path, **env)


def test_bad_serve_settings_end_in_one_line(tmp_path):
    assert "--root-token" in one_line(serve(tmp_path, "--root-token", "short"))
    assert "at least 16" in one_line(serve(tmp_path, TESSERA_ROOT_TOKEN="short"))
    assert "short" not in one_line(serve(tmp_path, "--root-token", "short"))  # a refused setting is never echoed
    assert "--backend / TESSERA_BACKEND: must be local or aws" in one_line(serve(tmp_path, "--backend", "foo"))
    assert "TESSERA_BUCKET" in one_line(serve(tmp_path, "--backend", "aws"))
    assert "--port" in one_line(serve(tmp_path, "--port", "70000"))
    assert "--port" in one_line(serve(tmp_path, "--port", "0"))
    assert "--port" in one_line(serve(tmp_path, "--port", "eighty"))
    assert "--workers" in one_line(serve(tmp_path, "--workers", "0"))
    assert "/proc/nope" in one_line(serve(tmp_path, "--data-dir", "/proc/nope"))
    assert "--tls-cert" in one_line(serve(tmp_path, "--tls-cert", str(tmp_path / "cert.pem")))
    assert "No such option" in one_line(serve(tmp_path, "--bogus"))
    assert not (tmp_path / "data" / "tessera.db").exists()  # refused before anything was opened


def test_bad_config_files_end_in_one_line(tmp_path):
    missing = one_line(serve(tmp_path, "--config-file", str(tmp_path / "absent.yaml")))
    assert "--config-file" in missing and "no such file" in missing
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("database:\n  host: [unclosed\n")
    assert "(line 3, column 1)" in one_line(serve(tmp_path, "--config-file", str(broken_yaml)))
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"a": 1,\n "b": }')
    assert "broken.json: content is not valid json (line 2" in one_line(serve(tmp_path, "--config-file", str(broken_json)))
    not_a_tree = tmp_path / "list.json"
    not_a_tree.write_text("[1, 2]")
    assert "object at the top" in one_line(serve(tmp_path, "--config-file", str(not_a_tree)))
    unknown = tmp_path / "config.toml"
    unknown.write_text("a = 1")
    assert ".json, .yaml, .yml or .env" in one_line(serve(tmp_path, "--config-file", str(unknown)))
    bad_env = tmp_path / "app.env"
    bad_env.write_text("GOOD=1\nthis is not a setting\n")
    assert "dotenv line 2" in one_line(serve(tmp_path, "--config-file", str(bad_env)))
    debug = serve(tmp_path, "--config-file", str(tmp_path / "absent.yaml"), TESSERA_DEBUG="1")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_a_taken_port_is_refused_before_listening(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--root-token", TOKEN, cwd=tmp_path)
    line = one_line(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


def test_listening_is_printed_once_the_port_answers(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=TOKEN).start()
    try:
        log = server.log()
        assert f"listening on {server.url}" in log and f"export TESSERA_ADDR={server.url}" in log
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.stop()


def test_a_second_serve_on_a_data_directory_in_use_is_refused(tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text("app:\n  name: from-file\n")
    first = ServerProcess(data, root_token=TOKEN, extra_args=["--config-file", str(config)]).start()
    try:
        with first.client() as client:
            client.put("/config/app.name", json={"value": "from-api"}).raise_for_status()
        config.write_text("app:\n  name: edited\n")
        second = run("serve", "--port", str(free_port()), "--data-dir", str(data), "--root-token", TOKEN,
                     "--config-file", str(config), cwd=tmp_path)
        line = one_line(second)
        assert f"the data directory {data} is in use by another tessera serve (pid {first.process.pid})" in line
        with first.client() as client:  # nothing was re-imported under the live server
            assert client.get("/config/app.name").json()["value"] == "from-api"
    finally:
        first.kill9()  # the kernel releases the lock of a killed process
    again = ServerProcess(data, root_token=TOKEN, log_path=tmp_path / "again.log").start()
    again.stop()


def test_the_workers_of_one_serve_share_the_directory(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=TOKEN, extra_args=["--workers", "2"]).start()
    try:
        prefixes = {httpx.get(server.url + "/health").headers["x-request-id"][:12] for _ in range(100)}
        assert len(prefixes) == 2  # both workers answer over the one data directory
        refused = run("serve", "--port", str(free_port()), "--data-dir", str(server.data_dir), "--root-token", TOKEN,
                      cwd=tmp_path)
        assert "in use by another tessera serve" in one_line(refused)
    finally:
        server.stop()


def test_watch_and_commands_with_the_server_down(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    for args in (["watch", "*"], ["get", "x"], ["ls"], ["env", "ls"], ["run", "--", "true"]):
        result = run(*args, cwd=tmp_path, TESSERA_ADDR=down, TESSERA_TOKEN=TOKEN, timeout=60)
        assert "connection refused" in one_line(result, 6), args


def test_run_over_ten_thousand_keys(tmp_path):
    server = ServerProcess(tmp_path / "data", root_token=TOKEN).start()
    try:
        with server.client() as client:
            values = {"big": {f"k{i:05d}": f"value-{i}" for i in range(10_000)}}
            body = client.post("/config/import", json={"values": values}, timeout=600).json()
            assert body["created"] == 10_000, body
        result = run("run", "--", sys.executable, "-c", "import os; print(os.environ['BIG_K09999'], len(os.environ))",
                     cwd=tmp_path, TESSERA_ADDR=server.url, TESSERA_TOKEN=TOKEN, timeout=120)
        assert result.returncode == 0, result.stderr
        value, count = result.stdout.split()
        assert value == "value-9999" and int(count) >= 10_000
    finally:
        server.stop()


def test_store_tools_on_a_directory_without_a_store(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["keys", "status"], ["keys", "rotate"], ["audit", "verify"]):
        result = run(*args, "--data-dir", str(missing), cwd=tmp_path)
        assert result.returncode in (1, 2) and f"no store in {missing}" in one_line(result, result.returncode), args
    assert not missing.exists()  # nothing created where the user meant an existing store
