"""The server refuses to start on a keyring file others may read; TESSERA_MASTER_KEY replaces the file."""

from __future__ import annotations

import base64
import os
import secrets
import stat

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.backends.keyring import KeyringError
from tessera.core.model import ROOT, Scope
from tessera.core.settings import Settings
from tessera.handlers.app import create_app
from tests.servers import ServerProcess

TOKEN = "tsr_startup-root-token-0123456789abcdef"


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_tessera_serve_refuses_a_group_or_world_readable_keyring(tmp_path, mode):
    data = tmp_path / "data"
    build(Settings(data_dir=data)).close()  # first start creates keyring.json, 0600
    keyring = data / "keyring.json"
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    os.chmod(keyring, mode)
    server = ServerProcess(data, root_token=TOKEN)
    with pytest.raises(RuntimeError, match="exited early"):
        server.start()
    output = " ".join(server.log().split())  # rich wraps long lines
    assert "chmod 600" in output and "group or others" in output
    assert server.process.returncode != 0
    # Key material never reaches the output, even in the refusal.
    for material in __import__("json").loads(keyring.read_text())["keys"].values():
        assert material not in server.log()


def test_build_refuses_it_too(tmp_path):
    data = tmp_path / "data"
    build(Settings(data_dir=data)).close()
    os.chmod(data / "keyring.json", 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        build(Settings(data_dir=data))


def test_master_key_from_the_environment_needs_no_file(tmp_path):
    data = tmp_path / "data"
    key = base64.b64encode(os.urandom(32)).decode()
    container = build(Settings(data_dir=data, master_key=key, root_token=TOKEN))
    canary = "canary-" + secrets.token_hex(8)
    container.service.put(ROOT, Scope(), "db.password", canary, secret=True)
    container.close()
    assert not (data / "keyring.json").exists()
    container = build(Settings(data_dir=data, master_key=key, root_token=TOKEN))
    assert container.service.get(ROOT, Scope(), "db.password").value == canary
    container.close()
    # Another master key cannot open it: 500 integrity_error, never the value.
    other = base64.b64encode(os.urandom(32)).decode()
    container = build(Settings(data_dir=data, master_key=other, root_token=TOKEN))
    with TestClient(create_app(container), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        response = client.get("/config/db.password")
        assert response.status_code == 500 and response.json()["error"]["code"] == "integrity_error"
        assert canary not in response.text
    container.close()


def test_a_lost_keyring_is_not_silently_replaced(tmp_path):
    """Deleting keyring.json next to sealed values must not yield a fresh keyring (and unreadable data)."""
    data = tmp_path / "data"
    container = build(Settings(data_dir=data))
    container.service.put(ROOT, Scope(), "db.password", "x", secret=True)
    container.close()
    (data / "keyring.json").rename(tmp_path / "keyring.backup")
    with pytest.raises(KeyringError, match="restore the keyring"):
        build(Settings(data_dir=data))
    assert not (data / "keyring.json").exists()
    server = ServerProcess(data, root_token=TOKEN)
    with pytest.raises(RuntimeError, match="exited early"):
        server.start()
    assert "restore the keyring" in " ".join(server.log().split())  # rich wraps long lines
    (tmp_path / "keyring.backup").rename(data / "keyring.json")
    container = build(Settings(data_dir=data))
    assert container.service.get(ROOT, Scope(), "db.password").value == "x"
    container.close()
