"""What ``import worker`` offers, pinned: a change to the public surface is a change of this test.

The hierarchy drawn in the docstring of ``worker.exceptions`` (the one place it is drawn; the
package's docstring points there) is checked against the classes themselves.
"""

from __future__ import annotations

import inspect
import re
from types import ModuleType

import pytest

import worker
from worker import exceptions

#: The exceptions as ``worker.exceptions`` draws them, parents first.
EXCEPTIONS = [
    "CcsyncError",
    "ConfigurationError",
    "BrokerUnreachable",
    "InputError",
    "NoQueueBound",
    "InvalidEvent",
    "RelationshipBusy",
    "ApiError",
    "ApiRejected",
    "TransientFailure",
    "ApiUnavailable",
    "RateLimited",
    "TokenRejected",
    "TokenUnavailable",
    "LedgerUnavailable",
    "LeaseExpired",
]
#: Everything ``import worker`` offers, sorted as ``__all__`` holds it.
PUBLIC = sorted([*EXCEPTIONS, "IdentifierChanged", "correlation_id", "Settings", "load_settings"])


def test_all_names_exactly_the_public_surface() -> None:
    assert worker.__all__ == PUBLIC


def test_every_public_name_of_the_package_is_in_all() -> None:
    """Nothing public lands in the package by accident; submodules are the package's own."""
    public = {
        name
        for name, value in vars(worker).items()
        if not name.startswith("_") and not isinstance(value, ModuleType) and name != "annotations"
    }
    assert sorted(public) == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_each_public_name_imports_from_the_package(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from worker import {name}", namespace)
    assert namespace[name].__module__.startswith("worker.")  # type: ignore[attr-defined]


def test_star_import_gives_the_public_surface() -> None:
    namespace: dict[str, object] = {}
    exec("from worker import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == PUBLIC


def _exception_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(exceptions).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == exceptions.__name__
    }


def test_every_exception_is_public() -> None:
    assert sorted(set(_exception_classes()) - set(PUBLIC)) == []


def drawn_hierarchy(docstring: str) -> dict[str, str | None]:
    """Each class of the tree drawn under ``CcsyncError``, with its parent as drawn."""
    lines = docstring.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "CcsyncError")
    margin = lines[start].index("CcsyncError")
    parents: dict[str, str | None] = {}
    ancestry: list[str] = []
    for line in lines[start:]:
        found = re.match(r"([ │├└─]*)([A-Z]\w*)", line[margin:])
        if not line.strip() or found is None:
            break
        depth = len(found.group(1)) // 4
        del ancestry[depth:]
        parents[found.group(2)] = ancestry[-1] if ancestry else None
        ancestry.append(found.group(2))
    return parents


def test_the_drawn_hierarchy_is_the_real_one() -> None:
    real = {
        name: None if cls is exceptions.CcsyncError else cls.__bases__[0].__name__
        for name, cls in _exception_classes().items()
    }
    assert drawn_hierarchy(exceptions.__doc__ or "") == real


def test_the_package_points_to_the_drawing() -> None:
    assert "``worker.exceptions``" in (worker.__doc__ or "")
