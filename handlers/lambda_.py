"""AWS Lambda entry points (API Gateway HTTP API, payload v2, through Mangum).

Every function of ``infra/template.yaml`` runs the same app; the template routes each handler group
(get, write, history, rollback, policy, auth, watch, audit) to its own function so each gets its own
least-privilege role. The app is built on the first invocation, from the environment
(``TESSERA_BACKEND=aws``, ``TESSERA_BUCKET``, ``TESSERA_TABLE``, ``TESSERA_KMS_KEY_ID``), and reused
while the container lives: clients, version records and data keys stay warm between requests.

Importing this module does no I/O, so cold starts pay only for what a request needs.
"""

from __future__ import annotations

import threading
from typing import Any

_handler: Any = None
_lock = threading.Lock()


def _build() -> Any:
    from mangum import Mangum

    from core.settings import Settings
    from handlers.app import create_app
    from handlers.bootstrap import build

    settings = Settings.from_env()
    container = build(settings)
    # Lambda has no lifespan events to wait for; API Gateway strips its stage prefix itself.
    return Mangum(create_app(container), lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _handler
    if _handler is None:
        with _lock:
            if _handler is None:
                _handler = _build()
    return _handler(event, context)


def reset() -> None:
    """Forget the built app (tests; a changed environment)."""
    global _handler
    with _lock:
        _handler = None


# One name per handler group, as the template refers to them: same app, separate functions and roles.
get_handler = write_handler = history_handler = rollback_handler = handler
policy_handler = auth_handler = watch_handler = audit_handler = handler
