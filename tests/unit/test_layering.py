"""The package's layers, read from its import statements, so that an import across a boundary
fails here before it fails in production.

Every ``import`` and ``from ... import`` of every module of ``worker/`` counts: at module level,
inside functions, under ``if TYPE_CHECKING``. The rules:

- ``worker.processing`` and ``worker.cloudcockpit`` load no broker library (celery, kombu, py-amqp),
  not even through another module of ``worker``; nor does ``worker`` itself (its ``__init__`` runs
  before any submodule).
- Only ``worker.runtime`` and ``worker.celery`` (the app Celery's own tools look for) import
  celery.
- ``worker.dead_letter_queue``, ``worker.sandbox``, ``worker.ingest``, ``worker.console``,
  ``worker.ops.verify`` and ``worker.ops.whereabouts`` never reach ``worker.runtime``.
- Only ``worker.__main__`` imports ``worker.cli`` (besides ``worker.cli`` itself).
- No two modules of ``worker`` import each other, directly or through others.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import worker

PACKAGE = "worker"
ROOT = Path(worker.__file__).resolve().parent
BROKER_LIBRARIES = frozenset({"celery", "kombu", "amqp"})
FREE_OF_BROKER_LIBRARIES = ("worker.processing", "worker.cloudcockpit")
ALLOWED_TO_IMPORT_CELERY = ("worker.runtime", "worker.celery")
NEVER_REACHING_THE_RUNTIME = (
    "worker.dead_letter_queue",
    "worker.sandbox",
    "worker.ingest",
    "worker.console",
    "worker.ops.verify",
    "worker.ops.whereabouts",
)
ALLOWED_TO_IMPORT_THE_CLI = ("worker.__main__", "worker.cli")


@dataclass(frozen=True)
class ImportGraph:
    """Which modules of the package each module names (``internal``), and which top-level
    packages from outside it (``external``)."""

    internal: dict[str, set[str]]
    external: dict[str, set[str]]

    @property
    def modules(self) -> list[str]:
        return sorted(self.internal)

    def loaded_with(self, module: str) -> dict[str, str | None]:
        """The modules of the package that importing ``module`` executes, each with the module
        that imported it (None for ``module``): the named ones, and every package ``__init__``
        on their way."""
        importer: dict[str, str | None] = {module: None}
        pending = [module]
        while pending:
            current = pending.pop()
            for target in sorted(self.internal[current] | set(_packages_above(current))):
                for loaded in [*_packages_above(target), target]:
                    if loaded in self.internal and loaded not in importer:
                        importer[loaded] = current
                        pending.append(loaded)
        return importer

    def chain(self, module: str, reached: str) -> str:
        """How importing ``module`` comes to execute ``reached``, for a failure message."""
        importer = self.loaded_with(module)
        path = [reached]
        while (previous := importer[path[-1]]) is not None:
            path.append(previous)
        return " -> ".join(reversed(path))


def _packages_above(module: str) -> Iterator[str]:
    parts = module.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def _within(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in packages)


def read_import_graph(root: Path, package: str = PACKAGE) -> ImportGraph:
    """Every import statement of every module under ``root`` (the directory of ``package``)."""
    paths: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        paths[".".join(parts[:-1] if is_package else parts)] = path
    internal: dict[str, set[str]] = {module: set() for module in paths}
    external: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for named in _named_imports(ast.parse(path.read_text(encoding="utf-8")), here, paths):
            if _within(named, [package]):
                internal[module].add(_module_of(named, paths))
            else:
                external[module].add(named.partition(".")[0])
    return ImportGraph(internal, external)


def _named_imports(tree: ast.AST, here: str, modules: dict[str, Path]) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in modules else base


def _module_of(named: str, modules: dict[str, Path]) -> str:
    """The module an import names: ``import worker.a.b`` may name an attribute ``b`` of ``a``."""
    while named not in modules:
        if "." not in named:
            raise AssertionError(f"{named} is imported but is no module of the package")
        named = named.rpartition(".")[0]
    return named


def broker_libraries_loaded(graph: ImportGraph, modules: Iterable[str]) -> list[str]:
    """Each of ``modules`` whose import loads a broker library, and how."""
    return [
        f"{graph.chain(module, loaded)} imports {library}"
        for module in modules
        for loaded in graph.loaded_with(module)
        for library in sorted(graph.external[loaded] & BROKER_LIBRARIES)
    ]


def modules_within(graph: ImportGraph, packages: Iterable[str]) -> list[str]:
    return [module for module in graph.modules if _within(module, packages)]


def celery_importers(graph: ImportGraph, allowed: Iterable[str]) -> list[str]:
    return [
        module
        for module in graph.modules
        if "celery" in graph.external[module] and not _within(module, allowed)
    ]


def runtime_reached(graph: ImportGraph, packages: Iterable[str]) -> list[str]:
    return [
        graph.chain(module, loaded)
        for module in graph.modules
        if _within(module, packages)
        for loaded in graph.loaded_with(module)
        if _within(loaded, ["worker.runtime"])
    ]


def cli_importers(graph: ImportGraph, allowed: Iterable[str]) -> list[str]:
    return [
        f"{module} imports {target}"
        for module in graph.modules
        if not _within(module, allowed)
        for target in sorted(graph.internal[module])
        if _within(target, ["worker.cli"])
    ]


def import_cycles(graph: ImportGraph) -> list[list[str]]:
    """The strongly connected components of the import graph that hold a cycle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.internal[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.internal[module]:
                cycles.append(sorted(component))

    for module in graph.modules:
        if module not in index:
            visit(module)
    return cycles


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return read_import_graph(ROOT)


def test_the_graph_holds_every_module_and_its_imports_in_functions_too(graph: ImportGraph) -> None:
    assert "worker" in graph.modules
    assert "worker.processing.ledger" in graph.modules
    assert "worker.runtime.app" in graph.internal["worker.cli"]  # imported inside a function
    assert "celery" in graph.external["worker.runtime.intake"]


def test_every_package_a_rule_names_exists(graph: ImportGraph) -> None:
    """A renamed package would otherwise leave its rule checking nothing."""
    named = [
        *FREE_OF_BROKER_LIBRARIES,
        *ALLOWED_TO_IMPORT_CELERY,
        *NEVER_REACHING_THE_RUNTIME,
        *ALLOWED_TO_IMPORT_THE_CLI,
    ]
    assert [package for package in named if package not in graph.internal] == []


def test_processing_cloudcockpit_and_the_root_load_no_broker_library(graph: ImportGraph) -> None:
    modules = [PACKAGE, *modules_within(graph, FREE_OF_BROKER_LIBRARIES)]
    assert broker_libraries_loaded(graph, modules) == []


def test_importing_them_loads_no_broker_library_even_through_a_dependency(
    graph: ImportGraph,
) -> None:
    """What the statements cannot show: a library of ours that loads celery behind our back."""
    modules = [PACKAGE, *modules_within(graph, FREE_OF_BROKER_LIBRARIES)]
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        libraries = set({sorted(BROKER_LIBRARIES)!r})
        print(sorted({{m.partition(".")[0] for m in sys.modules}} & libraries))
        """
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"


def test_only_the_runtime_imports_celery(graph: ImportGraph) -> None:
    assert celery_importers(graph, ALLOWED_TO_IMPORT_CELERY) == []


def test_dlq_sandbox_and_ingest_never_reach_the_runtime(graph: ImportGraph) -> None:
    assert runtime_reached(graph, NEVER_REACHING_THE_RUNTIME) == []


def test_only_the_entry_point_imports_the_cli(graph: ImportGraph) -> None:
    assert cli_importers(graph, ALLOWED_TO_IMPORT_THE_CLI) == []


def test_no_import_cycles(graph: ImportGraph) -> None:
    assert import_cycles(graph) == []


def _write_package(root: Path, modules: dict[str, str]) -> Path:
    for relative, text in {"__init__.py": "", **modules}.items():
        path = root / "worker" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "worker"


def test_given_each_kind_of_violation_then_its_rule_finds_it(tmp_path: Path) -> None:
    graph = read_import_graph(
        _write_package(
            tmp_path,
            {
                "processing/__init__.py": "",
                "processing/applier.py": "from worker.helpers import publish\n",
                "helpers.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from kombu import Connection\n"
                ),
                "runtime/__init__.py": "",
                "runtime/app.py": "import celery\nfrom . import intake\n",
                "runtime/intake.py": "def make():\n    from .app import celery\n",
                "dead_letter_queue/__init__.py": "from worker.sandbox import state\n",
                "sandbox/__init__.py": "",
                "sandbox/state.py": "from ..runtime import app\nimport celery.bootsteps\n",
                "cli/__init__.py": "",
                "ops.py": "def main():\n    import worker.cli\n",
            },
        )
    )

    assert broker_libraries_loaded(graph, modules_within(graph, FREE_OF_BROKER_LIBRARIES)) == [
        "worker.processing.applier -> worker.helpers imports kombu"
    ]
    assert celery_importers(graph, ALLOWED_TO_IMPORT_CELERY) == ["worker.sandbox.state"]
    assert runtime_reached(graph, NEVER_REACHING_THE_RUNTIME) == [
        "worker.dead_letter_queue -> worker.sandbox.state -> worker.runtime",
        "worker.dead_letter_queue -> worker.sandbox.state -> worker.runtime.app",
        "worker.dead_letter_queue -> worker.sandbox.state -> worker.runtime.app"
        " -> worker.runtime.intake",
        "worker.sandbox.state -> worker.runtime",
        "worker.sandbox.state -> worker.runtime.app",
        "worker.sandbox.state -> worker.runtime.app -> worker.runtime.intake",
    ]
    assert cli_importers(graph, ALLOWED_TO_IMPORT_THE_CLI) == ["worker.ops imports worker.cli"]
    assert import_cycles(graph) == [["worker.runtime.app", "worker.runtime.intake"]]


def test_importing_worker_celery_builds_no_app_until_asked() -> None:
    """``celery -A worker`` reads ``worker.celery.app``; importing the module alone reads no
    setting (a bad URL in the environment does not fail the import) and loads no celery."""
    script = textwrap.dedent(
        """
        import os, sys
        os.environ["CCSYNC_BROKER_URL"] = "not a url"
        import worker.celery as module
        print("celery" in sys.modules, module._app is None)
        """
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.split() == ["False", "True"]
