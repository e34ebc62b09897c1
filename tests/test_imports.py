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


# The layers docs/architecture.md states, highest first: a module may import its own layer and those below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli and api", ("fedspear", "fedspear.__main__", "fedspear.cli", "fedspear.api")),
    ("front ends", ("fedspear.federation.simulator", "fedspear.flower", "fedspear.serve", "fedspear.compare",
                    "fedspear.sweep", "fedspear.world_base")),
    ("federation server and client", ("fedspear.federation", "fedspear.records", "fedspear.report",
                                      "fedspear.plots", "fedspear.tracking", "fedspear.metrics")),
    ("privacy", ("fedspear.privacy",)),
    ("evaluation", ("fedspear.evaluation", "fedspear.prompt_budget")),
    ("algorithms", ("fedspear.algorithms",)),
    ("users' extensions", ("fedspear.extensions",)),
    ("feedback and generation", ("fedspear.feedback", "fedspear.feedback_noise", "fedspear.rollout_queue",
                                 "fedspear.generation")),
    ("models and tasks", ("fedspear.models", "fedspear.tasks", "fedspear.threads", "fedspear.model_fetch")),
    ("config", ("fedspear.config", "fedspear.config_sections", "fedspear.config_compat", "fedspear.presets",
                "fedspear.preflight",
                "fedspear.dotted", "fedspear.log", "fedspear.sampling")),
]
# Imports against the layering that are known and kept for now, each with the reason (report them when adding).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the longest prefix that names ``module`` (None: in no layer)."""
    best: tuple[int, int] | None = None
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (index, len(name))
    return None if best is None else best[0]


def upward_imports(graph, allowed: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every direct import (also inside functions) from a lower layer to a higher one, not in ``allowed``."""
    found = []
    for importer in sorted(m for m in graph.modules if m.startswith("fedspear")):
        low = layer_of(importer)
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            high = layer_of(imported) if imported.startswith("fedspear") else None
            if low is not None and high is not None and high < low and (importer, imported) not in allowed:
                found.append(f"{importer} ({LAYERS[low][0]}) -> {imported} ({LAYERS[high][0]})")
    return found


def test_every_module_has_a_layer(graph):
    assert [m for m in sorted(graph.modules) if m.startswith("fedspear") and layer_of(m) is None] == []


def test_imports_follow_the_layers(graph):
    assert upward_imports(graph, ALLOWED_UPWARD) == []
    assert all(graph.direct_import_exists(importer=a, imported=b) for a, b in ALLOWED_UPWARD), \
        "an allowed arrow is gone: remove it from ALLOWED_UPWARD"


@pytest.mark.parametrize(("importer", "imported"), [
    ("fedspear.tasks", "fedspear.extensions"),  # a task package reaching up for users' classes
    ("fedspear.flower.server_app", "fedspear.cli"),  # a front end importing the command line for logging
    ("fedspear.evaluation", "fedspear.federation.aggregation"),
    ("fedspear.config", "fedspear.tasks.prompts"),
])
def test_the_layer_check_finds_an_upward_import(graph, importer, imported):
    g = grimp.ImportGraph()
    for m in (importer, imported):
        g.add_module(m)
    g.add_import(importer=importer, imported=imported)
    assert len(upward_imports(g)) == 1
    assert not graph.direct_import_exists(importer=importer, imported=imported)  # and the package has none
