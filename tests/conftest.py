"""Shared fixtures. moto is imported first so no boto3 session is created before it (STACK-NOTES)."""

from __future__ import annotations

import os

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")

import moto  # noqa: E402,F401  (before any boto3 session)
import pytest  # noqa: E402

from tessera.core.model import Scope  # noqa: E402
from tessera.core.service import ConfigService  # noqa: E402
from tests.backends import BACKEND_FACTORIES  # noqa: E402


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def backend(request, tmp_path):
    """(store, keys) for each registered backend."""
    with BACKEND_FACTORIES[request.param](tmp_path) as pair:
        yield pair


@pytest.fixture
def service(backend) -> ConfigService:
    store, keys = backend
    return ConfigService(store, keys)


@pytest.fixture
def scope() -> Scope:
    return Scope()
