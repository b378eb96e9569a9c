"""llama-cpp-python's JSON-schema → GBNF converter, without loading llama.cpp.

``llama_cpp.llama_grammar`` is pure Python (stdlib imports only), but importing it as a submodule runs
``llama_cpp/__init__``, which loads the llama.cpp shared libraries into the importing process. The node's
own process must never load them (they run in the engine workers; see engine.py), so the module is loaded
from its file here, as a standalone module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load():
    name = "closedmesh_llama_grammar"
    if name in sys.modules:
        return sys.modules[name]
    pkg = importlib.util.find_spec("llama_cpp")  # finds the package without importing it
    locations = list(pkg.submodule_search_locations or []) if pkg else []
    if not locations:
        raise ImportError("llama-cpp-python is not installed")
    spec = importlib.util.spec_from_file_location(name, Path(locations[0]) / "llama_grammar.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_grammar = _load()
JSON_GBNF: str = _grammar.JSON_GBNF
json_schema_to_gbnf = _grammar.json_schema_to_gbnf
