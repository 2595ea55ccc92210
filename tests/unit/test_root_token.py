"""Replacing the root token on one node is effective on every node within a second."""

from __future__ import annotations

import time

import pytest

from tessera.core.auth import Authenticator
from tessera.core.errors import Unauthenticated
from tests.backends import local_backend

OLD = "tsr_old-root-token-0123456789abcdef"
NEW = "tsr_new-root-token-0123456789abcdef"


def test_root_token_replacement_reaches_other_nodes(tmp_path):
    with local_backend(tmp_path) as (store, _keys):
        node_a, node_b = Authenticator(store), Authenticator(store)
        node_a.set_root_token(OLD)
        assert node_b.authenticate(OLD).is_root
        node_a.set_root_token(NEW)
        assert node_a.authenticate(NEW).is_root
        time.sleep(node_b.cache_seconds + 0.1)
        assert node_b.authenticate(NEW).is_root
        with pytest.raises(Unauthenticated):
            node_b.authenticate(OLD)
