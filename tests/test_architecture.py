"""The layers of docs/architecture.md hold: a module of queueing/ imports only from its own layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: Lowest first, as in docs/architecture.md. A package stands for all its modules.
LAYERS: list[set[str]] = [
    {"policy", "backoff", "breaker", "fingerprint", "throttle", "jsoncodec"},
    {
        "models",
        "registry",
        "autoretry",
        "conf",
        "declaration",
        "http",
        "tokens",
        "permissions",
        "exceptions",
        "migrations",
        "workflow",
        "broker_checks",
        "errors",
        "retry_queues",
        "sensitive",
    },
    {"lifecycle"},
    {
        "operations",
        "bulkplan",
        "claims",
        "sweep",
        "recording",
        "schedule",
        "groups",
        "gate",
        "pauses",
        "retention",
        "spool",
        "spool_replayer",
    },
    {"status", "alerts"},
    {"admin", "api", "api_groups", "metrics", "management", "retry", "tasks", "periodic", "signals", "checks", "apps"}
    | {"coverage", "bulkops"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}

#: Django-free by design: the pure policy code.
PURE = {"policy", "backoff", "breaker", "fingerprint", "throttle"}


def _unit(path: Path) -> str:
    """``queueing/status/report.py`` -> ``status``; ``queueing/claims.py`` -> ``claims``."""
    return path.relative_to(ROOT / "queueing").parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _queueing_units(imports: set[str]) -> set[str]:
    return {name.split(".")[1] for name in imports if name.startswith("queueing.") and name.count(".") >= 1}


SOURCES = sorted(p for p in (ROOT / "queueing").rglob("*.py") if p.name != "__init__.py" or p.parent.name != "queueing")


def test_every_module_of_queueing_has_a_layer() -> None:
    unplaced = sorted({_unit(p) for p in SOURCES} - set(LAYER_OF))
    assert not unplaced, f"place {unplaced} in a layer of tests/test_architecture.py and docs/architecture.md"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_nothing_from_a_layer_above_its_own(path: Path) -> None:
    unit = _unit(path)
    above = {
        other
        for other in _queueing_units(_imports(path))
        if other in LAYER_OF and unit in LAYER_OF and LAYER_OF[other] > LAYER_OF[unit]
    }
    assert not above, f"{path.relative_to(ROOT)} ({unit}) imports from a higher layer: {sorted(above)}"


@pytest.mark.parametrize("name", sorted(PURE))
def test_the_pure_policy_modules_know_no_django_and_no_celery(name: str) -> None:
    imported = _imports(ROOT / "queueing" / f"{name}.py")
    assert not {i for i in imported if i.split(".")[0] in {"django", "celery", "kombu", "queueing"}} - {
        "queueing.policy"
    }
