"""``ccsync dlq export --remove`` removes nothing unless the export is safely written.

A full disk, a quota or a failing network disk may let every write into the page cache and only
answer at ``fsync``; an export that then removed its dead letters would have lost them. The sync
failure is the operating system's own: a preloaded ``fsync`` that fails with the errno a disk
would give, in the ``ccsync`` process only.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_dlq_support import (
    fresh_queues,
    seed_for_event,
    store_dead_letters,
    waiting,
)

pytestmark = pytest.mark.usefixtures("clean_environment")

#: An fsync that fails with the errno in FAILING_FSYNC_ERRNO, as a full or broken disk answers.
FAILING_FSYNC_SOURCE = """
#include <errno.h>
#include <stdlib.h>
int fsync(int fd) { errno = atoi(getenv("FAILING_FSYNC_ERRNO")); return -1; }
int fdatasync(int fd) { return fsync(fd); }
"""

DEAD_LETTERS = 5


@pytest.fixture(scope="module")
def failing_fsync(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (cc) to build the failing fsync with: apt-get install gcc")
    where = tmp_path_factory.mktemp("failing-fsync")
    source = where / "failing_fsync.c"
    source.write_text(FAILING_FSYNC_SOURCE)
    library = where / "failing_fsync.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
    )
    return library


def _export(
    broker_url: str, *args: str, stdout: int | object = subprocess.PIPE, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "export", *args],
        env={**os.environ, "CCSYNC_BROKER_URL": broker_url, **env},
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "failure", [errno.ENOSPC, errno.EDQUOT, errno.EIO], ids=errno.errorcode.get
)
def test_export_remove_removes_nothing_when_the_sync_to_disk_fails(
    broker_url: str, tmp_path: Path, failing_fsync: Path, failure: int
) -> None:
    # Given dead letters
    fresh_queues(broker_url)
    store_dead_letters(
        broker_url, [seed_for_event("retries-exhausted", status=503) for _ in range(DEAD_LETTERS)]
    )
    # When exported with --remove to a disk whose sync fails
    done = _export(
        broker_url,
        str(tmp_path / "archive.jsonl"),
        "--remove",
        LD_PRELOAD=str(failing_fsync),
        FAILING_FSYNC_ERRNO=str(failure),
    )
    # Then the command fails in one line naming the error
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert os.strerror(failure) in lines[0]
    assert "nothing was removed" in lines[0]
    # And every dead letter is still waiting in the store
    assert waiting() == DEAD_LETTERS


def test_export_remove_to_a_full_standard_output_removes_nothing(broker_url: str) -> None:
    # Given dead letters
    fresh_queues(broker_url)
    store_dead_letters(
        broker_url, [seed_for_event("retries-exhausted", status=503) for _ in range(DEAD_LETTERS)]
    )
    # When exported with --remove to standard output, which is /dev/full
    with open("/dev/full", "w") as full:
        done = _export(broker_url, "-", "--remove", stdout=full)
    # Then the command fails in one line naming the error, and nothing was removed
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert os.strerror(errno.ENOSPC) in lines[0]
    assert waiting() == DEAD_LETTERS


def test_export_remove_to_a_pipe_which_cannot_be_synced_removes_after_the_flush(
    broker_url: str,
) -> None:
    # Given dead letters
    fresh_queues(broker_url)
    store_dead_letters(
        broker_url, [seed_for_event("retries-exhausted", status=503) for _ in range(DEAD_LETTERS)]
    )
    # When exported with --remove to a pipe (fsync answers EINVAL: there is no disk to sync)
    done = _export(broker_url, "-", "--remove")
    # Then the export succeeds and removes them
    assert done.returncode == 0, done
    assert len(done.stdout.splitlines()) == DEAD_LETTERS
    assert waiting() == 0
