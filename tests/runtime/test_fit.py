"""Fit and recommendation (runtime/models/fit.py), on made-up machines."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.hardware import Capability, GPUDevice, plan_offload
from runtime.models.catalog import CatalogEntry, load_catalog
from runtime.models.fit import (
    COMPUTE_ALLOWANCE_BYTES,
    FitResult,
    assess_fit,
    default_ram_reserve,
    recommend,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
PROPS = settings(max_examples=200, deadline=None, database=None)
CATALOG = load_catalog()


def entry(id: str) -> CatalogEntry:
    return next(e for e in CATALOG if e.id == id)


def machine(ram_gib: float, cores: int = 8, backend: str = "cpu",
            gpus: tuple[tuple[float, float], ...] = (), offload: bool | None = None) -> Capability:
    """A made-up machine: RAM in GiB, GPUs as (total, free) GiB."""
    return Capability(
        backend=backend,
        gpu_offload_supported=backend != "cpu" if offload is None else offload,
        devices=tuple(GPUDevice(f"GPU{i}", int(t * GiB), int(f * GiB)) for i, (t, f) in enumerate(gpus)),
        ram_total_bytes=int(ram_gib * GiB),
        ram_free_bytes=int(ram_gib * GiB * 0.7),
        physical_cores=cores,
        logical_cores=cores * 2,
        system="Darwin" if backend == "metal" else "Linux",
        machine="arm64" if backend == "metal" else "x86_64",
    )


def needed(e: CatalogEntry, ctx: int = 4096, slots: int = 1) -> int:
    return e.estimated_size_bytes() + e.kv_bytes_per_token() * ctx * slots + COMPUTE_ALLOWANCE_BYTES


CPU_2_CORES_24G = machine(24, cores=2)
H100 = machine(256, cores=32, backend="cuda", gpus=((80, 79),))
GPU_8G = machine(32, cores=8, backend="cuda", gpus=((8, 7.5),))
MAC_24G = machine(24, cores=8, backend="metal", gpus=((18, 16),))


# -- the reserve ---------------------------------------------------------------------------------


def test_ram_reserve_is_2_gib_or_20_percent():
    assert default_ram_reserve(machine(4)) == 2 * GiB
    assert default_ram_reserve(machine(10)) == 2 * GiB
    assert default_ram_reserve(machine(64)) == int(64 * GiB * 0.2)


# -- fit kinds -----------------------------------------------------------------------------------


def test_big_gpu_runs_the_largest_model_fully():
    e = entry("Qwen3-32B-Q4_K_M")
    f = assess_fit(e, H100)
    assert f == FitResult("gpu", 64, 64, needed(e), 79 * GiB, "Runs fully on your GPU")


def test_small_gpu_runs_a_14b_model_partly():
    e = entry("Qwen3-14B-Q4_K_M")
    f = assess_fit(e, GPU_8G)
    plan = plan_offload("cuda", 40, e.size_bytes, e.kv_bytes_per_token() * 4096, int(7.5 * GiB),
                        reserve_bytes=COMPUTE_ALLOWANCE_BYTES)
    assert f.kind == "partial"
    assert 0 < f.gpu_layers == plan.gpu_layers < 40 and f.total_layers == 40
    assert f.label == f"Runs partly on the GPU ({plan.gpu_layers} of 40 layers)"
    assert f.available_bytes == int(7.5 * GiB) + 32 * GiB - default_ram_reserve(GPU_8G)
    assert f.needed_bytes == needed(e) <= f.available_bytes


def test_small_gpu_runs_an_8b_model_fully():
    assert assess_fit(entry("Qwen3-8B-Q4_K_M"), GPU_8G).kind == "gpu"


def test_cpu_only_machine():
    e = entry("Qwen3-8B-Q4_K_M")
    f = assess_fit(e, CPU_2_CORES_24G)
    usable = 24 * GiB - int(24 * GiB * 0.2)
    assert f == FitResult("cpu", 0, 36, needed(e), usable, "Runs on the CPU")


def test_too_large_for_a_cpu_only_machine():
    e = entry("Qwen3-32B-Q4_K_M")
    f = assess_fit(e, CPU_2_CORES_24G)
    assert f.kind == "too_large" and f.gpu_layers == 0
    assert f.needed_bytes > f.available_bytes
    assert f.label == f"Too large for this machine (needs {needed(e) / GiB:.1f} GB, 19.2 GB available)"
    assert re.fullmatch(r"Too large for this machine \(needs \d+\.\d GB, \d+\.\d GB available\)", f.label)


def test_tiny_machine():
    tiny = machine(2, cores=1)  # the 2 GiB reserve leaves nothing
    assert all(assess_fit(e, tiny).kind == "too_large" for e in CATALOG)
    small = machine(4, cores=2)  # 2 GiB usable
    assert assess_fit(entry("SmolLM2-135M-Instruct-Q4_1"), small).kind == "cpu"
    assert assess_fit(entry("Llama-3.1-8B-Instruct-Q4_K_M"), small).kind == "too_large"


def test_a_build_without_gpu_offload_runs_on_the_cpu():
    cap = machine(32, backend="cuda", gpus=((24, 23),), offload=False)
    assert assess_fit(entry("Qwen3-8B-Q4_K_M"), cap).kind == "cpu"


def test_gpu_too_small_for_one_layer_falls_back_to_the_cpu():
    cap = machine(32, backend="cuda", gpus=((1, 0.5),))  # all of it is the compute allowance
    f = assess_fit(entry("Qwen3-8B-Q4_K_M"), cap)
    assert (f.kind, f.gpu_layers, f.label) == ("cpu", 0, "Runs on the CPU")


def test_discrete_gpu_adds_its_memory_to_the_ram():
    # 24 GiB RAM (19.2 usable) + 16 GiB free VRAM: a 32B model is split across both.
    cap = machine(24, backend="cuda", gpus=((16, 16),))
    f = assess_fit(entry("Qwen3-32B-Q4_K_M"), cap)
    assert f.kind == "partial" and f.available_bytes == 16 * GiB + 24 * GiB - default_ram_reserve(cap)


def test_too_large_even_with_the_gpu():
    cap = machine(8, backend="cuda", gpus=((8, 7.5),))  # 6 GiB usable RAM + 7 GiB for layers
    f = assess_fit(entry("Qwen3-32B-Q4_K_M"), cap)
    assert f.kind == "too_large" and f.needed_bytes > f.available_bytes > 6 * GiB


def test_apple_unified_memory_is_counted_once():
    # The same numbers as test_discrete_gpu_adds_its_memory_to_the_ram, on Apple Silicon: the GPU's
    # 16 GiB are part of the 24 GiB of RAM, so the 32B model does not fit.
    e = entry("Qwen3-32B-Q4_K_M")
    f = assess_fit(e, MAC_24G)
    assert f.kind == "too_large"
    assert f.available_bytes == 24 * GiB - default_ram_reserve(MAC_24G)


def test_apple_runs_fully_on_the_gpu_when_it_fits_the_working_set():
    f = assess_fit(entry("Qwen3-14B-Q4_K_M"), MAC_24G)
    assert (f.kind, f.gpu_layers, f.label) == ("gpu", 40, "Runs fully on your GPU")
    assert f.needed_bytes <= f.available_bytes <= 16 * GiB


def test_apple_partial_offload_stays_within_the_ram():
    mac = machine(32, backend="metal", gpus=((24, 18),))
    f = assess_fit(entry("Qwen3-32B-Q4_K_M"), mac)
    assert f.kind == "partial" and 0 < f.gpu_layers < 64
    assert f.available_bytes == 32 * GiB - default_ram_reserve(mac)


def test_context_and_slots_grow_the_kv_cache():
    e = entry("Qwen3-8B-Q4_K_M")
    base = assess_fit(e, H100)
    more = assess_fit(e, H100, ctx=8192, slots=4)
    assert more.needed_bytes - base.needed_bytes == e.kv_bytes_per_token() * (8192 * 4 - 4096)


def test_long_context_can_push_a_model_off_the_gpu():
    e = entry("Qwen3-8B-Q4_K_M")
    assert assess_fit(e, GPU_8G, ctx=4096).kind == "gpu"
    assert assess_fit(e, GPU_8G, ctx=32768).kind == "partial"


def test_explicit_ram_reserve():
    e = entry("Qwen3-14B-Q4_K_M")
    cap = machine(16, cores=8)
    assert assess_fit(e, cap).kind == "cpu"  # 16 - 3.2 GiB usable
    f = assess_fit(e, cap, ram_reserve_bytes=8 * GiB)
    assert f.kind == "too_large" and f.available_bytes == 8 * GiB


def test_estimated_sizes_are_used_when_the_size_is_unknown():
    e = entry("Qwen3-8B-Q8_0")
    assert e.size_is_estimate
    assert assess_fit(e, H100).needed_bytes == needed(e)


machines = st.builds(
    machine,
    ram_gib=st.floats(1, 512),
    cores=st.integers(1, 64),
    backend=st.sampled_from(["cpu", "cuda", "metal"]),
    gpus=st.lists(st.tuples(st.floats(0.5, 96), st.floats(0, 1)).map(lambda g: (g[0], g[0] * g[1])),
                  max_size=2).map(tuple),
)


@PROPS
@given(cap=machines, e=st.sampled_from(CATALOG), ctx=st.sampled_from([512, 4096, 32768]), slots=st.integers(1, 8))
def test_fit_invariants(cap, e, ctx, slots):
    f = assess_fit(e, cap, ctx, slots)
    assert f.total_layers == e.n_layers
    assert f.needed_bytes == needed(e, ctx, slots)
    if f.kind == "too_large":
        assert f.needed_bytes > f.available_bytes and f.gpu_layers == 0
    else:
        assert f.needed_bytes <= f.available_bytes
    assert (f.gpu_layers == e.n_layers) == (f.kind == "gpu")
    assert (f.gpu_layers == 0) == (f.kind in ("cpu", "too_large"))


@PROPS
@given(cap=machines, e=st.sampled_from(CATALOG), extra_gib=st.floats(0, 64))
def test_more_ram_never_makes_a_fitting_model_too_large(cap, e, extra_gib):
    bigger = Capability(**{**cap.__dict__, "ram_total_bytes": cap.ram_total_bytes + int(extra_gib * GiB)})
    if assess_fit(e, cap).kind != "too_large":
        assert assess_fit(e, bigger).kind != "too_large"


# -- recommend -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cap, expected", [
    (CPU_2_CORES_24G, "Qwen3-4B-Q4_K_M"),  # at most 5B parameters on 2 cores
    (machine(64, cores=8), "Qwen3-8B-Q4_K_M"),  # the 8B class at most on a CPU
    (machine(4, cores=1), "Llama-3.2-1B-Instruct-Q4_K_M"),  # 2 GiB usable, weights under 1 GiB
    (H100, "Qwen3-32B-Q4_K_M"),  # the largest that runs fully on the GPU
    (GPU_8G, "Qwen3-8B-Q4_K_M"),
    (machine(16, backend="metal", gpus=((12, 8),)), "Qwen3-8B-Q4_K_M"),  # 12B and 14B would be partial
    (machine(32, backend="metal", gpus=((24, 18),)), "Qwen3-14B-Q4_K_M"),  # 32B would be partial
    (machine(32, backend="metal", gpus=((24, 20),)), "Qwen3-32B-Q4_K_M"),
])
def test_recommend(cap, expected):
    assert recommend(CATALOG, cap).id == expected


def test_recommend_on_a_weak_gpu_falls_back_to_the_cpu_rule():
    cap = machine(32, cores=8, backend="cuda", gpus=((1, 0.6),))  # nothing fits the GPU fully
    r = recommend(CATALOG, cap)
    assert r.id == "Qwen3-8B-Q4_K_M" and assess_fit(r, cap).kind in ("partial", "cpu")


def test_recommend_nothing_on_a_tiny_machine():
    assert recommend(CATALOG, machine(2, cores=1)) is None


def test_recommend_follows_context_length():
    # 32k tokens of KV for an 8B model do not fit the 8 GB GPU fully; a smaller model does.
    r = recommend(CATALOG, GPU_8G, ctx=32768)
    assert r.parameters < 8_000_000_000 and assess_fit(r, GPU_8G, ctx=32768).kind == "gpu"


@PROPS
@given(cap=machines)
def test_recommend_picks_a_default_quant_that_fits(cap):
    r = recommend(CATALOG, cap)
    if r is not None:
        assert r.default
        assert assess_fit(r, cap).kind != "too_large"
        # No other default that runs fully on the GPU is larger.
        if assess_fit(r, cap).kind == "gpu":
            assert all(e.parameters <= r.parameters for e in CATALOG
                       if e.default and assess_fit(e, cap).kind == "gpu")
