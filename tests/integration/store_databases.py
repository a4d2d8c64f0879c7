"""Databases for the dead-letter store's tests: a SQLite file, or a PostgreSQL database of the
machine's server made for the test and dropped after it (``createdb``/``dropdb``, as root or as
a user PostgreSQL knows)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Seconds ``createdb`` or ``dropdb`` may take.
PG_COMMAND_TIMEOUT_SECONDS = 60


def _pg(*args: str) -> None:
    if shutil.which(args[0]) is None:
        pytest.fail(
            f"{args[0]} is not on PATH: the store's tests need PostgreSQL (apt install postgresql)"
        )
    done = subprocess.run(args, capture_output=True, text=True, timeout=PG_COMMAND_TIMEOUT_SECONDS)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} failed ({done.stderr.strip()}); start PostgreSQL: "
            "pg_ctlcluster 15 main start"
        )


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new PostgreSQL database, dropped on leaving."""
    name = f"ccsync_test_{uuid.uuid4().hex[:10]}"
    _pg("createdb", name)
    try:
        yield f"postgresql+psycopg:///{name}"
    finally:
        _pg("dropdb", "--force", name)


@contextlib.contextmanager
def store_database(kind: str, directory: Path) -> Iterator[str]:
    """A store URL of ``kind`` (``sqlite`` or ``postgresql``), empty."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'dead-letters-{uuid.uuid4().hex[:6]}.db'}"
    else:
        with postgres_database() as url:
            yield url
