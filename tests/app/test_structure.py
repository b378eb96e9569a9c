"""The app's import graph, read with ``ast`` from the source (imports at the top, inside functions and
under ``TYPE_CHECKING`` alike): no view imports the controller (directly or through another module),
and no two app modules import each other, however far round."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
VIEWS = ("app.tray", "app.window", "app.pages.")  # a module is a view when its name is, or starts with, one
CONTROLLER = "app.controller"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` (``pkg/__init__.py`` is ``pkg``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import f` the module mod
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import app.pages.models` names the module; `a.b.c` → closest
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    names = module_names(root, package)
    known = set(names)
    graph = {n: imports_of(n, p, known) for n, p in names.items()}
    # importing pkg.mod runs pkg/__init__.py first: not an import the module chose, so not an edge
    return {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reaches(graph: dict[str, set[str]], start: str, target: str) -> list[str] | None:
    """An import path from ``start`` to ``target``, or None."""
    seen, todo = {start}, [[start]]
    while todo:
        path = todo.pop()
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == target:
                return path + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                todo.append(path + [nxt])
    return None


def is_view(name: str) -> bool:
    return any(name == v or (v.endswith(".") and name.startswith(v)) for v in VIEWS)


def test_the_checks_find_a_circle_and_a_hidden_controller_import(tmp_path):
    """The walker sees imports inside functions and under TYPE_CHECKING, and finds a circle."""
    pkg = tmp_path / "app"
    (pkg / "pages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "pages" / "__init__.py").write_text("")
    (pkg / "controller.py").write_text("from .pages.home import Home\nfrom . import store\n")
    (pkg / "store.py").write_text("def f():\n    from .helpers import x\n")
    (pkg / "helpers.py").write_text("import app.store\n")
    (pkg / "pages" / "home.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..controller import AppController\n")
    graph = import_graph(pkg, "app")
    assert graph["app.controller"] == {"app.pages.home", "app.store"}
    assert graph["app.pages.home"] == {"app.controller"}
    assert sorted(cycles(graph)) == [["app.controller", "app.pages.home"], ["app.helpers", "app.store"]]
    assert reaches(graph, "app.pages.home", CONTROLLER) == ["app.pages.home", "app.controller"]


def test_no_view_imports_the_controller():
    graph = import_graph(APP, "app")
    views = [n for n in graph if is_view(n)]
    assert {"app.tray", "app.window", "app.pages.overview", "app.pages.peers", "app.pages.models",
            "app.pages.settings_page", "app.pages.welcome"} <= set(views)
    bad = {v: reaches(graph, v, CONTROLLER) for v in views}
    assert not {v: p for v, p in bad.items() if p}, "views that reach the controller"
    # nothing else below the controller reaches it either: only the entry point builds it
    importers = {n for n, ts in graph.items() if CONTROLLER in ts}
    assert importers == {"app.main"}


def test_app_imports_form_no_circle():
    graph = import_graph(APP, "app")
    assert CONTROLLER in graph and graph[CONTROLLER]  # the walker read the real tree
    assert cycles(graph) == []
