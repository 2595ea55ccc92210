"""``tessera serve --config-file``: import the file without ever silently reverting a change made through the API.

The rule, per key of the file (namespace ``default``, env ``default``):

- the key has no version yet, or its latest version came from the file (``updated_by: config-file``): it is
  written from the file (an equal value makes no new version);
- its latest version came from the API (a write, a deletion, a rollback, a promote): it is left alone. If the file
  also changed that key since the last start, both changed it: the API's change wins and the key is named in the
  banner as a conflict, at every start until the two agree (edit the file to the API's value, or write the file's
  value through the API). If the file did not change it, the API's value is simply kept.

"Changed since the last start" compares a digest of each key's value in the file with the one recorded at the last
start (the store's meta ``config-file-digests``: digests only, never values). Keys removed from the file are left as
they are. ``--watch-config`` applies the same rule whenever the file changes while the server runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.core.errors import TesseraError
from tessera.core.formats import flatten
from tessera.core.model import CONFIG_FILE, Scope

STATE_META = "config-file-digests"
FILE_AUTHOR = CONFIG_FILE.service  # "config-file"


def digest(value: Any) -> str:
    """A short digest of a value as the file gives it (enough to notice a change; not a way back to the value)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass
class Outcome:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept: int = 0  # changed through the API, not in the file since: the API's value stays
    conflicts: list[str] = field(default_factory=list)  # changed through the API and in the file: the API's wins
    errors: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
                f"{len(self.errors)} errors")
        if self.kept:
            text += f"; {self.kept} kept as changed through the API"
        if self.conflicts:
            shown = ", ".join(self.conflicts[:20]) + (f" and {len(self.conflicts) - 20} more" if len(self.conflicts) > 20 else "")
            text += (f"; {len(self.conflicts)} conflict(s), changed in the file and through the API, the API's change "
                     f"kept: {shown}")
        return text


def load_state(store: Any) -> dict[str, str]:
    raw = store.get_meta(STATE_META)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in state.items()} if isinstance(state, dict) else {}


def apply_file(container: Any, values: dict[str, Any]) -> Outcome:
    """Apply the file's ``values`` (as parsed) by the rule above; record the digests it applied."""
    service, store = container.service, container.store
    scope = Scope()
    before = load_state(store)
    after = dict(before)
    outcome = Outcome()
    for key, value in flatten(values):
        new = digest(value)
        try:
            latest = store.latest(scope, key)
            if latest is not None and latest.updated_by != FILE_AUTHOR:
                if not latest.deleted and service.value_of(latest) == value:
                    outcome.unchanged += 1  # the API wrote what the file says: they agree
                    after[key] = new
                elif before.get(key) == new:
                    outcome.kept += 1
                else:
                    outcome.conflicts.append(key)  # the digest stays the old one: named again next start
                continue
            result = service.put(CONFIG_FILE, scope, key, value)
        except TesseraError as exc:
            outcome.errors.append({"key": key, "code": exc.code, "message": exc.message})
            continue
        after[key] = new
        if not result.changed:
            outcome.unchanged += 1
        elif result.created:
            outcome.created += 1
        else:
            outcome.updated += 1
    if after != before:
        try:
            store.put_meta(STATE_META, json.dumps(after, sort_keys=True, separators=(",", ":")))
        except Exception as exc:  # noqa: BLE001 - the values are applied; only the record of them is missing
            print(f"warning: could not record the config file's digests ({type(exc).__name__}: {exc}); at the next "
                  "start its keys changed through the API may be named as conflicts again", file=sys.stderr, flush=True)
    for error in outcome.errors:
        print(f"  config file: {error['key']}: {error['code']}: {error['message']}", file=sys.stderr, flush=True)
    return outcome


class ConfigWatcher:
    """``--watch-config``: checks the file once a second; a change is applied by the same rule (a file that does
    not parse is reported in one line and skipped until it is fixed)."""

    def __init__(self, container: Any, path: Path, read: Callable[[Path], dict[str, Any]], interval: float = 1.0) -> None:
        self.container = container
        self.path = path
        self.read = read
        self.interval = interval
        self.stopped = threading.Event()
        self.seen = self.fingerprint()
        self.thread = threading.Thread(target=self.loop, name="tessera-watch-config", daemon=True)

    def fingerprint(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    def start(self) -> ConfigWatcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def loop(self) -> None:
        while not self.stopped.wait(self.interval):
            current = self.fingerprint()
            if current is None or current == self.seen:
                continue
            self.seen = current
            try:
                values = self.read(self.path)
                outcome = apply_file(self.container, values)
            except Exception as exc:  # noqa: BLE001 - a bad edit must not stop the server
                message = getattr(exc, "message", None) or str(exc)
                print(f"warning: --watch-config: {' '.join(str(message).split())}; the running config is unchanged",
                      file=sys.stderr, flush=True)
                continue
            print(f"Reloaded {self.path}: {outcome.summary()}", flush=True)
