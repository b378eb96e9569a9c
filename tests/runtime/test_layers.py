"""The runtime's layers point down only (docs/architecture.md shows the same table).

Every module of runtime/ is read with ``ast``: every import counts — at the top, inside functions and
under ``TYPE_CHECKING`` alike (an import that dodges a circle at run time is still a dependency). The
test fails on an import that points up, one between two components of the same layer that the table
does not list, a module the table does not place, and any circle of modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..import_graph import cycles, import_graph

ROOT = Path(__file__).resolve().parents[2] / "runtime"

# Layers, top first. A module belongs to the first component whose prefix matches its dotted name
# (a package prefix covers the package's modules).
LAYERS: list[tuple[str, dict[str, tuple[str, ...]]]] = [
    (
        "entry",
        {"cli": ("runtime.cli",), "server": ("runtime.server",), "entry_cli": ("runtime.entry.cli",)},
    ),
    ("api", {"api": ("runtime.api",), "entry_gate": ("runtime.entry.gate", "runtime.entry.admin")}),
    ("node", {"node": ("runtime.node", "runtime.answers")}),
    (
        "services",
        {
            "mesh": ("runtime.mesh",),
            "models": ("runtime.models",),
            "generation": ("runtime.generation",),
            "keys": (
                "runtime.entry.store",
                "runtime.entry.keys",
                "runtime.entry.buckets",
                "runtime.entry.clients",
                "runtime.entry.options",
            ),
        },
    ),
    ("requests", {"validation": ("runtime.validation", "runtime.responses"), "tools": ("runtime.tools",)}),
    ("engine", {"engine": ("runtime.engine",)}),
    (
        "platform",
        {
            "hardware": ("runtime.hardware",),
            "config": ("runtime.config",),
            "secrets": ("runtime.secrets",),
            "stats": ("runtime.stats",),
            "portable_build": ("runtime.portable_build",),
            "catalog": ("runtime.catalog",),
        },
    ),
    ("base", {"errors": ("runtime.errors",), "package": ("runtime",)}),
]

# Imports between two components of one layer, each for a reason.
SAME_LAYER = {
    ("cli", "server"): "the CLI's `serve` runs the HTTP server",
    ("mesh", "generation"): "the serving side runs peers' requests through the generation pipeline",
    ("generation", "models"): "generation finds (and loads) the engine of a model through the model manager",
    ("validation", "tools"): "request parsing reads the tool fields with the tools' own checks",
    ("cli", "entry_cli"): "the CLI registers the `entry` and `keys` commands",
    ("entry_cli", "server"): "`closedmesh entry` runs the HTTP server with the entry's gate",
    ("entry_gate", "api"): "the entry's gate and admin API render errors and check hosts as the API does",
    ("mesh", "keys"): "the hub creates the key and usage buckets and grants the entry role rights on them",
    ("catalog", "stats"): "the catalog reads the rolling windows' size and age",
}


def place(module: str) -> tuple[int, str, str] | None:
    """(layer index, layer name, component) of a module: the longest matching prefix wins."""
    best: tuple[int, tuple[int, str, str]] | None = None
    for i, (layer, components) in enumerate(LAYERS):
        for component, prefixes in components.items():
            for p in prefixes:
                if module == p or module.startswith(p + "."):
                    if best is None or len(p) > best[0]:
                        best = (len(p), (i, layer, component))
    return best[1] if best else None


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    return import_graph(root, "runtime")


def violations(g: dict[str, set[str]]) -> tuple[list[str], list[str], list[str]]:
    """(unplaced modules, upward imports, unlisted same-layer imports)."""
    unplaced = sorted(m for m in g if place(m) is None)
    upward, sideways = [], []
    for src, targets in sorted(g.items()):
        a = place(src)
        for dst in sorted(targets):
            b = place(dst)
            if a is None or b is None:
                continue
            if b[0] < a[0]:
                upward.append(f"{src} ({a[1]}) imports {dst} ({b[1]})")
            elif b[0] == a[0] and a[2] != b[2] and (a[2], b[2]) not in SAME_LAYER:
                sideways.append(f"{src} ({a[2]}) imports {dst} ({b[2]}), both {a[1]}")
    return unplaced, upward, sideways


@pytest.fixture(scope="module")
def runtime_graph() -> dict[str, set[str]]:
    return graph()


def test_every_module_has_a_layer(runtime_graph):
    assert violations(runtime_graph)[0] == []


def test_imports_point_down(runtime_graph):
    assert violations(runtime_graph)[1] == []


def test_same_layer_imports_are_listed(runtime_graph):
    assert violations(runtime_graph)[2] == []


def test_no_cycles(runtime_graph):
    assert cycles(runtime_graph) == []


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The checker itself: imports in functions and under TYPE_CHECKING count, and a circle is found."""
    pkg = tmp_path / "runtime"
    (pkg / "api").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "api" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .api import routes\n")
    (pkg / "api" / "routes.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..errors import f\n"
    )
    (pkg / "node.py").write_text("import runtime.api.routes\n")
    g = graph(pkg)
    assert g["runtime.errors"] == {"runtime.api.routes"}
    assert g["runtime.api.routes"] == {"runtime.errors"}
    assert cycles(g) == [["runtime.api.routes", "runtime.errors"]]
    unplaced, upward, _ = violations(g)
    assert upward == [
        "runtime.errors (base) imports runtime.api.routes (api)",
        "runtime.node (node) imports runtime.api.routes (api)",
    ]
    assert unplaced == []


def test_the_table_matches_the_docs():
    """docs/architecture.md shows this table: each layer with its components."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    for layer, components in LAYERS:
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"| {layer} |")), None)
        assert line is not None, f"docs/architecture.md lacks the row of layer '{layer}'"
        for prefixes in components.values():
            for p in prefixes:
                shown = p.replace("runtime.", "runtime/", 1).replace(".", "/") if p != "runtime" else "runtime/__init__"
                assert shown in line, f"layer '{layer}' in docs/architecture.md does not show {shown}"
