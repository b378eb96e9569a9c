"""Made-up /proc/cpuinfo feature sets of real CPU families, for the flag and variant tests."""

from __future__ import annotations

# Sapphire Rapids as a VM reports it: AVX-512 and AMX (the AMX that a hypervisor may trap).
SAPPHIRE_RAPIDS = frozenset(
    "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c bmi1 bmi2 avx_vnni avx512f avx512dq avx512cd "
    "avx512bw avx512vl avx512_vnni avx512_bf16 avx512vbmi amx_tile amx_int8 amx_bf16".split())
# Haswell: AVX2, FMA, F16C, BMI2, no AVX-512.
HASWELL = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c bmi1 bmi2".split())
# Nehalem / low-end Atom class: SSE4.2 only.
NEHALEM = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt".split())
# Sandy Bridge: AVX without AVX2 (must not get the AVX2 build).
SANDY_BRIDGE = NEHALEM | {"avx"}
# Skylake-X: AVX-512 F/CD/VL/DQ/BW, no VNNI, no AMX.
SKYLAKE_X = HASWELL | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
