"""The layers point one way: kernel at the bottom, services on one floor, operations and benchmarks above.

Read from the source, not from what happens to be imported at run time: every ``import`` statement of
every module (lazy ones inside functions included) is walked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "vitrine"
SERVICES = ("export", "model_repository", "index_service", "gateway", "loadtest", "recommend", "adapt")
DEMO = "demo"
ABOVE = ("operations", "benchmarks")
PRODUCT = (KERNEL, *SERVICES, DEMO, *ABOVE)


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "_pb2" not in p.name)


def imports(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (relative imports stay inside it)."""
    found: dict[str, set[str]] = {}
    for path in _modules(package):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(PRODUCT)
    return found


def _violations(package: str, forbidden: set[str]) -> list[str]:
    return [
        f"{module} imports {sorted(names & forbidden)}"
        for module, names in imports(package).items()
        if names & forbidden
    ]


def test_the_walk_sees_real_imports() -> None:
    """Guard against a walk that finds nothing and so can never fail."""
    assert "vitrine" in imports("gateway")["gateway/servicer.py"]
    assert {"gateway", "index_service", "model_repository"} <= set().union(*imports("operations").values())


def test_the_kernel_imports_no_other_layer() -> None:
    assert _violations(KERNEL, set(PRODUCT) - {KERNEL}) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_and_nothing_above(service: str) -> None:
    assert _violations(service, (set(SERVICES) - {service}) | set(ABOVE)) == []


def test_demo_data_depends_on_the_kernel_alone() -> None:
    assert _violations(DEMO, set(PRODUCT) - {DEMO, KERNEL}) == []


def test_operations_do_not_depend_on_benchmarks() -> None:
    assert _violations("operations", {"benchmarks"}) == []


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
