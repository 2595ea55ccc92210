"""The data directory is private: the directory 0700, every file in it 0600 (issue 13 §5).

The store holds token hashes, the audit log, key names and sealed values; none of it is for other local users.
Files Tessera creates are private from the start (the SQLite file is created 0600 before SQLite opens it, and
SQLite gives ``-wal`` and ``-shm`` the database file's mode). Directories written by an older release (0755 with
0644 files) are tightened at start by :func:`secure_data_dir`, with one warning line; ``tessera serve`` refuses to
start only when it cannot tighten them (a file owned by another user, a read-only mount).

Tightening removes the group and other bits and keeps the owner's: a file that was 0644 becomes 0600, a directory
becomes 0700. The keyring is the one exception: a master key that others could read must be treated as exposed
(rotate it), so its own loader refuses it rather than quietly hiding the exposure (``docs/security.md``).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as parent:
...     data = Path(parent) / "data"
...     secure_data_dir(data), oct(data.stat().st_mode & 0o777)
([], '0o700')
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

PRIVATE = 0o077  # the group and other bits: none may be set anywhere in the data directory
LEFT_TO_ITS_LOADER = frozenset({"keyring.json"})  # refused when loose, see the module docstring


class DataDirError(Exception):
    """The data directory cannot be made private (``tessera serve`` refuses to start)."""


def secure_data_dir(path: Path | str) -> list[str]:
    """Create ``path`` 0700 if missing; take the group and other bits off it and off everything below it.

    Returns what it changed (``"tessera.db 644→600"``, relative to ``path``), empty when all was private already.
    Symbolic links are left alone (never followed out of the directory); the keyring is left to its loader.
    Raises :class:`DataDirError` when a mode cannot be changed or ``path`` is not a directory.
    """
    root = Path(path)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create the data directory {root}: {exc.strerror or exc}") from exc
    if not root.is_dir():
        raise DataDirError(f"the data directory {root} is not a directory")
    changed: list[str] = []
    _tighten(root, root, changed)
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            entry = Path(directory) / name
            if name in LEFT_TO_ITS_LOADER and Path(directory) == root:
                continue
            _tighten(entry, root, changed)
    return changed


def _tighten(entry: Path, root: Path, changed: list[str]) -> None:
    try:
        info = entry.lstat()
    except FileNotFoundError:
        return  # removed meanwhile (a -shm file of a store that just closed)
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return  # symbolic links, sockets, fifos
    mode = stat.S_IMODE(info.st_mode)
    if not mode & PRIVATE:
        return
    wanted = mode & ~PRIVATE
    try:
        os.chmod(entry, wanted)
    except OSError as exc:
        raise DataDirError(
            f"{entry} is readable by other users (mode {mode:o}) and cannot be made private: {exc.strerror or exc}; "
            f"run chmod {wanted:o} on it as its owner"
        ) from exc
    name = "." if entry == root else str(entry.relative_to(root))
    changed.append(f"{name} {mode:o}→{wanted:o}")


def prepare_data_dir(path: Path | str) -> None:
    """``tessera serve``'s start: make the data directory private, warn in one line if anything was tightened,
    refuse (exit status 1, one line on stderr) if it cannot be."""
    try:
        changed = secure_data_dir(path)
    except DataDirError as exc:
        raise SystemExit(f"tessera serve: refusing to start: {exc}") from None
    if changed:
        print(f"warning: made the data directory {path} private (an older release left it readable): "
              f"{', '.join(changed)}", file=sys.stderr, flush=True)
