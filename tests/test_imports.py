"""The package's import graph: no cycles, and Flower only under ``fedspear/flower`` (docs/architecture.md).

grimp reads every ``import`` statement of the package, including those inside functions, without running them.
"""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("fedspear", include_external_packages=True, cache_dir=None)


def cycles(graph, package: str = "fedspear") -> list[tuple[str, ...]]:
    """Every direct import a -> b inside ``package`` whose target b leads back to a, as (a, b, ..., a)."""
    found = []
    for importer in sorted(m for m in graph.modules if m.startswith(package)):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.startswith(package) and graph.chain_exists(importer=imported, imported=importer):
                found.append((importer, *graph.find_shortest_chain(importer=imported, imported=importer)))
    return found


def test_the_package_has_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    g = grimp.ImportGraph()
    for m in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        g.add_module(m)
    g.add_import(importer="pkg.a", imported="pkg.b")
    g.add_import(importer="pkg.b", imported="pkg.a")
    g.add_import(importer="pkg.a", imported="pkg.c")
    assert cycles(g, "pkg") == [("pkg.a", "pkg.b", "pkg.a"), ("pkg.b", "pkg.a", "pkg.b")]


def test_only_the_flower_package_imports_flwr(graph):
    importers = {m for m in graph.find_modules_that_directly_import("flwr")}
    assert importers and all(m.startswith("fedspear.flower.") for m in importers), sorted(importers)


def test_the_cli_imports_no_torch_flower_or_web_code_at_module_level():
    """``fedspear check`` stays fast: the modules the CLI imports at start pull in none of the heavy packages."""
    import subprocess
    import sys

    code = ("import sys, fedspear.cli; heavy = {'torch', 'transformers', 'flwr', 'fastapi', 'uvicorn'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("module", ["fedspear.feedback", "fedspear.extensions", "fedspear.tasks.base",
                                    "fedspear.tasks", "fedspear.config", "fedspear.api", "fedspear.cli"])
def test_each_light_module_imports_first(module):
    """The tasks package imports extensions, which imports feedback, which imports tasks.base: whichever a fresh
    interpreter imports first, the others finish loading (no 'partially initialized module' error)."""
    import subprocess
    import sys

    code = f"import {module}; import fedspear.tasks, fedspear.extensions; print(fedspear.tasks.get_task('world').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "world", out.stderr[-500:]
