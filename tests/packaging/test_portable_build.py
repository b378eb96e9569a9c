"""The portable llama.cpp build flags (runtime/portable_build.py), for made-up CPUs of every platform.

Why it matters: a build made with GGML_NATIVE=ON on a VM that advertises AMX died with SIGILL at the first
matrix multiply. These tests pin the decision: native is always off, AMX is never on, and each instruction
set is on exactly when the CPU has it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runtime.portable_build import X86_NEVER, cmake_args_for, cpu_flags_linux, this_machine_args

from .cpus import HASWELL, NEHALEM, SAPPHIRE_RAPIDS, SANDY_BRIDGE

REPO = Path(__file__).resolve().parents[2]


def options(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        assert a.startswith("-D") and "=" in a, a
        k, v = a[2:].split("=", 1)
        assert k not in out, f"{k} given twice"
        out[k] = v
    return out


def test_amx_cpu_gets_avx512_but_never_amx():
    o = options(cmake_args_for("Linux", "x86_64", SAPPHIRE_RAPIDS))
    assert o["GGML_NATIVE"] == "OFF"
    for amx in X86_NEVER:
        assert o[amx] == "OFF"
    for on in ("GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
               "GGML_AVX512_VBMI", "GGML_AVX_VNNI"):
        assert o[on] == "ON", on


def test_haswell_gets_avx2_and_no_avx512():
    o = options(cmake_args_for("Linux", "x86_64", HASWELL))
    assert (o["GGML_AVX"], o["GGML_AVX2"], o["GGML_FMA"], o["GGML_F16C"], o["GGML_BMI2"]) == ("ON",) * 5
    assert o["GGML_AVX512"] == o["GGML_AVX512_VNNI"] == o["GGML_AVX_VNNI"] == "OFF"


def test_avx_without_avx2_and_sse_only_cpus():
    o = options(cmake_args_for("Linux", "x86_64", SANDY_BRIDGE))
    assert (o["GGML_AVX"], o["GGML_AVX2"], o["GGML_FMA"]) == ("ON", "OFF", "OFF")
    o = options(cmake_args_for("Linux", "x86_64", NEHALEM))
    assert o["GGML_SSE42"] == "ON"
    assert all(v == "OFF" for k, v in o.items() if k != "GGML_SSE42")


def test_avx512_needs_every_subset_it_compiles_with():
    # GGML_AVX512 compiles with -mavx512{f,cd,vl,dq,bw}: a CPU with only some of them (e.g. Knights
    # Landing: F and CD, no VL/DQ/BW) must not get it.
    o = options(cmake_args_for("Linux", "x86_64", HASWELL | {"avx512f", "avx512cd"}))
    assert o["GGML_AVX512"] == "OFF"


def test_windows_without_cpuinfo_uses_the_avx2_baseline():
    o = options(cmake_args_for("Windows", "AMD64", ()))
    assert o["GGML_NATIVE"] == "OFF" and o["GGML_AVX2"] == "ON" and o["GGML_AVX512"] == "OFF"


def test_arm64_gets_a_fixed_baseline_and_no_x86_options():
    mac = options(cmake_args_for("Darwin", "arm64", ()))
    assert mac == {"GGML_NATIVE": "OFF", "GGML_CPU_ARM_ARCH": "armv8.2-a+dotprod+fp16"}
    linux = options(cmake_args_for("Linux", "aarch64", {"fp", "asimd", "asimddp", "sve"}))
    assert linux == {"GGML_NATIVE": "OFF", "GGML_CPU_ARM_ARCH": "armv8-a"}


def test_cpuinfo_parsing_x86_and_arm():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse4_2 avx2 amx_tile\n\nprocessor\t: 1\n"
    assert cpu_flags_linux(x86) == {"fpu", "sse4_2", "avx2", "amx_tile"}
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"
    assert cpu_flags_linux(arm) == {"fp", "asimd", "evtstrm", "aes"}
    assert cpu_flags_linux("") == frozenset()


def test_this_machine_is_never_native_and_never_amx():
    o = options(this_machine_args())
    assert o["GGML_NATIVE"] == "OFF"
    assert all(o.get(amx, "OFF") == "OFF" for amx in X86_NEVER)


def test_the_script_prints_one_line_that_bootstrap_can_use():
    # bootstrap.sh runs it with the system Python before anything is installed: stdlib only.
    out = subprocess.run([sys.executable, "-I", str(REPO / "runtime" / "portable_build.py")], capture_output=True,
                         text=True, check=True).stdout
    assert out.count("\n") == 1
    assert out.split() == this_machine_args()
