"""moto's server app, answering one request at a time.

moto's ``TransactWriteItems`` snapshots and restores whole tables without a lock, so under a threaded
server two concurrent transactions can interleave (and a failed one can roll back another's write).
Real DynamoDB serializes transactions on the items they touch; a global lock is the simplest faithful
stand-in. Usage: ``python serialized_moto_server.py PORT``.
"""

from __future__ import annotations

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler  # type: ignore[attr-defined]
from werkzeug.serving import run_simple


class Serialized:
    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        with self.lock:
            return list(self.app(environ, start_response))


if __name__ == "__main__":
    port = int(sys.argv[1])
    run_simple("127.0.0.1", port, Serialized(DomainDispatcherApplication(create_backend_app)), threaded=True,
               request_handler=MotoRequestHandler)
