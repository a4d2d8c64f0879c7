"""``ccsync topology`` (printing) and the parts of ``ccsync health`` that need no service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.constants import DELAY_LEVELS, EVENTS_QUEUE
from worker.observability.redaction import Redaction
from worker.ops.health import CheckResult, failing_parts
from worker.ops.topology_export import (
    TopologyConflict,
    _RecordingChannel,
    record_topology,
    topology_json,
)
from worker.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_environment")


def test_given_no_dev_dependency_when_the_cli_is_imported_then_it_loads() -> None:
    """The image installs ccsync without the dev extras; its commands must not need them."""
    blocked = "yaml", "jsonschema", "pytest", "openapi_schema_validator"
    code = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); import worker.cli"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


# --- topology ----------------------------------------------------------------------------------


def test_given_no_flag_when_topology_runs_then_it_prints_every_object_without_a_broker() -> None:
    recorded = record_topology()

    result = CliRunner().invoke(main, ["topology"])

    assert result.exit_code == 0, result.output
    for name in [e.name for e in recorded.exchanges] + [q.name for q in recorded.queues]:
        assert f"  {name}  " in result.output
    assert f"customer-events -> queue {EVENTS_QUEUE}" in result.output
    assert "x-message-ttl=100" in result.output
    assert result.output.count("-> exchange ccsync.delay.") == DELAY_LEVELS


def test_given_json_when_topology_runs_then_it_prints_the_recorded_topology() -> None:
    result = CliRunner().invoke(main, ["topology", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == topology_json(record_topology())


def test_given_the_recording_then_it_holds_the_whole_ladder() -> None:
    recorded = record_topology()

    exchange_bindings = [b for b in recorded.bindings if b.destination_type == "exchange"]

    assert len(recorded.queues) == 4 + DELAY_LEVELS  # events, backfill, tasks, dead letters
    assert len(exchange_bindings) == DELAY_LEVELS
    assert {b.source for b in exchange_bindings} == {
        f"ccsync.delay.{level}" for level in range(DELAY_LEVELS)
    }


def test_given_one_exchange_declared_twice_differently_then_recording_refuses_it() -> None:
    channel = _RecordingChannel()
    channel.exchange_declare("x", "topic", True, False, {})

    with pytest.raises(TopologyConflict):
        channel.exchange_declare("x", "direct", True, False, {})


def test_given_an_unreachable_broker_when_applying_then_it_fails_without_the_password() -> None:
    env = {"CCSYNC_BROKER_URL": "amqp://ops:pa55-w0rd@127.0.0.1:1//"}

    result = CliRunner().invoke(main, ["topology", "--apply"], env=env)

    assert result.exit_code == 1
    assert "could not apply the topology" in result.output
    assert "pa55-w0rd" not in result.output


# --- health, without services --------------------------------------------------------------------


def test_given_results_then_each_prints_as_one_line_naming_its_part() -> None:
    results = [CheckResult("broker", True), CheckResult("redis", False, "refused")]

    lines = [r.line() for r in results]

    assert lines == ["broker ok", "redis FAILED: refused"]
    assert failing_parts(results) == ["redis"]
    assert CheckResult("token", True, "static token").line() == "token ok (static token)"


def test_given_settings_with_secrets_when_redacting_then_none_survives() -> None:
    settings = Settings.model_validate(
        {
            "CCSYNC_BROKER_URL": "amqp://ops:br0ker-pw@mq.example:5672/prod",
            "CCSYNC_REDIS_URL": "redis://:red1s-pw@cache.example:6379/0",
            "CLOUDCOCKPIT_CLIENT_ID": "client",
            "CLOUDCOCKPIT_CLIENT_SECRET": "cl1ent-secret",
            "SENTRY_DSN": "https://publickey123@o1.ingest.example/42",
        }
    )
    text = (
        "failed amqp://ops:br0ker-pw@mq.example:5672/prod; AUTH red1s-pw; "
        "form client_secret=cl1ent-secret; dsn https://publickey123@o1.ingest.example/42; "
        "any url https://user:other@host.example/"
    )

    redacted = Redaction.from_settings(settings).text(text)

    for secret in ("br0ker-pw", "red1s-pw", "cl1ent-secret", "publickey123", "other"):
        assert secret not in redacted
    assert "mq.example:5672" in redacted, "where it failed stays readable"


def test_given_contradictory_settings_when_health_runs_then_it_names_the_settings() -> None:
    env = {"CLOUDCOCKPIT_TOKEN": "t0ken-value", "CLOUDCOCKPIT_CLIENT_ID": "c"}

    result = CliRunner().invoke(main, ["health"], env=env)

    assert result.exit_code == 1
    assert result.output.startswith("settings FAILED: ")
    assert "unhealthy: settings" in result.output
    assert "t0ken-value" not in result.output
