"""AWS Lambda entry points.

- ``handler``: the HTTP API (API Gateway payload v2, through Mangum): the read, write, admin and watch functions of
  ``infra/template.yaml`` run the same app, each under its own least-privilege role.
- ``live_handler``: the WebSocket API's routes and the table stream's notifier (``handlers/live.py``).

**Init outside the handler.** When Lambda loads this module (``AWS_LAMBDA_FUNCTION_NAME`` is set) it builds
everything at import: settings, boto3 clients, stores, caches and the app (or the live side, by ``_HANDLER``).
SnapStart snapshots that state and provisioned concurrency keeps it warm, so a first request pays for none of it.
Building does no I/O (credentials resolve and connections open on the first call), so a snapshot holds no
connection and no credentials. Per-container state that restored copies must never share is made anew after a
SnapStart restore (:func:`after_restore`, registered as a runtime hook): the audit shard writer's holder id and
lease, the socket lease holder id, every cached token, policy and meta lookup, and the ``random`` generator.

If building fails (a broken deployment), the module still loads; each request answers ``503`` in the contract's
error shape and the next one tries again. Outside Lambda, importing does nothing (tests build on demand).
"""

from __future__ import annotations

import os
import threading
from typing import Any

_handler: Any = None
_live: Any = None
_lock = threading.Lock()


def _settings() -> Any:
    from tessera.core.settings import Settings

    return Settings.from_env()


def _build() -> Any:
    from mangum import Mangum

    from tessera.core.backends.factory import build
    from tessera.handlers.app import create_app

    container = build(_settings())
    # Lambda has no lifespan events to wait for; API Gateway strips its stage prefix itself.
    # No web console on Lambda (a slimmer bundle; no WebSocket for /ui/ws; the roles grant nothing on UISESSION#).
    return Mangum(create_app(container, console=False), lifespan="off")


def _build_live() -> Any:
    from tessera.core.backends.factory import build
    from tessera.handlers.live import for_container

    settings = _settings()
    return for_container(build(settings), settings.ws_endpoint)


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


def live_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A WebSocket route (``requestContext.eventType``) or a batch of stream records (``Records``)."""
    global _live
    if _live is None:
        with _lock:
            if _live is None:
                try:
                    _live = _build_live()
                except Exception as exc:
                    if "Records" in event:
                        raise  # the stream's batch is retried
                    _log_failure(exc)
                    return {"statusCode": 500}
    if "Records" in event:
        return _live.notify(event)  # type: ignore[no-any-return]
    return _live.route(event)  # type: ignore[no-any-return]


def _log_failure(exc: Exception) -> None:
    import logging

    logging.getLogger("tessera").error("could not start: %s", type(exc).__name__)


def _unavailable(event: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The app could not be built (store unreachable, root digest not writable yet): ``503`` in the contract's
    error shape; the next invocation tries again."""
    import json
    import uuid

    from tessera.core.errors import TesseraError

    _log_failure(exc)
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


def containers() -> list[Any]:
    """The containers built in this process (the app's and the live side's)."""
    found = []
    if _handler is not None:
        found.append(_handler.app.container)
    if _live is not None:
        found.append(_live.container)
    return found


def after_restore() -> None:
    """SnapStart restored this copy of the snapshot: make anew what must be unique per copy or fresh."""
    import random

    random.seed()  # the snapshot froze the generator's state: every copy would draw the same numbers
    for container in containers():
        store = container.store
        reset = getattr(store, "audit_writer", None)
        if reset is not None:
            store.audit_writer().reset()  # a new holder id, no lease: never the same shard as another copy
        stamp = getattr(store, "auth_stamp", None)
        if stamp is not None:
            stamp.changed()  # tokens, policies and meta cached at snapshot time are read again
        container.authenticator.clear()
        container.access.authorizer.invalidate()
    if _live is not None:
        _live.sockets.reset()


def slim_imports() -> None:
    """Skip what Lambda never runs but would do at init: pydantic's plugin scan (entry points of every installed
    distribution); pydantic.v1, which FastAPI imports only to ask whether a route's types are v1 models (none is:
    the app uses pydantic 2 throughout; with the module absent FastAPI answers "no" at once); and building the
    validators of every model at class creation (``defer_build``: a model builds them when first used, so FastAPI's
    ~60 OpenAPI models, a fifth of importing it, are built only if ``/openapi.json`` is asked for)."""
    import sys

    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if "pydantic.v1" not in sys.modules:
        sys.modules["pydantic.v1"] = None  # type: ignore[assignment]  # import → ImportError, FastAPI's own fallback
    try:
        from pydantic._internal import _config  # the defaults every model's config starts from

        _config.config_defaults["defer_build"] = True
    except (ImportError, AttributeError, TypeError):  # another pydantic: build at class creation, as usual
        pass


def init() -> None:
    """Build what this function's handler serves, now (Lambda's init phase); failures wait for a request."""
    global _handler, _live
    with _lock:
        try:
            if os.environ.get("_HANDLER", "").endswith("live_handler"):
                _live = _live or _build_live()
            else:
                _handler = _handler or _build()
        except Exception as exc:  # noqa: BLE001 — answered per request (503) until it works
            _log_failure(exc)


def reset() -> None:
    """Forget what was built (tests; a changed environment)."""
    global _handler, _live
    with _lock:
        _handler = None
        _live = None


# Every HTTP function of infra/template.yaml runs ``handler``; the names the previous templates used stay valid.
get_handler = write_handler = history_handler = rollback_handler = handler
policy_handler = auth_handler = watch_handler = audit_handler = handler

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    slim_imports()
    init()
    try:
        from snapshot_restore_py import register_after_restore  # in Lambda's Python runtimes (3.12+) with SnapStart
    except ImportError:
        pass
    else:
        register_after_restore(after_restore)
