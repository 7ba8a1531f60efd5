"""The package keeps its shape: dependencies point one way and nothing imports in a circle.

Walks every module's imports with ``ast`` (imports inside functions and under
``TYPE_CHECKING`` count too) and checks them against the layer order the README's
layout paragraph describes:

    foundation (contract, logs, metrics, errors, workers, database_urls)
    -> settings -> adapters (clients, bus, scheduler) -> domain (tracking, books,
    probes, emulator) -> api -> app -> cli (and control, the client commands)

A module may import its own layer or a lower one, never a higher one; the module
graph has no cycle; and only ``api/`` speaks HTTP through FastAPI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bgmock_twin"

LAYERS: dict[str, int] = {
    "bgmock_twin": 0,
    "contract": 0, "logs": 0, "metrics": 0, "errors": 0, "workers": 0, "database_urls": 0,
    "settings": 1,
    "clients": 2, "bus": 2, "scheduler": 2,
    "tracking": 3, "books": 3, "probes": 3, "emulator": 3,
    "api": 4,
    "app": 5,
    "cli": 6, "control": 6, "__main__": 6,
}
HTTP_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, source: str, is_package: bool = False) -> Iterator[str]:
    """Every module name the module ``name`` imports, relative imports resolved."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in MODULES else base


def _imports_of(name: str) -> Iterator[str]:
    path = MODULES[name]
    return _imports(name, path.read_text(), is_package=path.name == "__init__.py")


def _internal(target: str) -> str | None:
    """The package module ``target`` names (a name inside a module maps to it)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    assert top in LAYERS, f"{module}: add its package to LAYERS (and to the README layout)"
    return LAYERS[top]


GRAPH: dict[str, set[str]] = {
    name: {t for raw in _imports_of(name) if (t := _internal(raw)) and t != name}
    for name in MODULES
}


def test_the_walk_sees_the_package() -> None:
    assert "bgmock_twin.app" in MODULES and "bgmock_twin.contract.wire" in MODULES
    assert any(t.startswith("bgmock_twin.settings") for t in GRAPH["bgmock_twin.app"])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_dependencies_point_down(module: str) -> None:
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_only_the_api_speaks_fastapi() -> None:
    offenders = sorted(
        name for name in MODULES
        if not name.startswith("bgmock_twin.api")
        and any(i.split(".")[0] in HTTP_FRAMEWORKS for i in _imports_of(name))
    )
    assert not offenders, f"HTTP framework imported outside api/: {offenders}"


def test_the_walk_resolves_relative_and_lazy_imports() -> None:
    """A relative import and one inside a function are seen, so a violation would be."""
    source = "from ..api import server\n\ndef f() -> None:\n    from bgmock_twin import app\n"
    found = {_internal(t) for t in _imports("bgmock_twin.tracking.tracker", source)}
    assert found == {"bgmock_twin.api.server", "bgmock_twin.app"}
    assert all(t and _layer(t) > _layer("bgmock_twin.tracking.tracker") for t in found)
