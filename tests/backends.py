"""Backends the contract suite runs against. Each factory is a context manager yielding (store, keys).

The aws factories (moto in-process and a real moto_server process) register themselves here too, so every
test that takes the ``backend`` fixture runs on every backend.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tessera.core.backends.keyring import LocalKeyring
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.crypto import CachingKeyService

BackendFactory = Callable[[Path], contextlib.AbstractContextManager[tuple[Any, Any]]]


@contextlib.contextmanager
def local_backend(tmp_path: Path) -> Iterator[tuple[SQLiteStore, CachingKeyService]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    store = SQLiteStore(data_dir / "tessera.db")
    keys = CachingKeyService(LocalKeyring.load_or_create(data_dir / "keyring.json"))
    try:
        yield store, keys
    finally:
        store.close()


BACKEND_FACTORIES: dict[str, BackendFactory] = {"local": local_backend}

# The aws backend, under moto in-process and behind a real moto_server process (tests/aws/support.py).
from tests.aws.support import aws_moto_backend, aws_server_backend  # noqa: E402

BACKEND_FACTORIES["aws-moto"] = aws_moto_backend
BACKEND_FACTORIES["aws-server"] = aws_server_backend


def audit_file_of(container, chain: str):
    """The file holding ``chain``."""
    return container.store if chain == "main" else container.access.stores.request_log().store


def break_audit(container) -> None:
    """Every audit append fails from now on, until :func:`mend_audit`: an insert into the config store's audit table
    (a trigger), and a write to this process's request log segments (they are pointed at ``/dev/full``: ENOSPC)."""
    with container.store.transaction() as db:
        db.execute("CREATE TRIGGER audit_broken BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    log = container.access.stores.request_log()
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        log._mended_by = [os.dup(fd) for fd in log._fds]
        for fd in log._fds:
            os.dup2(full, fd)
    finally:
        os.close(full)


def mend_audit(container) -> None:
    with container.store.transaction() as db:
        db.execute("DROP TRIGGER audit_broken")
    log = container.access.stores.request_log()
    for fd, original in zip(log._fds, log._mended_by, strict=True):
        os.dup2(original, fd)
        os.close(original)
