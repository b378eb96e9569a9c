"""The decisions of scripts/build_llama_variants.py (the compile itself takes ten minutes a variant and
runs only in package.sh --variants): what each build is configured with, and the check that its
libraries load their own ggml ($ORIGIN)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("build_llama_variants", REPO / "scripts" / "build_llama_variants.py")
bv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bv)


def test_each_variant_builds_only_the_libraries_without_native_or_amx():
    for name in ("avx512", "avx2", "x86-64-v2"):
        args = bv.configure_args(name, "Linux")
        for off in ("-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF"):
            assert off in args, (name, off)
    assert "-DGGML_AVX2=OFF" in bv.configure_args("x86-64-v2", "Linux")
    assert "-DGGML_AVX512=ON" in bv.configure_args("avx512", "Linux")
    assert bv.TARGETS == ["llama", "mtmd"]


def test_the_pinned_version_is_the_projects():
    assert bv.pinned_version() == "0.3.36"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF")
def test_runpath_check_on_real_libraries():
    lib = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib" / "libllama.so"
    assert bv.runpath_is_origin(lib)  # the wheel's build: loads the ggml next to it
    assert not bv.runpath_is_origin(Path(sys.executable).resolve())  # no $ORIGIN runpath
