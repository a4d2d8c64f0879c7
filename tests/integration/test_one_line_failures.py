"""Issue 13, item 2: every failing ``ccsync`` command says why in one line, and nothing else.

Each test runs the real command in a subprocess and checks what an operator sees: a non-zero exit
status, exactly one non-empty line (stdout and stderr together) naming the cause, the broker's URL
with its password masked, and an end within the time allowed.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

PASSWORD = "s3cret-Pw-9f8e"
#: Seconds the tests give ``ccsync worker`` to wait for a broker that never answers.
SHORT_CONNECT_TIMEOUT = 3
#: Seconds after which such a worker must have given up, start-up of Python included.
WORKER_GIVES_UP_WITHIN = 20.0
#: Seconds any other failing command may take.
COMMAND_ENDS_WITHIN = 20.0


@dataclass(frozen=True)
class Run:
    status: int
    lines: list[str]
    seconds: float

    @property
    def line(self) -> str:
        """The one line the command printed (failing the test when it printed more or none)."""
        assert len(self.lines) == 1, "\n".join(self.lines)
        return self.lines[0]


def ccsync(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> Run:
    """``ccsync ARGS`` in a subprocess with only ``env`` (and PATH) as its environment."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return Run(result.returncode, lines, time.monotonic() - started)


def unreachable_broker_url() -> str:
    """An AMQP URL with a password, of a local port nothing listens on."""
    return f"amqp://ccsync:{PASSWORD}@127.0.0.1:{free_port()}//"


def masked(url: str) -> str:
    return url.replace(PASSWORD, "**")


def assert_failed_in_one_line(run: Run, *expected: str) -> None:
    assert run.status != 0, run.lines
    assert "Traceback" not in run.line
    assert PASSWORD not in run.line
    for text in expected:
        assert text in run.line


# --- the broker cannot be reached ---------------------------------------------------------------


def test_given_no_broker_when_the_worker_starts_then_it_says_so_in_one_line_within_the_timeout(
    tmp_path: Path,
) -> None:
    url = unreachable_broker_url()

    run = ccsync(
        "worker",
        env={
            "CCSYNC_BROKER_URL": url,
            "CCSYNC_BROKER_CONNECT_TIMEOUT": str(SHORT_CONNECT_TIMEOUT),
            "CLOUDCOCKPIT_TOKEN": "tok",
        },
        cwd=tmp_path,
    )

    assert_failed_in_one_line(run, "cannot reach the broker", masked(url), "Connection refused")
    assert run.seconds < WORKER_GIVES_UP_WITHIN


@pytest.mark.parametrize(
    ("host", "cause"),
    [("nosuchhost.invalid", "gaierror"), ("127.0.0.1", "Connection refused")],
    ids=["unknown-host", "closed-port"],
)
def test_given_no_broker_when_publishing_then_it_says_so_in_one_line(
    tmp_path: Path, host: str, cause: str
) -> None:
    port = free_port()
    url = f"amqp://ccsync:{PASSWORD}@{host}:{port}//"

    run = ccsync(
        "publish",
        "--customer",
        str(uuid.uuid4()),
        "--identifier",
        "X",
        env={"CCSYNC_BROKER_URL": url, "CCSYNC_BROKER_CONNECT_TIMEOUT": "2"},
        cwd=tmp_path,
    )

    assert_failed_in_one_line(run, "cannot reach the broker", masked(url), cause)
    assert run.seconds < COMMAND_ENDS_WITHIN


# --- what a command is given --------------------------------------------------------------------


def test_given_an_unknown_log_level_when_the_worker_starts_then_one_line_names_the_option(
    tmp_path: Path,
) -> None:
    run = ccsync(
        "worker",
        "--loglevel",
        "foo",
        env={"CCSYNC_BROKER_URL": unreachable_broker_url(), "CLOUDCOCKPIT_TOKEN": "tok"},
        cwd=tmp_path,
    )

    assert_failed_in_one_line(run, "--loglevel", "'foo'")
    assert run.seconds < COMMAND_ENDS_WITHIN


def test_given_a_log_level_in_lower_case_then_the_worker_accepts_it(tmp_path: Path) -> None:
    """Accepted: the worker goes on to the broker, and fails there (none listens)."""
    run = ccsync(
        "worker",
        "--loglevel",
        "warning",
        env={
            "CCSYNC_BROKER_URL": unreachable_broker_url(),
            "CCSYNC_BROKER_CONNECT_TIMEOUT": "1",
            "CLOUDCOCKPIT_TOKEN": "tok",
        },
        cwd=tmp_path,
    )

    assert_failed_in_one_line(run, "cannot reach the broker")


def test_given_a_file_that_is_not_json_when_publishing_then_one_line_names_the_file_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.json"
    path.write_text('{"eventId": "e-1"}\n{"eventId": "e-2"\n', encoding="utf-8")

    run = ccsync(
        "publish",
        "--file",
        str(path),
        env={"CCSYNC_BROKER_URL": unreachable_broker_url()},
        cwd=tmp_path,
    )

    assert_failed_in_one_line(run, str(path), "JSON", "line 2")
    assert run.seconds < COMMAND_ENDS_WITHIN


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CCSYNC_BROKER_URL", f"foo://ccsync:{PASSWORD}@rabbit//"),
        ("CCSYNC_BROKER_URL", f"amqp://ccsync:{PASSWORD}@rabbit:port//"),
        ("CCSYNC_REDIS_URL", f"http://:{PASSWORD}@redis:6379/0"),
        ("CLOUDCOCKPIT_BASE_URL", "notaurl"),
        ("CLOUDCOCKPIT_BASE_URL", "https://"),
        ("CLOUDCOCKPIT_TOKEN_URL", "ftp://login.example.com/token"),
        ("CCSYNC_RETRY_DELAYS", ","),
        ("CCSYNC_RETRY_DELAYS", "2,,10"),
        ("CCSYNC_BROKER_CONNECT_TIMEOUT", "0"),
    ],
)
def test_given_a_bad_setting_when_the_worker_starts_then_one_line_names_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = {
        "CCSYNC_BROKER_URL": unreachable_broker_url(),
        "CCSYNC_BROKER_CONNECT_TIMEOUT": "1",
        "CLOUDCOCKPIT_TOKEN": "tok",
        variable: value,
    }

    run = ccsync("worker", env=env, cwd=tmp_path)

    assert_failed_in_one_line(run, variable)
    assert "cannot reach the broker" not in run.line, "refused at settings load, not later"
    assert run.seconds < COMMAND_ENDS_WITHIN


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTPS_PROXY", "ftp://proxy.corp:3128"),
        ("HTTPS_PROXY", "http://proxy.corp:port"),
        ("https_proxy", f"http://ccsync:{PASSWORD}@"),
        ("ALL_PROXY", "socks5://proxy.corp:1080"),  # httpx's SOCKS support is not installed
    ],
)
def test_given_a_proxy_the_worker_cannot_use_when_it_starts_then_one_line_names_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = {
        "CCSYNC_BROKER_URL": unreachable_broker_url(),
        "CCSYNC_BROKER_CONNECT_TIMEOUT": "1",
        "CLOUDCOCKPIT_TOKEN": "tok",
        variable: value,
    }

    run = ccsync("worker", env=env, cwd=tmp_path)

    assert_failed_in_one_line(run, variable)
    assert "cannot reach the broker" not in run.line, "refused at start, not at the first event"
    assert run.seconds < COMMAND_ENDS_WITHIN


def test_given_a_ca_file_that_holds_no_certificate_when_the_worker_starts_then_one_line_names_it(
    tmp_path: Path,
) -> None:
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate\n", encoding="utf-8")
    env = {
        "CCSYNC_BROKER_URL": unreachable_broker_url(),
        "CCSYNC_BROKER_CONNECT_TIMEOUT": "1",
        "CLOUDCOCKPIT_TOKEN": "tok",
        "CLOUDCOCKPIT_CA_FILE": str(not_a_certificate),
    }

    run = ccsync("worker", env=env, cwd=tmp_path)

    assert_failed_in_one_line(run, "CLOUDCOCKPIT_CA_FILE", str(not_a_certificate))
    assert "cannot reach the broker" not in run.line, "refused at start, not at the first event"


def test_given_a_proxy_without_a_scheme_then_the_worker_starts_and_goes_on_to_the_broker(
    tmp_path: Path,
) -> None:
    """Taken as httpx's clients take it, for http://proxy.corp:3128."""
    env = {
        "CCSYNC_BROKER_URL": unreachable_broker_url(),
        "CCSYNC_BROKER_CONNECT_TIMEOUT": "1",
        "CLOUDCOCKPIT_TOKEN": "tok",
        "HTTPS_PROXY": "proxy.corp:3128",
    }

    run = ccsync("worker", env=env, cwd=tmp_path)

    assert_failed_in_one_line(run, "cannot reach the broker")


# --- version ------------------------------------------------------------------------------------


def test_when_asked_for_its_version_then_ccsync_prints_the_installed_one(tmp_path: Path) -> None:
    run = ccsync("--version", env={}, cwd=tmp_path)

    assert run.status == 0
    assert run.line == f"ccsync, version {importlib.metadata.version('ccsync')}"
