"""docker-compose.yml, the Dockerfile and the broker's config, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click import Group

from worker.cli import main
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "contract.md"
# Settings of the contract that a compose deployment leaves at their defaults (tuning, extra CAs,
# the log format), and those of commands the compose file does not run (``ccsync ingest``): the
# worker's environment need not show them.
LEFT_AT_DEFAULTS = {
    "CCSYNC_RETRY_JITTER",
    # The sandbox limits no rate; against the real API, its own compose env file sets it.
    "CCSYNC_API_RATE_LIMIT",
    "CCSYNC_HTTP_TIMEOUT",
    "CCSYNC_LOCK_TTL_SECONDS",
    "CCSYNC_UNANSWERED_HOLD_SECONDS",
    "CCSYNC_MAX_EVENT_BYTES",
    "CCSYNC_LOG_FORMAT",
    "CCSYNC_BROKER_CA_FILE",
    "CLOUDCOCKPIT_CA_FILE",
    "CCSYNC_INGEST_TOKEN",
    "CCSYNC_INGEST_SECRET",
    "CCSYNC_MAX_BATCH_EVENTS",
    # The dead-letter store's: the keeper and the operator tools, not the worker.
    "CCSYNC_DLQ_STORE_URL",
    "CCSYNC_DLQ_RETENTION_DAYS",
    # The console's, not the worker's.
    "CCSYNC_CONSOLE_TOKEN",
    "CCSYNC_CONSOLE_TRUSTED_PROXIES",
    "CCSYNC_CONSOLE_ALLOWED_HOSTS",
}
REQUIRED_SERVICES = ("rabbitmq", "redis", "sandbox", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
    return document


@pytest.fixture(scope="module")
def contract_variables() -> set[str]:
    """The variables of the contract's configuration tables (section 5), but for the ``OTEL_*``
    ones: the OpenTelemetry SDK reads those, not ``Settings`` (tests/unit/test_tracing.py)."""
    if not CONTRACT.exists():
        pytest.fail(f"{CONTRACT} is missing: the compose file is checked against it")
    text = CONTRACT.read_text("utf-8")
    section = text.split("## 5.", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    names = {name for name in names if not name.startswith("OTEL_")}
    assert "CCSYNC_BROKER_URL" in names, "the contract's table could not be read"
    return names


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment: its ``env_file`` (the default file of ``${NAME:-file}``), then
    its ``environment``, which compose lets override the file."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    files = [REPO / _default(entry) for entry in service.get("env_file", [])]
    from_files = {name: value for path in files for name, value in env_file(path).items()}
    return from_files | {str(k): str(v) for k, v in env.items()}


def env_file(path: Path) -> dict[str, str]:
    """The NAME=value lines of a compose env file."""
    return {
        name.strip(): value.strip()
        for line in path.read_text("utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        for name, _, value in [line.partition("=")]
    }


def _default(value: str) -> str:
    """The value compose uses when the variable is not set: ``${NAME:-default}`` -> default."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:?-(.*)\}", value)
    return match[1] if match else value


def test_given_the_compose_file_then_it_runs_broker_redis_sandbox_and_worker(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]

    assert set(REQUIRED_SERVICES) <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13")
    assert services["redis"]["image"].startswith("redis:")
    for name in ("worker", "sandbox"):
        assert services[name]["build"] == ".", f"{name} is built from this repository"
    assert services["worker"]["command"][0] == "worker"
    assert services["sandbox"]["command"][:1] == ["sandbox"]
    assert "0.0.0.0" in services["sandbox"]["command"], "the sandbox must listen beyond loopback"


@pytest.mark.parametrize("name", (*REQUIRED_SERVICES, "prometheus", "grafana"))
def test_given_a_service_then_it_has_a_health_check(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name]["healthcheck"]

    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert len(check["test"]) > 1
    for key in ("interval", "timeout", "retries"):
        assert key in check


def test_given_the_worker_then_it_starts_after_healthy_dependencies_and_probes_liveness(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]

    depends = worker["depends_on"]
    probe = worker["healthcheck"]["test"]

    assert {name: d["condition"] for name, d in depends.items()} == {
        "rabbitmq": "service_healthy",
        "redis": "service_healthy",
        "sandbox": "service_healthy",
    }
    # Liveness (the event loop runs), not readiness: an API outage must not fail the container.
    assert "http://127.0.0.1:9100/livez" in probe[-1]
    assert worker["environment"]["CCSYNC_METRICS_PORT"] == "9100"
    assert isinstance(main, Group) and "health" in main.commands


def test_given_the_worker_environment_then_every_name_is_a_contract_setting(
    compose: dict[str, Any], contract_variables: set[str]
) -> None:
    # The settings for the real CloudCockpit replace the sandbox's file as a whole.
    real = env_file(REPO / "ops" / "compose" / "cloudcockpit.env.example")
    env = _environment(compose["services"]["worker"]) | real

    unknown = set(env) - contract_variables

    assert not unknown, f"not in the contract's section 5: {sorted(unknown)}"
    missing = contract_variables - LEFT_AT_DEFAULTS - set(env)
    assert not missing, f"the worker's environment should show every setting: {sorted(missing)}"


def _settings_aliases() -> set[str]:
    """The environment variables ``Settings`` reads."""
    aliases: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        aliases.update([alias] if isinstance(alias, str) else [str(c) for c in choices or []])
    return aliases


def test_given_the_worker_environment_then_the_settings_read_every_contract_name(
    compose: dict[str, Any],
) -> None:
    env = _environment(compose["services"]["worker"])

    assert set(env) <= _settings_aliases()


def test_given_the_contract_settings_then_the_code_reads_each_and_documents_no_other(
    contract_variables: set[str],
) -> None:
    aliases = _settings_aliases()

    assert not contract_variables - aliases, "documented in section 5 but not read by Settings"
    assert not aliases - contract_variables, "read by Settings but not documented in section 5"


def test_given_the_worker_environment_unset_then_it_points_at_the_compose_services(
    compose: dict[str, Any],
) -> None:
    env = {name: _default(v) for name, v in _environment(compose["services"]["worker"]).items()}

    # Empty values count as unset, as the worker's settings read its environment.
    settings = Settings.model_validate({k: v for k, v in env.items() if v})

    assert settings.broker_url == "amqp://guest:guest@rabbitmq:5672//"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.base_url == "http://sandbox:8080"
    assert settings.client_id == "sandbox-client" and settings.token is None
    assert settings.token_url.startswith("http://sandbox:8080/") and settings.token_url.endswith(
        "/oauth2/v2.0/token"
    )
    assert env["CCSYNC_METRICS_PORT"] == "9100"
    assert "127.0.0.1:9100:9100" in compose["services"]["worker"]["ports"]


def test_given_published_ports_then_they_bind_to_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to every interface"


def test_given_bind_mounts_then_their_sources_exist_in_the_repository(
    compose: dict[str, Any],
) -> None:
    mounts = [
        (name, volume.split(":"))
        for name, service in compose["services"].items()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]

    assert mounts
    for name, (source, *_rest) in mounts:
        assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_given_the_broker_then_it_loads_access_before_the_topology_from_its_definitions_dir(
    compose: dict[str, Any],
) -> None:
    volumes = compose["services"]["rabbitmq"]["volumes"]
    conf = (REPO / "ops" / "rabbitmq" / "rabbitmq.conf").read_text("utf-8")

    settings = dict(
        line.split(" = ", 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    directory = settings["load_definitions"]
    targets = {v.split(":")[0]: v.split(":")[1] for v in volumes}

    assert targets["./ops/rabbitmq/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    access = targets["./ops/rabbitmq/dev-access.json"]
    topology = targets["./ops/rabbitmq/definitions.json"]
    assert Path(access).parent == Path(topology).parent == Path(directory)
    assert sorted([access, topology]) == [access, topology], "the vhost must exist first"
    assert settings["loopback_users.guest"] == "false"


def test_given_the_dockerfile_then_the_image_runs_ccsync_as_a_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text("utf-8")

    instructions = [
        line.split(None, 1) for line in dockerfile.splitlines() if line and not line[0].isspace()
    ]
    instructions = [i for i in instructions if not i[0].startswith("#")]
    final_stage = instructions[max(i for i, ins in enumerate(instructions) if ins[0] == "FROM") :]
    by_keyword = {ins[0]: ins[1] for ins in final_stage if len(ins) > 1}

    assert by_keyword["ENTRYPOINT"] == '["ccsync"]'
    assert by_keyword["CMD"] == '["worker"]'
    assert by_keyword["USER"] not in ("root", "0")
    assert by_keyword["EXPOSE"] == "9100"
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for source in copied.split():
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_given_the_dockerignore_then_the_build_context_leaves_out_local_state() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert {".git", ".venv", "tests"} <= ignored
    assert "worker" not in ignored and "pyproject.toml" not in ignored


def test_given_prometheus_then_it_scrapes_the_worker_metrics_port_and_loads_the_alerts(
    compose: dict[str, Any],
) -> None:
    config = yaml.safe_load((REPO / "ops" / "prometheus" / "prometheus.yml").read_text("utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    mounts = {
        v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]
    }

    port = _default(_environment(compose["services"]["worker"])["CCSYNC_METRICS_PORT"])

    assert jobs["ccsync"]["static_configs"][0]["targets"] == [f"worker:{port}"]
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"
    assert all(mounts.get(path) for path in config["rule_files"])
    assert mounts[config["rule_files"][0]] == "./ops/prometheus/alerts.yml"


def test_given_the_broker_config_then_it_refuses_messages_far_larger_than_an_event() -> None:
    conf = (REPO / "ops" / "rabbitmq" / "rabbitmq.conf").read_text("utf-8")
    settings = dict(
        line.split(" = ", 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    # Above ccsync's own limit, so an oversized event still becomes a readable dead letter.
    assert int(settings["max_message_size"]) > Settings().max_event_bytes
