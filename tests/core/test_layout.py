"""How the package's modules import each other: no import cycles, and no service importing
another service's internals (the contract and the shared homes are for that)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tenantry"
SERVICES = ("api", "worker", "operator")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's own statements, those under `if TYPE_CHECKING:` included (a dependency for
    the type checker is still a dependency); imports inside functions are left out."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from node.body
        else:
            yield node


def _imports(path: Path, known: set[str], *, deferred: bool = False) -> Iterator[str]:
    """The tenantry modules a module depends on; with `deferred`, those imported inside its
    functions too."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if deferred else _top_level(tree.body):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tenantry"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in known else node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("tenantry"))


def _graph(*, deferred: bool = False) -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {
        name: set(_imports(path, known, deferred=deferred)) & known for name, path in paths.items()
    }


def test_no_module_imports_itself_back_through_others() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        trail.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        trail.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_service_imports_another_services_modules_not_even_inside_a_function() -> None:
    """`tenantry.dev` (and `tenantry.testing` on top of it) is where the services meet."""
    crossings = [
        f"{module} imports {imported}"
        for module, imports in _graph(deferred=True).items()
        for imported in imports
        for service in SERVICES
        if module.startswith(f"tenantry.{service}")
        for other in SERVICES
        if other != service and imported.startswith(f"tenantry.{other}")
    ]
    assert crossings == []
