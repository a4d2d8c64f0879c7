"""The package and the image: metadata, one version, a changelog, a lock per extra, the image's
HEALTHCHECK and labels, and the sandbox harmless in the production image."""

from __future__ import annotations

import ast
import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support import free_port
from worker.cli import main

REPO = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
#: Each extra and the lock `make lock` writes for it.
LOCKS = {"dev": "dev.txt", "bench": "bench.txt", "flower": "flower.txt"}
#: The modules that may load the sandbox: itself, the command that serves it, and the demo.
SANDBOX_LOADERS = ("worker.sandbox", "worker.cli")


def final_stage() -> list[str]:
    """The Dockerfile's last stage, one instruction a string, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text("utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    instructions = [
        line for line in joined.splitlines() if line and not line.startswith(("#", " "))
    ]
    start = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[start:]


def instruction(keyword: str) -> str:
    (found,) = [line for line in final_stage() if line.startswith(f"{keyword} ")]
    return found.removeprefix(f"{keyword} ")


def pins(lock: str) -> dict[str, str]:
    text = (REPO / "requirements" / lock).read_text("utf-8")
    return dict(re.findall(r"^([a-z0-9_.-]+)==(\S+)", text, re.MULTILINE))


# --- metadata, version, changelog --------------------------------------------------------------


def test_given_the_project_then_it_states_license_authors_urls_and_classifiers() -> None:
    assert PROJECT["license"] == "LicenseRef-Proprietary"
    assert PROJECT["authors"] and PROJECT["urls"] and PROJECT["keywords"]
    assert "Programming Language :: Python :: 3.11" in PROJECT["classifiers"]
    assert "Private :: Do Not Upload" in PROJECT["classifiers"], "an internal package"
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")], (
        "PEP 639: the license expression replaces license classifiers"
    )


def test_given_the_version_then_ccsync_version_and_the_changelog_follow_pyproject() -> None:
    version = PROJECT["version"]
    changelog = (REPO / "CHANGELOG.md").read_text("utf-8")

    result = CliRunner().invoke(main, ["--version"])

    assert result.output.strip() == f"ccsync, version {version}"
    releases = re.findall(r"^## \[(\d[^\]]*)\]", changelog, re.MULTILINE)
    assert releases and releases[0] == version, "CHANGELOG.md's newest release is not the version"
    assert "## [Unreleased]" in changelog


def test_given_the_code_then_no_module_writes_a_version_of_its_own() -> None:
    written = [
        path.relative_to(REPO)
        for path in (REPO / "worker").rglob("*.py")
        if re.search(r"^__version__\s*=\s*['\"]", path.read_text("utf-8"), re.MULTILINE)
    ]

    assert not written


# --- locks -------------------------------------------------------------------------------------


def test_given_every_extra_then_make_lock_writes_a_lock_for_it() -> None:
    makefile = (REPO / "Makefile").read_text("utf-8")

    assert set(PROJECT["optional-dependencies"]) == set(LOCKS)
    for extra, lock in LOCKS.items():
        assert re.search(rf"--extra {extra}\b.*-o requirements/{lock}", makefile), extra
        assert (REPO / "requirements" / lock).exists(), f"run make lock: {lock} is missing"


def test_given_the_flower_lock_then_it_pins_flower_with_hashes_as_the_tests_ran_the_rest() -> None:
    flower, dev = pins("flower.txt"), pins("dev.txt")
    text = (REPO / "requirements" / "flower.txt").read_text("utf-8")

    assert "flower" in flower and "celery" in flower
    assert "--hash=sha256:" in text
    assert {name: flower[name] for name in flower.keys() & dev.keys()} == {
        name: dev[name] for name in flower.keys() & dev.keys()
    }


# --- the image ---------------------------------------------------------------------------------


def test_given_the_image_then_it_carries_the_open_containers_labels() -> None:
    labels = dict(
        re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', instruction("LABEL"))
    )

    assert labels["org.opencontainers.image.title"] == "ccsync"
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]
    assert labels["org.opencontainers.image.description"]
    assert instruction("FROM").endswith(labels["org.opencontainers.image.base.name"].split("/")[-1])


class _Livez(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def livez(request: pytest.FixtureRequest) -> Iterator[tuple[int, type[_Livez]]]:
    handler = type("Handler", (_Livez,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_given_the_healthcheck_then_it_passes_on_a_live_worker_and_fails_on_a_hung_one(
    livez: tuple[int, type[_Livez]],
) -> None:
    port, handler = livez
    options, command = instruction("HEALTHCHECK").split(" CMD ", 1)
    argv = json.loads(command)
    env = dict(re.findall(r"(\w+)=(\S+)", instruction("ENV")))

    def check() -> int:
        # The image's python is its interpreter; the environment is the image's, its port ours.
        run = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
        environment = {"CCSYNC_METRICS_PORT": str(port)}
        return subprocess.run(run, env=environment, capture_output=True, timeout=30).returncode

    assert env["CCSYNC_METRICS_PORT"] == instruction("EXPOSE")
    assert "--start-period=" in options and "--timeout=" in options
    assert check() == 0
    handler.status = 503
    assert check() != 0


# --- the sandbox in the production image -------------------------------------------------------


def test_given_the_worker_package_then_only_the_cli_loads_the_sandbox() -> None:
    loaders = set()
    for path in (REPO / "worker").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(
                name == "worker.sandbox" or name.startswith("worker.sandbox.") for name in names
            ):
                loaders.add(module)

    assert loaders, "the scan found no import of the sandbox at all"
    assert all(module.startswith(SANDBOX_LOADERS) for module in loaders), sorted(loaders)
