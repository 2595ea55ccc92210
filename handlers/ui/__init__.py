"""The web console (``/ui``): server-rendered pages over the same services, access control and audit as the API.

``mount_console(api)`` adds its routes to the FastAPI app; without Jinja2 installed (the ``[server]`` extra
brings it) the console is left out and the API runs alone. Layout: ``console.py`` (sessions, CSRF, rendering,
refusals), ``pages.py`` (browse, keys, history, environments), ``admin.py`` (tokens, policies, explain, audit),
``live.py`` (``/ui/ws``), ``mount.py`` (puts them on the app), ``templates/`` and ``static/`` (no third-party script, no build step).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("tessera")


def mount_console(api: Any) -> None:
    try:
        from tessera.handlers.ui.mount import install
    except ImportError as exc:  # jinja2 absent (a Lambda package without the console): the API alone
        logger.info("web console not available (%s is not installed)", exc.name)
        return
    install(api)
