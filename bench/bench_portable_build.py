"""Decode speed of the portable llama.cpp build against a native build with AMX disabled (issue 11).

The portable build is the one scripts/bootstrap.sh installs: GGML_NATIVE=OFF with this CPU's instruction
sets named and AMX off (runtime/portable_build.py). The native build is made here from the same
llama.cpp (vendored in the pinned llama-cpp-python sdist), through the same CMakeLists, with
``-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16`` and no ggml instruction option: only the
llama library and its ggml, one compile job (``-j1``: the machine is shared), in build/bench-native.

Each round loads the default model in a fresh process whose LLAMA_CPP_LIB_PATH names one build, and
decodes --tokens tokens greedily on 2 threads (the prompt's evaluation not counted). After one uncounted
warm-up round each, rounds alternate between the builds; the medians are compared. Target: portable >=
0.95x native.

    .venv/bin/python bench/bench_portable_build.py [--rounds 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from installers.pyinstaller.llama_libs import llama_libraries  # noqa: E402
from runtime.models.embedded import ensure_default_model  # noqa: E402
from runtime.portable_build import X86_NEVER, X86_OPTIONS  # noqa: E402

NO_AMX = "-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

ROUND = r"""
import json, sys, time
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
tokens = llm.tokenize(b"Write a long story about a lighthouse keeper and the sea.")
n, t0 = 0, None
for _ in llm.generate(tokens, temp=0.0, top_k=1):
    n += 1
    if n == 1:
        t0 = time.perf_counter()  # from the first generated token: decode only
    if n > int(sys.argv[2]):
        break
print(json.dumps({"tok_s": (n - 1) / (time.perf_counter() - t0)}))
"""


def build_native(out: Path) -> Path:
    """The native-without-AMX libraries in out/lib (built once)."""
    lib = out / "lib"
    if llama_libraries(lib):
        return lib
    spec = importlib.util.spec_from_file_location("bv", ROOT / "scripts" / "build_llama_variants.py")
    bv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bv)
    src = bv.sdist_source(bv.pinned_version(), ROOT / "build" / "llama-sdist")
    options = [f"-D{o}=OFF" for _, o in X86_OPTIONS] + [f"-D{o}=OFF" for o in X86_NEVER]
    args = [*bv.ONLY_LIBRARIES, "-DGGML_NATIVE=OFF", *options, f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    build = out / "build"
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *args], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j", "1", "--target", "llama"], check=True,
                   stdout=subprocess.DEVNULL)
    lib.mkdir(parents=True, exist_ok=True)
    for folder in sorted({p.parent for p in build.rglob("*.so*")}):
        for f in llama_libraries(folder):
            shutil.copy2(f.resolve(), lib / f.name)
    return lib


def one_round(lib: Path, model: Path, tokens: int) -> float:
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(lib))
    r = subprocess.run([sys.executable, "-c", ROUND, str(model), str(tokens)], env=env, capture_output=True, text=True,
                       timeout=600, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["tok_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise SystemExit("this comparison is about x86 instruction sets")
    portable = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    native = build_native(ROOT / "build" / "bench-native")
    model = ensure_default_model(ROOT / ".cache" / "models")
    flags = (ROOT / ".venv" / ".closedmesh-llama-cmake-args")
    print(f"portable: {portable} ({flags.read_text().strip() if flags.exists() else 'flags unknown'})")
    print(f"native:   {native} ({NO_AMX})")
    for lib in (portable, native):  # warm-up, not counted: the first load of each build reads it from disk
        one_round(lib, model, 16)
    results: dict[str, list[float]] = {"portable": [], "native": []}
    for i in range(a.rounds):
        for name, lib in (("portable", portable), ("native", native)) if i % 2 == 0 else \
                (("native", native), ("portable", portable)):
            results[name].append(one_round(lib, model, a.tokens))
            print(f"round {i + 1} {name:8s} {results[name][-1]:6.1f} tok/s", flush=True)
    p, n = statistics.median(results["portable"]), statistics.median(results["native"])
    print(f"median decode: portable {p:.1f} tok/s, native without AMX {n:.1f} tok/s, ratio {p / n:.3f} "
          f"({'meets' if p / n >= 0.95 else 'misses'} the 0.95 target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
