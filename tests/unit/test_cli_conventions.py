"""The conventions every ``ccsync`` command keeps, checked over the whole command tree, and the
commands that need no service: ``validate``, ``config``, ``publish``'s checks before it connects,
``health --json`` on bad settings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from worker.cli import main
from worker.cli.failures import EXIT_STATUS_EPILOG
from worker.constants import EVENT_TYPE

pytestmark = pytest.mark.usefixtures("clean_environment")

#: A broker URL where nothing listens: a command that connects fails at once.
UNREACHABLE = "amqp://guest:guest@127.0.0.1:9//"


def commands(
    group: click.Group = main, path: str = "ccsync"
) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")


def options() -> Iterator[tuple[str, click.Option]]:
    for path, command in commands():
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                yield f"{path} {param.opts[-1]}", param


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin, env=env)


def native_event(**fields: object) -> dict[str, object]:
    return {
        "eventId": f"e-{uuid.uuid4()}",
        "eventType": EVENT_TYPE,
        "occurredAt": "2026-01-01T00:00:00Z",
        "customerId": str(uuid.uuid4()),
        "internalIdentifier": "ERP-1",
    } | fields


# --- over the whole tree -----------------------------------------------------------------------


def test_given_an_option_read_from_the_environment_then_help_shows_its_variable() -> None:
    with_envvar = [(where, option) for where, option in options() if option.envvar]

    assert with_envvar, "no option reads the environment"
    hidden = [where for where, option in with_envvar if not option.show_envvar]
    assert not hidden, f"--help does not show the variable of {hidden}"
    help_text = " ".join(run("worker", "--help").output.split())
    assert "env var: CCSYNC_CONCURRENCY" in help_text


def test_given_ccsync_concurrency_then_the_worker_takes_it() -> None:
    context = main.commands["worker"].make_context("worker", [])
    assert context.params["concurrency"] > 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CCSYNC_CONCURRENCY", "8")
        assert main.commands["worker"].make_context("worker", []).params["concurrency"] == 8


def test_given_a_numeric_option_then_it_has_a_lower_bound() -> None:
    unbounded = [
        where
        for where, option in options()
        if isinstance(option.type, click.types._NumberParamTypeBase)
        and not (
            isinstance(option.type, click.types._NumberRangeBase) and option.type.min is not None
        )
    ]

    assert not unbounded, f"numeric options without a lower bound: {unbounded}"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_given_no_calls_in_flight_then_the_worker_refuses_to_start(value: str) -> None:
    result = run("worker", "--concurrency", value)

    assert result.exit_code == 2
    assert "--concurrency" in result.output and "x>=1" in result.output


@pytest.mark.parametrize("name", ["--since", "--customer", "--rate"])
def test_given_an_option_of_several_commands_then_it_has_one_type(name: str) -> None:
    types = {where: option.type for where, option in options() if where.endswith(f" {name}")}

    assert len(types) >= 2, f"{name} is in fewer than two commands: {sorted(types)}"
    assert len({repr(t) for t in types.values()}) == 1, f"{name} differs: {types}"


@pytest.mark.parametrize(
    "command", ["health", "dlq replay", "dlq purge", "pause", "validate", "config", "events show"]
)
def test_given_a_command_scripts_read_then_it_has_json(command: str) -> None:
    found = dict(commands())[f"ccsync {command}"]

    assert "--json" in {opt for param in found.params for opt in param.opts}


def test_given_any_command_then_its_help_ends_with_the_exit_statuses() -> None:
    for where, command in [("ccsync", main), *commands()]:
        assert command.epilog == EXIT_STATUS_EPILOG, where
    assert "130  interrupted" in run("dlq", "replay", "--help").output


# --- validate ----------------------------------------------------------------------------------


def test_given_valid_events_of_both_forms_then_validate_says_so_and_exits_0(tmp_path: Path) -> None:
    structured = {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "id": "ce-1",
        "source": "erp",
        "time": "2026-01-01T00:00:00Z",
        "data": {"customerId": str(uuid.uuid4()), "internalIdentifier": "X"},
    }
    path = tmp_path / "events.jsonl"
    path.write_text(f"{json.dumps(native_event())}\n{json.dumps(structured)}\n", "utf-8")

    result = run("validate", str(path))

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "2 event(s) valid"


def test_given_invalid_events_then_validate_names_each_fault_and_exits_1() -> None:
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    events = [
        native_event(eventId="ok"),
        native_event(eventId="bad-uuid", customerId="nope"),
        native_event(eventId="future", occurredAt=ahead),
    ]

    result = run("validate", "-", "--json", stdin="\n".join(json.dumps(e) for e in events))

    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["eventId"], line["valid"]) for line in lines] == [
        ("ok", True),
        ("bad-uuid", False),
        ("future", False),
    ]
    assert "customerId" in lines[1]["reason"] and "nope" not in lines[1]["reason"]
    assert "ahead of the worker's clock" in lines[2]["reason"]
    assert "2 of 3 event(s) invalid" in result.output


# --- publish -----------------------------------------------------------------------------------


def test_given_an_invalid_event_then_publish_refuses_before_it_connects() -> None:
    bad = json.dumps(native_event(customerId="not-a-uuid"))

    result = run("publish", "--file", "-", stdin=bad, env={"CCSYNC_BROKER_URL": UNREACHABLE})

    assert result.exit_code == 1
    assert "event 1 is invalid, nothing was published: customerId" in result.output
    assert "broker" not in result.output


def test_given_events_on_standard_input_then_publish_reads_them_and_goes_to_the_broker() -> None:
    good = json.dumps(native_event())

    result = run(
        "publish",
        "--file",
        "-",
        stdin=good,
        env={"CCSYNC_BROKER_URL": UNREACHABLE, "CCSYNC_BROKER_CONNECT_TIMEOUT": "1"},
    )

    assert result.exit_code == 1
    assert "cannot reach the broker" in result.output


def test_given_no_validate_then_publish_goes_to_the_broker_with_an_invalid_event() -> None:
    bad = json.dumps(native_event(customerId="not-a-uuid"))

    result = run(
        "publish",
        "--file",
        "-",
        "--no-validate",
        stdin=bad,
        env={"CCSYNC_BROKER_URL": UNREACHABLE, "CCSYNC_BROKER_CONNECT_TIMEOUT": "1"},
    )

    assert "cannot reach the broker" in result.output


# --- config ------------------------------------------------------------------------------------


def test_given_secrets_in_the_environment_then_config_prints_every_setting_masked() -> None:
    env = {
        "CCSYNC_BROKER_URL": "amqp://ccsync:broker-pw@rabbit:5672//",
        "CCSYNC_REDIS_URL": "redis://:redis-pw@redis:6379/0",
        "CLOUDCOCKPIT_TOKEN": "static-token-value",
        "SENTRY_DSN": "https://key@sentry.example/1",
        "CCSYNC_CONCURRENCY": "8",
    }

    text = run("config", env=env)
    as_json = run("config", "--json", env=env)

    assert text.exit_code == 0 and as_json.exit_code == 0, text.output
    for secret in ("broker-pw", "redis-pw", "static-token-value", "key@"):
        assert secret not in text.output and secret not in as_json.output
    settings = json.loads(as_json.output)
    assert settings["CLOUDCOCKPIT_TOKEN"] == "********"
    assert settings["CCSYNC_BROKER_URL"] == "amqp://***@rabbit:5672//"
    assert settings["CLOUDCOCKPIT_CLIENT_ID"] is None
    assert "CLOUDCOCKPIT_TOKEN=********\n" in text.output
    assert "CCSYNC_RETRY_JITTER=0.2  # default" in text.output


# --- health --json, without a service ----------------------------------------------------------


def test_given_contradictory_settings_then_health_json_says_unhealthy() -> None:
    env = {"CLOUDCOCKPIT_TOKEN": "t", "CLOUDCOCKPIT_CLIENT_ID": "id"}

    result = run("health", "--json", env=env)

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["parts"][0]["part"] == "settings" and not report["parts"][0]["ok"]
