"""Device profiles: ``devices/<name>.toml`` read into a typed :class:`Target`.

A profile holds what a latency model needs to know about a device and where each number comes
from (every numeric line of a profile carries a ``# source:``, ``# fitted:`` or ``# assumed:``
comment; tests/unit/runtime/test_targets.py checks it). Layout of a profile::

    name, description, runtime ("onnxruntime" | "tensorrt" | "torch"), default_dtype, default_batch,
    channel_alignment, [threads, graph_optimization_level: onnxruntime targets only]
    [device ("cpu" | "cuda"), mode ("eager" | "cudagraph" | "compile"), threads (device "cpu"):
                          torch targets only; ``--target NAME:MODE`` picks another mode]
    [peak_tflops]         fp32, fp16, int8 (dense; int8 in TOPS)
    [peak_tflops_sparse]  2:4 structured-sparsity rates; only where tensor cores accelerate it
    [sparsity]            layer_speedup, min_channels: what the cost model predicts a 2:4 layer gains
                          (derated from public end-to-end evidence, not the datasheet's 2x) and
                          the channel count below which no gain is predicted; only beside
                          [peak_tflops_sparse]
    [memory]              bandwidth_gbps
    [analytic]            launch_overhead_us, memory_efficiency
    [analytic.efficiency] conv, pointwise, depthwise, linear (fractions of peak compute)

Anything missing, of the wrong type, out of range or unknown is a :class:`DeviceError` naming
the file and the key, so a typo in a profile never silently falls back to a default.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from hwprune.errors import DeviceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

RUNTIMES = ("onnxruntime", "tensorrt", "torch")
TORCH_DEVICES = ("cpu", "cuda")
TORCH_MODES = ("eager", "cudagraph", "compile")  # cudagraph: captured in a CUDA graph (cuda only)
DTYPES = ("fp32", "fp16", "int8")
OP_KINDS = ("conv", "pointwise", "depthwise", "linear")
ORT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
REQUIRED_FIELDS = ("name", "description", "runtime", "default_dtype", "default_batch", "channel_alignment",
                   "peak_tflops", "memory", "analytic")
_OPTIONAL_FIELDS = ("peak_tflops_sparse", "sparsity", "threads", "graph_optimization_level", "device", "mode")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class AnalyticParams:
    """Parameters of the roofline model in :mod:`hwprune.cost.analytic`."""

    efficiency: dict[str, float]
    """Fraction of the peak compute rate reached, per op kind (conv, pointwise, depthwise, linear)."""
    memory_efficiency: float
    """Fraction of the peak DRAM bandwidth reached by streaming kernels."""
    launch_overhead_us: float
    """Fixed cost added to every op (kernel launch, scheduling), microseconds."""


@dataclass(frozen=True)
class Target:
    """One deployment target: which runtime times it and what its kernels like."""

    name: str
    description: str
    runtime: str
    default_dtype: str
    default_batch: int
    channel_alignment: int
    peak_tflops: dict[str, float]
    """Dense peak rate per dtype in TFLOPS (TOPS for int8)."""
    peak_tflops_sparse: dict[str, float]
    """2:4 structured-sparsity peak rates; empty where the hardware does not accelerate 2:4."""
    bandwidth_gbps: float
    analytic: AnalyticParams
    threads: int | None = None
    """Intra-op threads (onnxruntime targets, and torch targets on the CPU)."""
    graph_optimization_level: str | None = None
    """onnxruntime graph optimisation level (onnxruntime targets only)."""
    device: str | None = None
    """Where a torch target runs: "cpu" or "cuda" (torch targets only)."""
    mode: str | None = None
    """How a torch target runs a whole model: "eager", "cudagraph" or "compile" (torch targets only)."""
    sparse_layer_speedup: float = 1.0
    """Predicted speedup of a 2:4 layer's compute-bound time (1: none predicted)."""
    sparse_min_channels: int = 0
    """Input and output channels a layer needs before a 2:4 gain is predicted."""
    path: str = field(default="", compare=False)
    """The file the profile was read from."""

    @property
    def sparse_24(self) -> bool:
        """Whether the device has 2:4 structured-sparsity tensor cores."""
        return bool(self.peak_tflops_sparse)


def _builtin_dir():
    return resources.files("hwprune.devices")


JETSON = "jetson"  # --target jetson: the module --remote reaches, identified there; else DEFAULT_JETSON
DEFAULT_JETSON = "jetson-orin-nano"
# what /proc/device-tree/model names (a substring, most specific first) -> the profile, and None where the
# profile is that module's own, else why it is the nearest one
JETSON_MODULES = (
    ("AGX Orin", "jetson-orin-agx", None),
    ("Orin NX", "jetson-orin-nano", "the Orin Nano's GPU (1024 Ampere cores) at higher clocks"),
    ("Orin Nano", "jetson-orin-nano", None),
    ("Xavier NX", "jetson-xavier-nx", None),
    ("AGX Xavier", "jetson-xavier-nx", "the Xavier NX's Volta GPU generation, 512 cores against 384"),
)


def jetson_profile(facts: dict) -> tuple[str, str]:
    """The profile for the Jetson whose own ``facts`` (``runtime.kit.device_facts``) are given, and one line
    saying what the device said and which profile it gets (the nearest, saying so, for a module without
    its own); a DeviceError where the device is no Jetson."""
    model, release = facts.get("model"), facts.get("l4t")
    if not model and not release:
        raise DeviceError(f"--target {JETSON}: the device has no /proc/device-tree/model or /etc/nv_tegra_release, "
                          "so it is no Jetson; name its target (hwprune devices lists them)")
    said = "; ".join(f"{what} {value}" for what, value in (("module", model), ("L4T", release),
                                                            ("power mode", facts.get("power_mode"))) if value)
    for name, profile, nearest in JETSON_MODULES:
        if model and name.lower() in model.lower():
            how = f"the nearest profile {profile} ({nearest})" if nearest else f"profile {profile}"
            return profile, f"--target {JETSON}: the device says {said}: {how}"
    return DEFAULT_JETSON, (f"--target {JETSON}: the device says {said}, a module hwprune has no profile for: "
                            f"the nearest, {DEFAULT_JETSON}, with its numbers unchecked for this module")


def resolve_target(name: str, device_facts: Callable[[], dict] | None = None) -> tuple[Target, str | None]:
    """The target ``name`` names, and the line to print where it was chosen for the user: ``jetson`` is the
    module whose ``device_facts`` (read on the device, ``--remote``) say what it is, else jetson-orin-nano."""
    if name != JETSON:
        return load_target(name), None
    if device_facts is None:
        return load_target(DEFAULT_JETSON), (f"--target {JETSON} without --remote: {DEFAULT_JETSON} (give --remote "
                                             "USER@HOST to identify the module, or name its target)")
    profile, line = jetson_profile(device_facts())
    return load_target(profile), line


def available_targets(directory: str | Path | None = None) -> list[str]:
    """Names of the profiles shipped with hwprune (or found in ``directory``)."""
    root = Path(directory) if directory is not None else _builtin_dir()
    if not root.is_dir():
        raise DeviceError(f"device profile directory {root} does not exist")
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def load_target(name: str, directory: str | Path | None = None) -> Target:
    """Load a device profile by name; a DeviceError lists the known names when it is missing.

    ``directory`` reads ``<directory>/<name>.toml`` instead of the profiles shipped with hwprune.
    ``NAME:MODE`` is a torch target run in another mode (``cuda:compile``), under that name: its
    tables and reports never mix with the default mode's.
    """
    if ":" in name:
        return _with_mode(name, directory)
    root = Path(directory) if directory is not None else _builtin_dir()
    path = root / f"{name}.toml"
    if not _NAME.match(name) or not path.is_file():
        known = ", ".join(available_targets(directory)) or "none"
        raise DeviceError(f"unknown target {name!r}; known targets: {known}")
    where = f"device profile {name}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeviceError(f"{where} is malformed: {exc}") from exc
    return _parse(data, name, where, str(path))


def _with_mode(name: str, directory: str | Path | None) -> Target:
    base, mode = name.split(":", 1)
    target = load_target(base, directory)
    if target.runtime != "torch":
        raise DeviceError(f"target {name!r}: a :MODE suffix applies to torch targets only, not {target.runtime}")
    _check_mode(mode, target.device, f"target {name!r}")
    return replace(target, name=name, mode=mode)


def _check_mode(mode: object, device: str | None, where: str) -> None:
    if mode not in TORCH_MODES:
        raise DeviceError(f"{where}: mode = {mode!r} is not one of {', '.join(TORCH_MODES)}")
    if mode == "cudagraph" and device != "cuda":
        raise DeviceError(f"{where}: mode cudagraph captures a CUDA graph and needs device cuda, not {device}")


def _parse(data: dict, stem: str, where: str, path: str) -> Target:
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise DeviceError(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise DeviceError(f"{where} has unknown keys {', '.join(unknown)}")

    name = _string(data, "name", where)
    if name != stem:
        raise DeviceError(f"{where}: name = {name!r} does not match the file name {stem!r}")
    description = _string(data, "description", where)
    runtime = _choice(data, "runtime", RUNTIMES, where)
    default_dtype = _choice(data, "default_dtype", DTYPES, where)
    default_batch = _positive_int(data, "default_batch", where)
    channel_alignment = _positive_int(data, "channel_alignment", where)

    peak = _rates(data, "peak_tflops", where, required=DTYPES)
    sparse = _rates(data, "peak_tflops_sparse", where, required=()) if "peak_tflops_sparse" in data else {}
    for dtype, rate in sparse.items():
        if rate < peak[dtype]:
            raise DeviceError(f"{where}: peak_tflops_sparse.{dtype} = {rate} is below the dense rate {peak[dtype]}")

    speedup, min_channels = 1.0, 0
    if "sparsity" in data:
        if not sparse:
            raise DeviceError(f"{where}: [sparsity] needs [peak_tflops_sparse] (a device without sparse tensor cores)")
        table = _table(data, "sparsity", where)
        _only(table, ("layer_speedup", "min_channels"), f"{where} [sparsity]")
        speedup = _positive_number(table, "layer_speedup", f"{where} [sparsity]")
        if speedup < 1:
            raise DeviceError(f"{where} [sparsity]: layer_speedup = {speedup} is below 1")
        min_channels = _positive_int(table, "min_channels", f"{where} [sparsity]")

    memory = _table(data, "memory", where)
    _only(memory, ("bandwidth_gbps",), f"{where} [memory]")
    bandwidth = _positive_number(memory, "bandwidth_gbps", f"{where} [memory]")

    analytic = _analytic(_table(data, "analytic", where), where)

    threads, level, device, mode = _runtime_settings(data, runtime, where)
    return Target(name=name, description=description, runtime=runtime, default_dtype=default_dtype,
                  default_batch=default_batch, channel_alignment=channel_alignment, peak_tflops=peak,
                  peak_tflops_sparse=sparse, bandwidth_gbps=bandwidth, analytic=analytic, threads=threads,
                  graph_optimization_level=level, device=device, mode=mode, sparse_layer_speedup=speedup,
                  sparse_min_channels=min_channels, path=path)


def _runtime_settings(data: dict, runtime: str, where: str) -> tuple[int | None, str | None, str | None, str | None]:
    """Threads and optimisation level (onnxruntime), or device, mode and threads on the CPU (torch)."""
    allowed = {"onnxruntime": ("threads", "graph_optimization_level"), "torch": ("device", "mode", "threads"),
               "tensorrt": ()}[runtime]
    extra = [key for key in ("threads", "graph_optimization_level", "device", "mode") if key in data
             and key not in allowed]
    if extra:
        owners = {"threads": "onnxruntime targets (and torch targets on the cpu)",
                  "graph_optimization_level": "onnxruntime targets", "device": "torch targets", "mode": "torch targets"}
        raise DeviceError(f"{where}: {', '.join(extra)} only apply to {owners[extra[0]]}")
    if runtime == "onnxruntime":
        return (_positive_int(data, "threads", where),
                _choice(data, "graph_optimization_level", ORT_LEVELS, where), None, None)
    if runtime == "tensorrt":
        return None, None, None, None
    device = _choice(data, "device", TORCH_DEVICES, where)
    mode = _required(data, "mode", where)
    _check_mode(mode, device, where)
    if device == "cuda" and "threads" in data:
        raise DeviceError(f"{where}: threads only apply to torch targets on the cpu")
    threads = _positive_int(data, "threads", where) if device == "cpu" else None
    return threads, None, device, mode


def _analytic(table: dict, where: str) -> AnalyticParams:
    where = f"{where} [analytic]"
    _only(table, ("launch_overhead_us", "memory_efficiency", "efficiency"), where)
    if "launch_overhead_us" not in table:
        raise DeviceError(f"{where} lacks launch_overhead_us")
    overhead = table["launch_overhead_us"]
    if not _is_number(overhead) or overhead < 0:
        raise DeviceError(f"{where}: launch_overhead_us must be a number >= 0, got {overhead!r}")
    memory_efficiency = _fraction(table, "memory_efficiency", where)
    kinds = _table(table, "efficiency", where)
    _only(kinds, OP_KINDS, f"{where}.efficiency")
    efficiency = {kind: _fraction(kinds, kind, f"{where}.efficiency") for kind in OP_KINDS}
    return AnalyticParams(efficiency=efficiency, memory_efficiency=memory_efficiency,
                          launch_overhead_us=float(overhead))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _table(data: dict, key: str, where: str) -> dict:
    if key not in data:
        raise DeviceError(f"{where} lacks [{key}]")
    if not isinstance(data[key], dict):
        raise DeviceError(f"{where}: {key} must be a table")
    return data[key]


def _only(table: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise DeviceError(f"{where} has unknown keys {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _string(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DeviceError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _required(data: dict, key: str, where: str) -> object:
    if key not in data:
        raise DeviceError(f"{where} lacks {key}")
    return data[key]


def _choice(data: dict, key: str, choices: tuple[str, ...], where: str) -> str:
    value = _required(data, key, where)
    if value not in choices:
        raise DeviceError(f"{where}: {key} = {value!r} is not one of {', '.join(choices)}")
    return value


def _positive_int(data: dict, key: str, where: str) -> int:
    value = _required(data, key, where)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DeviceError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _positive_number(data: dict, key: str, where: str) -> float:
    value = _required(data, key, where)
    if not _is_number(value) or value <= 0:
        raise DeviceError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def _fraction(data: dict, key: str, where: str) -> float:
    value = _positive_number(data, key, where)
    if value > 1:
        raise DeviceError(f"{where}: {key} = {value} is a fraction of peak and must be in (0, 1]")
    return value


def _rates(data: dict, key: str, where: str, required: tuple[str, ...]) -> dict[str, float]:
    table = _table(data, key, where)
    _only(table, DTYPES, f"{where} [{key}]")
    missing = [dtype for dtype in required if dtype not in table]
    if missing:
        raise DeviceError(f"{where} [{key}] lacks {', '.join(missing)}")
    return {dtype: _positive_number(table, dtype, f"{where} [{key}]") for dtype in DTYPES if dtype in table}
