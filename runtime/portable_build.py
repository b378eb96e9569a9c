"""CMake flags for a portable llama.cpp build (stdlib only: bootstrap.sh runs it before any install).

Why this exists: llama.cpp's source build defaults to ``GGML_NATIVE=ON``, i.e. ``-march=native``, which
compiles for whatever the build machine's compiler believes the CPU has. On a VM whose /proc/cpuinfo lists
``amx_tile``/``amx_int8`` but whose hypervisor traps AMX, that build dies with SIGILL in
``ggml_backend_amx_mul_mat`` at the first matrix multiply — no error, no log line. So every build we make
turns ``GGML_NATIVE`` off and names the instruction sets explicitly:

- the x86 sets the running CPU reports (SSE4.2, AVX, AVX2, FMA, F16C, BMI2, AVX-VNNI, AVX-512 F/BW/VL/DQ
  with VNNI, BF16 and VBMI), which is what ``-march=native`` would have used for the hot loops;
- never AMX: it is the one set seen advertised but trapped, and the small models this node serves gain
  little from it;
- on arm64 a fixed baseline every CPU of the platform has (Apple silicon: ARMv8.2-A with dot product and
  FP16; other arm64: plain ARMv8-A).

Flags given by the user in ``CMAKE_ARGS`` are appended after ours, so a user's ``-D`` wins.

    python3 runtime/portable_build.py            # prints the flags for this machine, one line
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from pathlib import Path

# (cpuinfo flags that must all be present, the ggml CMake option they enable). Order matters only for
# reading; each option is decided on its own.
X86_OPTIONS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"sse4_2"}), "GGML_SSE42"),
    (frozenset({"avx"}), "GGML_AVX"),
    (frozenset({"avx2"}), "GGML_AVX2"),
    (frozenset({"fma"}), "GGML_FMA"),
    (frozenset({"f16c"}), "GGML_F16C"),
    (frozenset({"bmi2"}), "GGML_BMI2"),
    (frozenset({"avx_vnni"}), "GGML_AVX_VNNI"),
    # GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
    (frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}), "GGML_AVX512"),
    (frozenset({"avx512f", "avx512_vnni"}), "GGML_AVX512_VNNI"),
    (frozenset({"avx512f", "avx512_bf16"}), "GGML_AVX512_BF16"),
    (frozenset({"avx512f", "avx512vbmi"}), "GGML_AVX512_VBMI"),
)
# Always off, whatever the CPU says (see the module docstring).
X86_NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")

APPLE_ARM_ARCH = "armv8.2-a+dotprod+fp16"
GENERIC_ARM_ARCH = "armv8-a"


def cpu_flags_linux(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text (``flags`` on x86, ``Features`` on arm)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cmake_args_for(system: str, machine: str, flags: Iterable[str]) -> list[str]:
    """The portable CMake arguments for a CPU: pure, so tests cover every platform from one machine."""
    flags = frozenset(flags)
    machine = machine.lower()
    args = ["-DGGML_NATIVE=OFF"]
    if machine in ("x86_64", "amd64", "i686", "i386", "x86"):
        if system == "Windows" and not flags:
            # No cpuinfo on Windows: AVX2 with FMA/F16C is the baseline of every x86-64 CPU sold since 2015.
            flags = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
        for needed, option in X86_OPTIONS:
            args.append(f"-D{option}={'ON' if needed <= flags else 'OFF'}")
        args.extend(f"-D{option}=OFF" for option in X86_NEVER)
    elif machine in ("arm64", "aarch64"):
        arch = APPLE_ARM_ARCH if system == "Darwin" else GENERIC_ARM_ARCH
        args.append(f"-DGGML_CPU_ARM_ARCH={arch}")
    return args


def this_machine_args() -> list[str]:
    system, machine = platform.system(), platform.machine()
    flags: frozenset[str] = frozenset()
    if system == "Linux":
        try:
            flags = cpu_flags_linux(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            pass
    elif system == "Darwin" and machine.lower() in ("x86_64", "amd64"):
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        # sysctl spells them AVX2, AVX512F, SSE4.2, FMA, F16C, BMI2 ...; map to cpuinfo's spelling.
        flags = frozenset(
            f.lower().replace("sse4.2", "sse4_2").replace("avx512vnni", "avx512_vnni") for f in out.split()
        )
    return cmake_args_for(system, machine, flags)


if __name__ == "__main__":
    sys.stdout.write(" ".join(this_machine_args()) + "\n")
