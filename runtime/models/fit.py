"""Whether a catalog model fits a machine, and which model to recommend. Pure functions over plain
data (``runtime.hardware.Capability``), so they are tested with made-up machines.

Memory a model needs (``needed_bytes``): its weights, the KV cache for ``ctx`` tokens in each of
``slots`` parallel sequences (f16, ``CatalogEntry.kv_bytes_per_token``), and a compute allowance of
512 MiB for llama.cpp's activation and logit buffers (the reserve ``hardware.plan_offload`` keeps
free on the GPU, so the two agree on what "fits").

Memory a machine offers:

- RAM: the total less a reserve for the system and the user's other programs, by default the
  larger of 2 GiB and 20 % of the total. The total (not the momentary free figure) is used so the
  answer does not change each time a browser tab opens.
- GPU (CUDA): the free VRAM of all devices, as ``plan_offload`` sees it. A model runs fully on the
  GPU when it needs no more than that; else ``plan_offload`` puts as many whole layers on the GPU
  as fit (less the compute allowance) and the rest goes to RAM ("partial"); with no layer on the
  GPU it runs on the CPU. It is too large when the part left for RAM exceeds the usable RAM.
- Apple Silicon (Metal) has one pool of unified memory: the GPU's working set is part of RAM, so
  memory is counted once. A model runs fully on the GPU when it fits the working set and the usable
  RAM, partly when only some layers fit the working set; it is too large when it exceeds the usable
  RAM, however the layers are split.

Sizes shown to people are in GB of 1024³ bytes, the unit in which RAM is sold and reported.

Recommendation rule (``recommend``), over each family's default quantization only, never a model
that is too large:

1. On a GPU machine, the largest model (by parameter count) that runs fully on the GPU.
2. Otherwise (a CPU-only machine, or no model fits the GPU fully) the largest model that fits and
   that a CPU can run at a usable speed: its weights at most 25 % of the RAM and at most
   2.5 billion parameters per physical core, capped at 8.5 billion (the 8B class). CPU decoding
   speed falls with model size and rises with cores: a 2-core machine gets a ~4B model at most,
   4 cores or more an 8B model at most.
3. None when nothing qualifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runtime.hardware import Capability, plan_offload

from .catalog import CatalogEntry

GiB = 1024**3
COMPUTE_ALLOWANCE_BYTES = 512 * 1024 * 1024  # = plan_offload's default GPU reserve
RAM_RESERVE_MIN_BYTES = 2 * GiB
RAM_RESERVE_FRACTION = 0.20
CPU_MAX_WEIGHTS_FRACTION_OF_RAM = 0.25
CPU_PARAMS_PER_CORE = 2_500_000_000
CPU_MAX_PARAMS = 8_500_000_000

FitKind = Literal["gpu", "partial", "cpu", "too_large"]


@dataclass(frozen=True)
class FitResult:
    kind: FitKind
    gpu_layers: int
    total_layers: int
    needed_bytes: int  # weights + KV cache (ctx × slots) + compute allowance
    available_bytes: int  # what the chosen placement can use (too_large: all the machine offers)
    label: str  # plain words for the user


def format_gb(n: int) -> str:
    return f"{n / GiB:.1f} GB"


def default_ram_reserve(cap: Capability) -> int:
    """RAM kept for the system and other programs: 2 GiB or 20 % of the RAM, whichever is larger."""
    return max(RAM_RESERVE_MIN_BYTES, int(cap.ram_total_bytes * RAM_RESERVE_FRACTION))


def _uses_gpu(cap: Capability) -> bool:
    return cap.backend in ("cuda", "metal") and cap.gpu_offload_supported and bool(cap.devices)


def _too_large(n_layers: int, needed: int, available: int) -> FitResult:
    return FitResult(
        "too_large",
        0,
        n_layers,
        needed,
        available,
        f"Too large for this machine (needs {format_gb(needed)}, {format_gb(available)} available)",
    )


def assess_fit(
    entry: CatalogEntry,
    cap: Capability,
    ctx: int = 4096,
    slots: int = 1,
    ram_reserve_bytes: int | None = None,
) -> FitResult:
    """How ``entry`` would run on ``cap`` with ``slots`` sequences of ``ctx`` tokens each (see the
    module docstring for the accounting). ``ram_reserve_bytes`` defaults to
    ``default_ram_reserve(cap)``."""
    n = entry.n_layers
    weights = entry.estimated_size_bytes()
    kv = entry.kv_bytes_per_token() * ctx * max(1, slots)
    needed = weights + kv + COMPUTE_ALLOWANCE_BYTES
    reserve = default_ram_reserve(cap) if ram_reserve_bytes is None else ram_reserve_bytes
    usable_ram = max(0, cap.ram_total_bytes - reserve)
    cpu = FitResult("cpu", 0, n, needed, usable_ram, "Runs on the CPU")

    if not _uses_gpu(cap):
        return cpu if needed <= usable_ram else _too_large(n, needed, usable_ram)

    vram = cap.vram_free_bytes
    # The engine's own criterion: whole layers, the compute allowance kept free on the GPU.
    plan = plan_offload(cap.backend, n, weights, kv, vram, reserve_bytes=COMPUTE_ALLOWANCE_BYTES)

    def partial(available: int) -> FitResult:
        return FitResult(
            "partial",
            plan.gpu_layers,
            n,
            needed,
            available,
            f"Runs partly on the GPU ({plan.gpu_layers} of {n} layers)",
        )

    if cap.backend == "metal":
        # Unified memory, counted once: however the layers are split, it all lives in RAM.
        if needed > usable_ram:
            return _too_large(n, needed, usable_ram)
        if plan.full:
            return FitResult("gpu", n, n, needed, min(vram, usable_ram), "Runs fully on your GPU")
        return cpu if plan.gpu_layers == 0 else partial(usable_ram)

    if plan.full:
        return FitResult("gpu", n, n, needed, vram, "Runs fully on your GPU")
    if plan.gpu_layers == 0:  # not even one layer fits the GPU
        return cpu if needed <= usable_ram else _too_large(n, needed, usable_ram)
    on_gpu = (weights + kv) * plan.gpu_layers // n
    if weights + kv - on_gpu > usable_ram:
        # What this split can use: the usable RAM and the GPU memory its whole layers take.
        return _too_large(n, needed, usable_ram + on_gpu + COMPUTE_ALLOWANCE_BYTES)
    return partial(usable_ram + vram)


def _cpu_can_run(entry: CatalogEntry, cap: Capability) -> bool:
    max_params = min(CPU_MAX_PARAMS, CPU_PARAMS_PER_CORE * max(1, cap.physical_cores))
    return (
        entry.parameters <= max_params
        and entry.estimated_size_bytes() <= cap.ram_total_bytes * CPU_MAX_WEIGHTS_FRACTION_OF_RAM
    )


def recommend(catalog: list[CatalogEntry], cap: Capability, ctx: int = 4096, slots: int = 1) -> CatalogEntry | None:
    """The model to suggest for this machine, by the rule in the module docstring, or None."""
    fits = [(e, assess_fit(e, cap, ctx, slots)) for e in catalog if e.default]
    fits = [(e, f) for e, f in fits if f.kind != "too_large"]

    def largest(entries: list[CatalogEntry]) -> CatalogEntry | None:
        return max(entries, key=lambda e: (e.parameters, e.id), default=None)

    on_gpu = largest([e for e, f in fits if f.kind == "gpu"])
    if on_gpu is not None:
        return on_gpu
    return largest([e for e, _ in fits if _cpu_can_run(e, cap)])
