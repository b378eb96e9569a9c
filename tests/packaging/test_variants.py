"""The CPU variants a bundle ships and the order a worker tries them (runtime/engine/variants.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtime.engine import variants
from runtime.engine.variants import (INSTALLED, LibraryVariant, candidates, supported_variants, variant_cmake_args,
                                     variant_names, variants_root)
from runtime.portable_build import X86_NEVER, cmake_args_for

from .cpus import HASWELL, NEHALEM, SANDY_BRIDGE, SAPPHIRE_RAPIDS, SKYLAKE_X
from .test_portable_build import options

X86 = ["avx512", "avx2", "x86-64-v2"]


@pytest.mark.parametrize("cpu, expected", [
    (SAPPHIRE_RAPIDS, X86),  # AMX advertised: no variant uses it, the best is AVX-512
    (SKYLAKE_X, X86),
    (HASWELL, ["avx2", "x86-64-v2"]),
    (SANDY_BRIDGE, ["x86-64-v2"]),  # AVX but no AVX2
    (NEHALEM, ["x86-64-v2"]),
    (frozenset(), X86),  # flags unknown (not Linux): best first, the probe catches a bad pick
])
def test_best_supported_variant_first(cpu, expected):
    assert supported_variants(list(reversed(X86)), cpu, "x86_64") == expected


def test_extra_folders_are_tried_first_and_missing_ones_skipped():
    assert supported_variants(["x86-64-v2", "cuda"], HASWELL, "AMD64") == ["cuda", "x86-64-v2"]
    assert supported_variants(["arm64"], frozenset(), "arm64") == ["arm64"]


def test_each_variant_is_built_for_exactly_what_it_requires():
    """A CPU that passes a variant's check can run every instruction that variant was compiled with."""
    for name, needs in variants.X86_VARIANTS:
        o = options(variant_cmake_args(name, "Linux"))
        assert o["GGML_NATIVE"] == "OFF"
        assert all(o[amx] == "OFF" for amx in X86_NEVER)
        enabled = {k for k, v in o.items() if v == "ON"}
        # the same options as a CPU that has just the required flags
        assert o == options(cmake_args_for("Linux", "x86_64", needs))
        if name == "x86-64-v2":
            assert enabled == {"GGML_SSE42"}
        if name == "avx2":
            assert {"GGML_AVX2", "GGML_FMA", "GGML_F16C"} <= enabled and "GGML_AVX512" not in enabled
        if name == "avx512":
            assert "GGML_AVX512" in enabled and "GGML_AVX512_VNNI" not in enabled
    assert options(variant_cmake_args("arm64", "Darwin"))["GGML_CPU_ARM_ARCH"] == "armv8.2-a+dotprod+fp16"
    with pytest.raises(ValueError):
        variant_cmake_args("avx9000", "Linux")


def test_variant_sets_are_nested_so_each_falls_back_to_the_next():
    sets = [needs for _, needs in variants.X86_VARIANTS]
    assert all(lower < higher for higher, lower in zip(sets, sets[1:]))
    assert variant_names("x86_64") == X86 and variant_names("aarch64") == ["arm64"]
    with pytest.raises(ValueError):
        variant_names("riscv64")


def test_candidates_from_a_bundle_folder(tmp_path):
    for name in X86:
        (tmp_path / name).mkdir()
    (tmp_path / "README.txt").write_text("not a variant")
    got = candidates(tmp_path, cpu_flags=HASWELL, machine="x86_64")
    assert got == [LibraryVariant("avx2", tmp_path / "avx2"), LibraryVariant("x86-64-v2", tmp_path / "x86-64-v2")]
    assert got[0].env() == {"LLAMA_CPP_LIB_PATH": str(tmp_path / "avx2")}


def test_source_install_and_empty_bundles_use_the_installed_libraries(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOSEDMESH_LLAMA_VARIANTS", raising=False)
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    assert variants_root() is None
    assert candidates() == [LibraryVariant(INSTALLED, None)]
    assert LibraryVariant(INSTALLED, None).env() == {}
    assert candidates(tmp_path, cpu_flags=HASWELL, machine="x86_64") == [LibraryVariant(INSTALLED, None)]
    (tmp_path / "avx512").mkdir()  # only a variant this CPU cannot run
    assert candidates(tmp_path, cpu_flags=HASWELL, machine="x86_64") == [LibraryVariant(INSTALLED, None)]


def test_variants_root_in_a_bundle_and_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOSEDMESH_LLAMA_VARIANTS", raising=False)
    bundle = tmp_path / "bundle"
    (bundle / "llama_variants").mkdir(parents=True)
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    assert variants_root() == bundle / "llama_variants"
    monkeypatch.setenv("CLOSEDMESH_LLAMA_VARIANTS", str(tmp_path / "elsewhere"))
    assert variants_root() == Path(tmp_path / "elsewhere")
