"""Backend choice and the offload / slot plans (runtime/hardware.py), on made-up machines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.hardware import (
    Capability,
    GPUDevice,
    OffloadPlan,
    choose_backend,
    default_threads,
    plan_offload,
    plan_slots,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
RESERVE = 512 * MiB
PROPS = settings(max_examples=300, deadline=None, database=None)


# -- choose_backend ---------------------------------------------------------------------------------


@pytest.mark.parametrize("system, machine, offload, nvidia, expected", [
    ("Darwin", "arm64", True, False, "metal"),
    ("Darwin", "arm64", False, False, "cpu"),
    ("Darwin", "x86_64", True, False, "cpu"),
    ("Linux", "x86_64", True, True, "cuda"),
    ("Linux", "x86_64", True, False, "cpu"),
    ("Linux", "x86_64", False, True, "cpu"),
    ("Windows", "AMD64", True, True, "cuda"),
    ("Linux", "arm64", True, False, "cpu"),
])
def test_choose_backend(system, machine, offload, nvidia, expected):
    assert choose_backend(system, machine, offload, nvidia) == expected


# -- plan_offload -----------------------------------------------------------------------------------


def test_all_layers_when_weights_and_kv_fit():
    p = plan_offload("cuda", 32, weights_bytes=4 * GiB, kv_bytes=1 * GiB, vram_free_bytes=8 * GiB)
    assert (p.gpu_layers, p.total_layers) == (32, 32)
    assert p.full
    assert "fits" in p.reason


def test_exact_fit_including_reserve_is_full():
    p = plan_offload("cuda", 10, weights_bytes=900 * MiB, kv_bytes=100 * MiB, vram_free_bytes=1000 * MiB + RESERVE)
    assert p.gpu_layers == 10 and p.full


def test_reserve_is_kept_free():
    # Would fit without the reserve, does not with it.
    p = plan_offload("cuda", 10, weights_bytes=900 * MiB, kv_bytes=100 * MiB, vram_free_bytes=1000 * MiB + RESERVE - 1)
    assert p.gpu_layers == 9 and not p.full


def test_partial_layers():
    # need = 10 GiB over 40 layers = 256 MiB a layer; budget 4 GiB - 512 MiB = 3.5 GiB -> 14 layers.
    p = plan_offload("cuda", 40, weights_bytes=9 * GiB, kv_bytes=1 * GiB, vram_free_bytes=4 * GiB)
    assert p == OffloadPlan(14, 40, "14 of 40 layers fit in free GPU memory")
    assert not p.full


def test_custom_reserve():
    p = plan_offload("metal", 40, weights_bytes=9 * GiB, kv_bytes=1 * GiB, vram_free_bytes=4 * GiB, reserve_bytes=0)
    assert p.gpu_layers == 16


def test_no_layers_when_vram_is_below_reserve():
    p = plan_offload("cuda", 24, weights_bytes=2 * GiB, kv_bytes=0, vram_free_bytes=100 * MiB)
    assert p.gpu_layers == 0 and p.total_layers == 24 and not p.full


def test_none_on_cpu_even_with_plenty_of_vram():
    p = plan_offload("cpu", 24, weights_bytes=1 * GiB, kv_bytes=0, vram_free_bytes=80 * GiB)
    assert (p.gpu_layers, p.total_layers) == (0, 24)
    assert not p.full
    assert "CPU" in p.reason


@pytest.mark.parametrize("requested, expected", [(0, 0), (10, 10), (32, 32), (999, 32), (-1, 0), (-50, 0)])
def test_user_requested_layers_are_clamped(requested, expected):
    p = plan_offload("cuda", 32, weights_bytes=100 * GiB, kv_bytes=0, vram_free_bytes=1 * GiB, requested=requested)
    assert (p.gpu_layers, p.total_layers) == (expected, 32)
    assert p.reason == "set by the user"


def test_user_request_is_respected_on_cpu_backend_too():
    p = plan_offload("cpu", 32, weights_bytes=1, kv_bytes=0, vram_free_bytes=0, requested=5)
    assert p.gpu_layers == 5


@PROPS
@given(
    backend=st.sampled_from(["cpu", "cuda", "metal"]),
    n_layers=st.integers(1, 200),
    weights=st.integers(1, 200 * GiB),
    kv=st.integers(0, 50 * GiB),
    vram=st.integers(0, 200 * GiB),
)
def test_offload_plan_properties(backend, n_layers, weights, kv, vram):
    p = plan_offload(backend, n_layers, weights, kv, vram)
    assert p.total_layers == n_layers
    assert 0 <= p.gpu_layers <= n_layers
    if backend == "cpu":
        assert p.gpu_layers == 0
        return
    need, budget = weights + kv, vram - RESERVE
    if need <= budget:
        assert p.full
    else:
        # What is offloaded fits in the budget (whole layers at the average size a layer).
        assert p.gpu_layers * need / n_layers <= max(0, budget) + 1e-6 * need
        assert p.gpu_layers < n_layers
        # And one more layer would not.
        assert (p.gpu_layers + 1) * need / n_layers > max(0, budget) - 1e-6 * need


@PROPS
@given(n_layers=st.integers(1, 100), weights=st.integers(1, 50 * GiB), v1=st.integers(0, 60 * GiB),
       v2=st.integers(0, 60 * GiB))
def test_more_vram_never_offloads_fewer_layers(n_layers, weights, v1, v2):
    lo, hi = sorted((v1, v2))
    assert (plan_offload("cuda", n_layers, weights, 0, lo).gpu_layers
            <= plan_offload("cuda", n_layers, weights, 0, hi).gpu_layers)


# -- plan_slots -------------------------------------------------------------------------------------


def test_user_values_are_respected():
    p = plan_slots("cpu", n_ctx_train=8192, kv_bytes_per_token=1000, vram_free_bytes=0, requested_slots=3,
                   requested_ctx=6000)
    assert (p.slots, p.ctx_per_slot, p.kv_bytes, p.reason) == (3, 6000, 3 * 6000 * 1000, "set by the user")


def test_user_slots_are_not_capped_by_max_slots():
    p = plan_slots("cuda", 4096, 1000, 0, requested_slots=20)
    assert p.slots == 20


def test_user_ctx_above_training_context_is_kept():
    assert plan_slots("cpu", 2048, 100, 0, requested_ctx=16384).ctx_per_slot == 16384


def test_tiny_user_ctx_is_raised_to_256():
    assert plan_slots("cpu", 2048, 100, 0, requested_ctx=16).ctx_per_slot == 256


@pytest.mark.parametrize("n_ctx_train, expected", [(32768, 4096), (8192, 4096), (4096, 4096), (2048, 2048),
                                                   (1000, 1000), (100, 256), (0, 4096)])
def test_default_ctx_on_gpu_is_training_context_capped_at_4096(n_ctx_train, expected):
    assert plan_slots("cuda", n_ctx_train, 100, 0).ctx_per_slot == expected


@pytest.mark.parametrize("n_ctx_train, expected", [(32768, 2048), (4096, 2048), (2048, 2048), (1000, 1000),
                                                   (0, 2048)])
def test_default_ctx_on_cpu_is_capped_at_2048(n_ctx_train, expected):
    assert plan_slots("cpu", n_ctx_train, 100, 0).ctx_per_slot == expected


def test_slots_from_cpu_kv_budget():
    # 192 MiB budget; 2048 tokens * 24 KiB = 48 MiB a slot -> 4 slots.
    p = plan_slots("cpu", 8192, 24 * 1024, vram_free_bytes=100 * GiB)
    assert (p.slots, p.ctx_per_slot) == (4, 2048)
    assert p.kv_bytes == 4 * 2048 * 24 * 1024
    assert "192 MiB" in p.reason and "cpu" in p.reason


def test_slots_from_gpu_kv_budget_quarter_of_free_vram():
    # 4 GiB free -> 1 GiB budget; 4096 * 64 KiB = 256 MiB a slot -> 4 slots.
    p = plan_slots("cuda", 4096, 64 * 1024, vram_free_bytes=4 * GiB)
    assert p.slots == 4
    assert "1024 MiB" in p.reason


def test_gpu_budget_never_below_cpu_budget():
    # Little free VRAM: the 192 MiB CPU budget still applies -> 192 / 48 = 4 slots.
    p = plan_slots("cuda", 4096, 12 * 1024, vram_free_bytes=100 * MiB)
    assert p.slots == 4


def test_at_least_one_slot_when_one_slot_exceeds_budget():
    p = plan_slots("cpu", 4096, 1024 * 1024, vram_free_bytes=0)  # 2 GiB a slot
    assert p.slots == 1
    assert p.kv_bytes == 2048 * 1024 * 1024


def test_at_most_max_slots():
    assert plan_slots("cuda", 4096, 1, vram_free_bytes=80 * GiB).slots == 8
    assert plan_slots("cuda", 4096, 1, vram_free_bytes=80 * GiB, max_slots=3).slots == 3


def test_zero_kv_per_token_gives_max_slots():
    p = plan_slots("cpu", 4096, 0, 0)
    assert p.slots == 8 and p.kv_bytes == 0


@PROPS
@given(backend=st.sampled_from(["cpu", "cuda", "metal"]), n_ctx_train=st.integers(0, 200_000),
       kv_per_token=st.integers(0, 4 * MiB), vram=st.integers(0, 200 * GiB))
def test_slot_plan_properties(backend, n_ctx_train, kv_per_token, vram):
    p = plan_slots(backend, n_ctx_train, kv_per_token, vram)
    assert 1 <= p.slots <= 8
    assert 256 <= p.ctx_per_slot <= 4096
    assert p.kv_bytes == p.slots * p.ctx_per_slot * kv_per_token
    budget = 192 * MiB if backend == "cpu" else max(192 * MiB, vram // 4)
    per_slot = kv_per_token * p.ctx_per_slot
    if per_slot:
        assert p.slots == max(1, min(8, budget // per_slot))
        if p.slots > 1:
            assert p.kv_bytes <= budget


# -- small helpers ----------------------------------------------------------------------------------


def _cap(**kw) -> Capability:
    base = dict(backend="cuda", gpu_offload_supported=True,
                devices=(GPUDevice("a", 8 * GiB, 6 * GiB), GPUDevice("b", 16 * GiB, 10 * GiB)),
                ram_total_bytes=32 * GiB, ram_free_bytes=20 * GiB, physical_cores=6, logical_cores=12,
                system="Linux", machine="x86_64")
    base.update(kw)
    return Capability(**base)


def test_capability_vram_sums_devices_and_json():
    c = _cap()
    assert c.vram_total_bytes == 24 * GiB
    assert c.vram_free_bytes == 16 * GiB
    j = c.to_json()
    assert j["devices"] == [{"name": "a", "total_bytes": 8 * GiB, "free_bytes": 6 * GiB},
                            {"name": "b", "total_bytes": 16 * GiB, "free_bytes": 10 * GiB}]
    assert j["vram_total_bytes"] == 24 * GiB and j["vram_free_bytes"] == 16 * GiB
    assert _cap(devices=()).vram_free_bytes == 0


def test_default_threads_is_physical_cores_at_least_one():
    assert default_threads(_cap(physical_cores=6)) == 6
    assert default_threads(_cap(physical_cores=0)) == 1
