from __future__ import annotations

import pytest

from tests.aws.support import moto_target, shared_server


@pytest.fixture
def target():
    """Fresh table and bucket under in-process moto (the session's KMS key)."""
    with moto_target() as target:
        yield target


@pytest.fixture
def server_target():
    """Fresh table and bucket on this session's moto_server process."""
    return shared_server().target()
