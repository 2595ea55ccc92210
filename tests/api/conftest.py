from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tessera.core.backends.factory import build
from tessera.core.settings import Settings
from tessera.handlers.app import create_app

ROOT_TOKEN = "tsr_test-root-token-0123456789abcdef"


@pytest.fixture
def container(tmp_path):
    container = build(Settings(data_dir=tmp_path / "data", root_token=ROOT_TOKEN))
    yield container
    container.close()


@pytest.fixture
def client(container):
    with TestClient(create_app(container), headers={"Authorization": f"Bearer {ROOT_TOKEN}"}) as client:
        yield client


@pytest.fixture
def anon(container):
    with TestClient(create_app(container)) as client:
        yield client
