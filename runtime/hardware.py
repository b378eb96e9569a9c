"""Backend and memory detection, and the offload plan.

Detection (I/O) is kept apart from planning (pure functions over plain data) so the plan is tested
directly with made-up machines.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPUDevice:
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Capability:
    backend: str  # "cpu" | "cuda" | "metal"
    gpu_offload_supported: bool  # what the installed llama.cpp build can do
    devices: tuple[GPUDevice, ...]
    ram_total_bytes: int
    ram_free_bytes: int
    physical_cores: int
    logical_cores: int
    system: str
    machine: str

    @property
    def vram_total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices)

    @property
    def vram_free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)

    def to_json(self) -> dict:
        d = asdict(self)
        d["devices"] = [asdict(x) for x in self.devices]
        d["vram_total_bytes"] = self.vram_total_bytes
        d["vram_free_bytes"] = self.vram_free_bytes
        return d


def _nvidia_devices() -> tuple[GPUDevice, ...]:
    """NVIDIA GPUs through NVML (nvidia-ml-py), when the driver and the module are present."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a CUDA build on a machine without an NVIDIA GPU
        return ()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(GPUDevice(name if isinstance(name, str) else name.decode(), int(mem.total), int(mem.free)))
        return tuple(out)
    finally:
        pynvml.nvmlShutdown()


def choose_backend(system: str, machine: str, gpu_offload_supported: bool, nvidia: bool) -> str:
    """Which backend the engine runs on, from the build's abilities and the machine."""
    if not gpu_offload_supported:
        return "cpu"
    if system == "Darwin" and machine == "arm64":
        return "metal"
    if nvidia:
        return "cuda"
    return "cpu"


GPU_BACKEND_LIBS = ("ggml-cuda", "ggml-metal", "ggml-vulkan", "ggml-hip", "ggml-sycl", "ggml-musa", "ggml-opencl")


def build_supports_gpu_offload(lib_dir: Path | None) -> bool:
    """Whether a build of llama.cpp has a GPU backend, from the libraries it ships (this process never
    loads llama.cpp: that happens in the engine's worker process)."""
    if lib_dir is None or not lib_dir.is_dir():
        return False
    return any(p.name.startswith(("lib" + n, n)) for p in lib_dir.iterdir() for n in GPU_BACKEND_LIBS)


def detect(lib_dir: Path | None = None) -> Capability:
    """The machine. ``lib_dir``: the llama.cpp libraries the engines will load (default: the installed
    llama-cpp-python package's)."""
    if lib_dir is None:
        lib_dir = installed_llama_lib_dir()
    offload = build_supports_gpu_offload(lib_dir)
    system, machine = platform.system(), platform.machine()
    devices: tuple[GPUDevice, ...] = ()
    nvidia = False
    if offload and system != "Darwin":
        devices = _nvidia_devices()
        nvidia = bool(devices)
    backend = choose_backend(system, machine, offload, nvidia)
    vm = psutil.virtual_memory()
    if backend == "metal":
        # Apple Silicon shares memory between CPU and GPU; Metal may use most of it.
        devices = (GPUDevice("Apple Silicon GPU (unified memory)", int(vm.total * 0.75), int(vm.available * 0.75)),)
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return Capability(
        backend=backend,
        gpu_offload_supported=offload,
        devices=devices,
        ram_total_bytes=int(vm.total),
        ram_free_bytes=int(vm.available),
        physical_cores=int(physical),
        logical_cores=int(logical),
        system=system,
        machine=machine,
    )


def installed_llama_lib_dir() -> Path | None:
    """llama-cpp-python's own library folder, found without importing (loading) the package."""
    spec = importlib.util.find_spec("llama_cpp")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) / "lib" if locations else None


def default_threads(cap: Capability) -> int:
    """Threads for decoding: the physical cores (llama-cpp-python's default of half the logical
    cores halves the speed on small machines)."""
    return max(1, cap.physical_cores)


@dataclass(frozen=True)
class OffloadPlan:
    gpu_layers: int
    total_layers: int
    reason: str

    @property
    def full(self) -> bool:
        return self.gpu_layers >= self.total_layers


def plan_offload(
    backend: str,
    n_layers: int,
    weights_bytes: int,
    kv_bytes: int,
    vram_free_bytes: int,
    reserve_bytes: int = 512 * 1024 * 1024,
    requested: int | None = None,
) -> OffloadPlan:
    """How many layers go to the GPU: all when weights + KV fit in free VRAM (less a reserve for
    compute buffers), else as many whole layers as fit, else none."""
    if requested is not None:
        n = max(0, min(requested, n_layers))
        return OffloadPlan(n, n_layers, "set by the user")
    if backend == "cpu" or n_layers <= 0:
        return OffloadPlan(0, n_layers, "CPU backend")
    budget = vram_free_bytes - reserve_bytes
    need = weights_bytes + kv_bytes
    if need <= budget:
        return OffloadPlan(n_layers, n_layers, "model fits in free GPU memory")
    per_layer = need / n_layers
    n = int(max(0, budget) // per_layer) if per_layer > 0 else 0
    n = min(n, n_layers)
    return OffloadPlan(n, n_layers, f"{n} of {n_layers} layers fit in free GPU memory")


@dataclass
class RuntimeCapability:
    """What /api/status reports: the machine plus how the engine uses it."""

    cap: Capability
    threads: int
    gpu_layers: dict[str, int] = field(default_factory=dict)  # model id -> layers offloaded

    def to_json(self) -> dict:
        vm = psutil.virtual_memory()
        d = self.cap.to_json()
        d["ram_free_bytes"] = int(vm.available)  # live figure
        d["threads"] = self.threads
        d["gpu_layers"] = dict(self.gpu_layers)
        return d


@dataclass(frozen=True)
class SlotPlan:
    slots: int
    ctx_per_slot: int
    kv_bytes: int
    reason: str


def plan_slots(
    backend: str,
    n_ctx_train: int,
    kv_bytes_per_token: int,
    vram_free_bytes: int,
    requested_slots: int | None = None,
    requested_ctx: int | None = None,
    max_slots: int = 8,
    cpu_kv_budget_bytes: int = 192 * 1024 * 1024,
) -> SlotPlan:
    """Parallel slots and context per slot.

    Context: the user's choice, else the model's trained context capped at 4096 on GPUs and 2048 on
    CPUs (where reading a 4096-token prompt already takes tens of seconds on small machines). Slots:
    the user's choice, else as many as a KV budget allows (192 MiB on CPU, where more parallel
    sequences add little speed and the node should stay light; a quarter of free VRAM on a GPU, where
    batching pays), between 1 and 8.
    """
    cap_ctx = 2048 if backend == "cpu" else 4096
    ctx = requested_ctx if requested_ctx else min(n_ctx_train or cap_ctx, cap_ctx)
    ctx = max(256, ctx)
    per_slot = kv_bytes_per_token * ctx
    if requested_slots:
        slots, reason = requested_slots, "set by the user"
    else:
        budget = cpu_kv_budget_bytes if backend == "cpu" else max(cpu_kv_budget_bytes, vram_free_bytes // 4)
        slots = int(budget // per_slot) if per_slot else max_slots
        slots = max(1, min(max_slots, slots))
        reason = f"KV budget {budget // (1024 * 1024)} MiB on {backend}"
    return SlotPlan(slots, ctx, slots * per_slot, reason)
