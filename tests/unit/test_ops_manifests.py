"""The Kubernetes manifests and the compose file, checked as the cluster and the image would read
them: each container's command line (the Dockerfile's ENTRYPOINT, then ``args`` or ``command``)
must be one the ``ccsync`` CLI accepts, parsed by click itself without running anything.

No cluster and no Docker engine: the files are parsed, the CLI is click's own parser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.unit.test_ops_compose import env_file
from worker.cli import main
from worker.constants import EVENTS_QUEUE
from worker.settings import DEFAULT_CONCURRENCY, ENTRA_TOKEN_URL, Settings, default_processes

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "ops" / "kubernetes"
COMPOSE = REPO / "docker-compose.yml"
#: The user the image runs as (Dockerfile ``useradd --uid``).
IMAGE_UID = 10001


# --- the image and the CLI ---------------------------------------------------------------------


def dockerfile_instruction(keyword: str) -> list[str]:
    """The JSON (exec) form of the final stage's ``keyword`` instruction (ENTRYPOINT, CMD)."""
    lines = (REPO / "Dockerfile").read_text("utf-8").splitlines()
    values = [line.split(None, 1)[1] for line in lines if line.startswith(f"{keyword} ")]
    assert values, f"the Dockerfile has no {keyword}"
    parsed: list[str] = json.loads(values[-1])
    return parsed


def accepted_by_cli(argv: list[str]) -> click.Context:
    """Parses ``argv`` (``ccsync`` and its arguments) the way the installed script would, down to
    the leaf command, converting every value; raises click's error on anything it refuses.
    Nothing runs: ``make_context`` only parses."""
    assert argv[:1] == ["ccsync"], f"the container runs {argv[:1]}, not ccsync: {argv}"
    command: click.Command = main
    context = command.make_context("ccsync", list(argv[1:]))
    while isinstance(command, click.Group):
        rest = [*context._protected_args, *context.args]
        assert rest, f"{argv}: no command given"
        name, found, remaining = command.resolve_command(context, rest)
        assert found is not None and name is not None
        command, context = found, found.make_context(name, remaining, parent=context)
    return context


def container_command_line(container: dict[str, Any]) -> list[str]:
    """What a Kubernetes container runs: ``command`` replaces the ENTRYPOINT, ``args`` the CMD."""
    entrypoint = container.get("command", dockerfile_instruction("ENTRYPOINT"))
    arguments = container.get("args", dockerfile_instruction("CMD"))
    return [*entrypoint, *arguments]


def service_command_line(service: dict[str, Any]) -> list[str]:
    """What a compose service runs: ``entrypoint`` replaces the ENTRYPOINT, ``command`` the CMD."""
    renamed = {"entrypoint": "command", "command": "args"}
    return container_command_line({renamed[k]: v for k, v in service.items() if k in renamed})


def test_given_a_command_line_the_cli_refuses_then_the_check_fails() -> None:
    """The check can fail: today's bug (``ccsync ccsync worker``) and an unknown option."""
    with pytest.raises(click.UsageError):
        accepted_by_cli(["ccsync", "ccsync", "worker"])
    with pytest.raises(click.UsageError):
        accepted_by_cli(["ccsync", "worker", "--no-such-option"])
    assert accepted_by_cli(["ccsync", "worker"]).params["concurrency"] == DEFAULT_CONCURRENCY


# --- Kubernetes --------------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    documents = [
        document
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text("utf-8"))
        if document
    ]
    assert documents, f"no manifests in {KUBERNETES}"
    return documents


def kind(name: str) -> list[dict[str, Any]]:
    return [document for document in manifests() if document["kind"] == name]


def only(name: str) -> dict[str, Any]:
    found = kind(name)
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def worker_deployment() -> dict[str, Any]:
    return only("Deployment")


def worker_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = worker_deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_given_every_container_then_its_command_line_is_one_the_cli_accepts() -> None:
    for document in manifests():
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            accepted_by_cli(container_command_line(container))


def test_given_the_worker_then_it_runs_ccsync_worker_at_the_default_concurrency() -> None:
    context = accepted_by_cli(container_command_line(worker_container()))

    assert context.info_name == "worker"
    assert context.params["concurrency"] == DEFAULT_CONCURRENCY, (
        "use the worker's default concurrency, or say why not in the manifest"
    )


def test_given_the_worker_then_a_pod_runs_one_process_as_it_asks_for_less_than_a_core() -> None:
    context = accepted_by_cli(container_command_line(worker_container()))
    cpu = worker_container()["resources"]["requests"]["cpu"]

    # One process per core of the node would be many processes in a pod limited to 512Mi.
    assert cpu.endswith("m") and int(cpu[:-1]) <= 1000
    assert context.params["processes"] == 1


def test_given_the_worker_then_it_probes_liveness_startup_and_readiness() -> None:
    container = worker_container()
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}

    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env["CCSYNC_METRICS_PORT"] == str(port)


def test_given_the_worker_then_it_requests_and_limits_its_resources() -> None:
    resources = worker_container()["resources"]

    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_given_the_worker_then_it_runs_non_root_read_only_without_capabilities() -> None:
    pod = worker_deployment()["spec"]["template"]["spec"]
    security = {**pod.get("securityContext", {}), **worker_container()["securityContext"]}

    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == IMAGE_UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root still needs a writable /tmp (Python's tempfile, Celery's state).
    mounts = {m["mountPath"] for m in worker_container().get("volumeMounts", [])}
    assert "/tmp" in mounts


def test_given_the_worker_then_a_disruption_budget_keeps_one_running() -> None:
    budget = only("PodDisruptionBudget")
    labels = worker_deployment()["spec"]["template"]["metadata"]["labels"]

    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"].get("minAvailable") == 1 or budget["spec"].get("maxUnavailable") == 1


def test_given_the_secret_example_then_it_holds_every_credential_the_worker_reads() -> None:
    secret = only("Secret")
    names = {ref["secretRef"]["name"] for ref in worker_container()["envFrom"]}
    values = secret["stringData"]

    assert secret["metadata"]["name"] in names
    assert {"CCSYNC_BROKER_URL", "CCSYNC_REDIS_URL", "CLOUDCOCKPIT_CLIENT_SECRET"} <= set(values)
    # What the example holds is a valid configuration (placeholders, not real secrets).
    settings = Settings.model_validate(values)
    assert settings.client_id and settings.token is None
    assert settings.token_url == ENTRA_TOKEN_URL


def test_given_the_event_queue_deepens_then_keda_scales_the_workers_on_it() -> None:
    scaled = only("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    authentication = only("TriggerAuthentication")

    assert scaled["apiVersion"].startswith("keda.sh/")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker_deployment()["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == EVENTS_QUEUE
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert int(trigger["metadata"]["value"]) > 0
    assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]
    (host,) = authentication["spec"]["secretTargetRef"]
    assert host["parameter"] == "host"
    assert (host["name"], host["key"]) == (only("Secret")["metadata"]["name"], "CCSYNC_BROKER_URL")


# --- compose -----------------------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text("utf-8"))["services"]
    return services


def compose_image_services() -> dict[str, Any]:
    """The services that run the ccsync image."""
    return {
        name: service
        for name, service in compose_services().items()
        if service.get("build") == "." or str(service.get("image", "")).startswith("ccsync:")
    }


def test_given_the_compose_services_of_the_image_then_the_cli_accepts_their_command_lines() -> None:
    services = compose_image_services()

    assert {"worker", "sandbox"} <= set(services)
    for service in services.values():
        accepted_by_cli(service_command_line(service))


def test_given_the_compose_worker_then_it_runs_at_the_default_concurrency() -> None:
    worker = compose_services()["worker"]

    context = accepted_by_cli(service_command_line(worker))

    assert context.params["concurrency"] == DEFAULT_CONCURRENCY
    assert context.params["processes"] == default_processes(), "one process per core"


def _compose_env_file_default() -> Path:
    (entry,) = compose_services()["worker"]["env_file"]
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", entry)
    assert match, f"{entry}: expected ${{NAME:-default file}}, one switch to real credentials"
    return REPO / match[1]


def test_given_the_compose_worker_then_cloudcockpit_settings_come_from_one_file() -> None:
    """Switching from the sandbox means naming another file: no sandbox value can remain beside
    a user's real credentials (a sandbox token URL, a sandbox client id beside a static token)."""
    environment = compose_services()["worker"]["environment"]

    assert not [name for name in environment if name.startswith("CLOUDCOCKPIT_")], (
        "compose's environment overrides the env_file: CloudCockpit's settings belong in it only"
    )
    sandbox = Settings.model_validate(env_file(_compose_env_file_default()))
    assert sandbox.base_url == "http://sandbox:8080"
    assert sandbox.token_url.startswith("http://sandbox:8080/")


@pytest.mark.parametrize(
    "real",
    [
        {"CLOUDCOCKPIT_TENANT": "acme.example", "CLOUDCOCKPIT_TOKEN": "t0ken"},
        {
            "CLOUDCOCKPIT_TENANT": "acme.example",
            "CLOUDCOCKPIT_CLIENT_ID": "id",
            "CLOUDCOCKPIT_CLIENT_SECRET": "secret",
        },
    ],
    ids=["static token", "client credentials"],
)
def test_given_real_credentials_in_their_own_file_then_nothing_of_the_sandbox_remains(
    real: dict[str, str],
) -> None:
    example = env_file(REPO / "ops" / "compose" / "cloudcockpit.env.example")
    # The user fills in their credentials; what they leave empty counts as unset.
    filled = {name: value for name, value in (example | real).items() if value}

    settings = Settings.model_validate(filled)

    assert "sandbox" not in settings.base_url
    assert settings.token_url == ENTRA_TOKEN_URL
    assert (settings.token is None) == ("CLOUDCOCKPIT_TOKEN" not in real)
