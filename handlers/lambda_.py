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

    from tessera.core.backends.factory import build
    from tessera.core.settings import Settings
    from tessera.handlers.app import create_app

    settings = Settings.from_env()
    container = build(settings)
    # Lambda has no lifespan events to wait for; API Gateway strips its stage prefix itself.
    return Mangum(create_app(container), lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _handler
    if _handler is None:
        with _lock:
            if _handler is None:
                try:
                    _handler = _build()
                except Exception as exc:  # noqa: BLE001 — the client gets the contract's shape, never a trace
                    return _unavailable(event, exc)
    return _handler(event, context)


def _unavailable(event: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The app could not be built (store unreachable, root digest not writable yet): ``503`` in the contract's
    error shape; the next invocation tries again."""
    import json
    import logging
    import uuid

    from tessera.core.errors import TesseraError

    logging.getLogger("tessera").error("could not start: %s", type(exc).__name__)
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    request_id = headers.get("x-request-id") or uuid.uuid4().hex
    message = exc.message if isinstance(exc, TesseraError) else "the service could not start"
    body = {"error": {"code": "unavailable", "message": message, "request_id": request_id}}
    return {
        "statusCode": 503,
        "headers": {"content-type": "application/json", "x-request-id": request_id},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def reset() -> None:
    """Forget the built app (tests; a changed environment)."""
    global _handler
    with _lock:
        _handler = None


# Every HTTP function of infra/template.yaml runs ``handler`` (same app, separate functions and roles); the
# names the previous template used stay valid for stacks deployed from it.
get_handler = write_handler = history_handler = rollback_handler = handler
policy_handler = auth_handler = watch_handler = audit_handler = handler
