"""The app's import graph, read with ``ast`` from the source (imports at the top, inside functions and
under ``TYPE_CHECKING`` alike): no view imports the controller (directly or through another module),
and no two app modules import each other, however far round."""

from __future__ import annotations

from pathlib import Path

from ..import_graph import cycles, import_graph, reaches

APP = Path(__file__).resolve().parents[2] / "app"
VIEWS = ("app.tray", "app.window", "app.pages.")  # a module is a view when its name is, or starts with, one
CONTROLLER = "app.controller"


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
