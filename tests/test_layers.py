"""The layers point one way, and no package's modules import each other in a circle.

Four layers, bottom to top:

- the kernel, ``vitrine/``: contracts, configuration, the product and event records, shared metrics;
  it imports no other package;
- demo data, ``demo/``: the seeded catalog and shopper behaviour, built on the kernel alone;
- services, each on its own: export, the model repository, the index service, the gateway, load tests,
  the recommender and adaptation; they import the kernel, demo data and themselves, never each other;
- operations (``operations/``: launcher, stack, CLI) and ``benchmarks/``, which may import anything below.

Read from the source, not from what happens to be imported at run time: every ``import`` statement of
every module (lazy ones inside functions included) is walked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "vitrine"
DEMO = "demo"
SERVICES = ("export", "model_repository", "index_service", "gateway", "loadtest", "recommend", "adapt")
ABOVE = ("operations", "benchmarks")
PRODUCT = (KERNEL, DEMO, *SERVICES, *ABOVE)


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "_pb2" not in p.name)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(path: Path) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def imports(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (relative imports stay inside it)."""
    found: dict[str, set[str]] = {}
    for path in _modules(package):
        names: set[str] = set()
        for node in _import_nodes(path):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(PRODUCT)
    return found


def _violations(package: str, allowed: set[str]) -> list[str]:
    return [
        f"{module} imports {sorted(names - allowed)}"
        for module, names in imports(package).items()
        if names - allowed
    ]


def test_the_walk_sees_real_imports() -> None:
    """Guard against a walk that finds nothing and so can never fail."""
    assert "vitrine" in imports("gateway")["gateway/servicer.py"]
    assert "demo" in set().union(*imports("adapt").values())
    assert {"gateway", "index_service", "model_repository"} <= set().union(*imports("operations").values())


def test_the_kernel_imports_no_other_layer() -> None:
    assert _violations(KERNEL, {KERNEL}) == []


def test_demo_data_depends_on_the_kernel_alone() -> None:
    assert _violations(DEMO, {DEMO, KERNEL}) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_the_kernel_demo_data_and_itself_only(service: str) -> None:
    assert _violations(service, {KERNEL, DEMO, service}) == []


def test_operations_do_not_depend_on_benchmarks() -> None:
    assert _violations("operations", set(PRODUCT) - {"benchmarks"}) == []


def test_no_benchmark_lives_inside_a_service() -> None:
    assert [str(p.relative_to(ROOT)) for s in SERVICES for p in (ROOT / s).rglob("bench*.py")] == []


def test_one_launcher_starts_every_child_server() -> None:
    """Only the launcher spawns long-running children; everything else goes through it."""
    spawning = [
        str(path.relative_to(ROOT))
        for package in PRODUCT
        for path in _modules(package)
        if "subprocess.Popen(" in path.read_text(encoding="utf-8")
    ]
    assert spawning == ["operations/launcher.py"]


# ---- no cycles inside a package ---------------------------------------------------------------------


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` an import statement names: ``from a import b`` names the module ``a.b``
    when there is one, else ``a`` itself."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        named = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        candidates = [name if name in known else base for name in named]
    found = set()
    for name in candidates:
        while name and name not in known:  # ``import a.b.c`` where only ``a.b`` is a module of ours
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (module level, lazy and type-only alike)."""
    paths = {_module_name(p): p for p in _modules(package)}
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_nodes(path):
            edges |= _targets(node, module, is_package, known)
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets, each as a path that returns to its start."""
    found: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_cycle_walk_finds_a_circle_and_its_path() -> None:
    """Guard against a walk that cannot fail: a made-up graph, and a real edge of each kind."""
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
    assert "operations.recommend" in import_graph("operations")["operations.cli"]  # inside a function
    assert {"adapt.data", "adapt.reranker"} <= import_graph("adapt")["adapt.run"]  # from a import b


@pytest.mark.parametrize("package", PRODUCT)
def test_no_import_cycle_between_modules_of_a_package(package: str) -> None:
    assert [" -> ".join(c) for c in cycles(import_graph(package))] == []
