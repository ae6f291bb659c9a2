"""The host's own files are private (SPEC 8): the home folder 0700, what the host writes in it 0600."""

from __future__ import annotations

import os
from pathlib import Path

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """`path` created if missing (parents too) and made 0700; returns it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    return path


def private_database(path: Path) -> Path:
    """A SQLite database file made (or kept) 0600 before SQLite opens it.

    SQLite gives its -wal and -shm files the permissions of the database, so creating
    the database 0600 covers them; existing ones (an older home) are tightened too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.chmod(companion, 0o600)
    return path
