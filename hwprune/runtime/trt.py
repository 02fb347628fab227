"""TensorRT: engines from ONNX (build configuration, the equivalent trtexec commands, the build)
and their timing (CUDA events for table entries, wall clock per synchronous run for interleaved
comparisons), as the runtime of TensorRT targets.

``tensorrt`` and CUDA are imported only where an engine is built or run, so hwprune imports and
runs without them; this module imports no torch, so the on-device kit uses it on a bare JetPack.
Where TensorRT is missing, compile still writes the ONNX files and ``build_engine.sh`` with the
trtexec lines to run on the device; no TensorRT number is ever produced here without TensorRT.

Written against the TensorRT 10 Python API (JetPack 6 ships 10.3): explicit-batch networks,
``set_memory_pool_limit``, ``build_serialized_network``, ``execute_async_v3``.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwprune.errors import HwpruneError
from hwprune.io import cache_dir, write_text_atomic
from hwprune.runtime.base import Runner, Runtime, host_fingerprint, jetson_release, package_version
from hwprune.runtime.timing import Timing
from hwprune.targets import Target

DEFAULT_WORKSPACE_MIB = 1024


@dataclass(frozen=True)
class EngineConfig:
    """Everything a build needs, the same for the Python API and for trtexec."""

    onnx: Path
    engine: Path
    input_name: str
    input_shape: tuple[int, ...]
    fp16: bool
    sparse_weights: bool
    workspace_mib: int
    timing_cache: Path
    max_batch: int | None = None  # None: static shapes; else an optimisation profile for batch 1..max_batch


def engine_config(target: Target, onnx: Path, engine: Path, input_shape: tuple[int, ...], sparse: bool = False,
                  max_batch: int | None = None, input_name: str = "input",
                  workspace_mib: int = DEFAULT_WORKSPACE_MIB, timing_cache: Path | None = None) -> EngineConfig:
    """The build settings a target implies: its default dtype, and 2:4 sparse weights only where the
    plan uses them and the device accelerates them. The timing cache sits beside the engine unless
    given."""
    if sparse and not target.sparse_24:
        raise HwpruneError(f"target {target.name} has no sparse tensor cores; a 2:4 plan gains nothing there")
    dtype = target.default_dtype
    if dtype not in ("fp16", "fp32"):
        raise HwpruneError(f"target {target.name}: engines are built in fp32 or fp16, not {dtype}")
    return EngineConfig(onnx, engine, input_name, tuple(input_shape), fp16=dtype == "fp16", sparse_weights=sparse,
                        workspace_mib=workspace_mib,
                        timing_cache=timing_cache or engine.parent / "timing.cache", max_batch=max_batch)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(config: EngineConfig) -> list[str]:
    """The trtexec invocation that builds and times the same engine as :func:`build_engine`."""
    command = ["trtexec", f"--onnx={config.onnx}", f"--saveEngine={config.engine}",
               f"--memPoolSize=workspace:{config.workspace_mib}", f"--timingCacheFile={config.timing_cache}"]
    if config.fp16:
        command.append("--fp16")
    if config.sparse_weights:  # and the layer information that says which layers run sparse kernels
        command += ["--sparsity=enable", "--profilingVerbosity=detailed",
                    f"--exportLayerInfo={layer_info_path(config.engine)}"]
    if config.max_batch is not None:
        rest = config.input_shape[1:]
        command += [f"--minShapes={config.input_name}:{_shape((1, *rest))}",
                    f"--optShapes={config.input_name}:{_shape(config.input_shape)}",
                    f"--maxShapes={config.input_name}:{_shape((config.max_batch, *rest))}"]
    command += ["--noDataTransfers", "--useSpinWait", "--duration=10"]
    return command


def build_script(configs: list[EngineConfig], reason: str) -> str:
    """A shell script with the trtexec lines for each engine, for a machine that has TensorRT."""
    lines = ["#!/bin/sh", f"# Engines were not built here: {reason}.",
             "# Run on the target device (TensorRT's trtexec on PATH); each line builds one engine and prints its",
             "# GPU compute time (median, p90, p99).", "set -e", 'cd "$(dirname "$0")"']
    for config in configs:
        relative = EngineConfig(**{**vars(config), "onnx": Path(config.onnx.name), "engine": Path(config.engine.name),
                                   "timing_cache": Path(config.timing_cache.name)})
        lines.append(shlex.join(trtexec_command(relative)))
    return "\n".join(lines) + "\n"


def _cudart():
    """cuda-python's runtime bindings (the module moved in cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _check(result: tuple) -> object:
    error, *values = result
    if int(error) != 0:
        raise HwpruneError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else values


def unavailable_reason() -> str | None:
    """Why engines cannot be built on this machine, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'hwprune[trt]' on a machine with an NVIDIA GPU)"
    try:
        runtime = _cudart()
    except ImportError:
        return "cuda-python is not installed (pip install 'hwprune[trt]')"
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        return "no CUDA GPU is visible"
    return None


def build_engine(config: EngineConfig) -> Path:
    """Build and save the engine with the TensorRT Python API, reusing and updating the timing cache."""
    reason = unavailable_reason()
    if reason is not None:
        raise HwpruneError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(config.onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HwpruneError(f"TensorRT could not parse {config.onnx}: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    if config.sparse_weights:
        builder_config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cached = config.timing_cache.read_bytes() if config.timing_cache.exists() else b""
    builder_config.set_timing_cache(builder_config.create_timing_cache(cached), False)
    if config.max_batch is not None:
        rest = config.input_shape[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(config.input_name, (1, *rest), config.input_shape, (config.max_batch, *rest))
        builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise HwpruneError(f"TensorRT failed to build an engine from {config.onnx}")
    config.engine.write_bytes(bytes(serialized))
    config.timing_cache.write_bytes(bytes(builder_config.get_timing_cache().serialize()))
    if config.sparse_weights:
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
        inspector = engine.create_engine_inspector()
        layer_info_path(config.engine).write_text(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return config.engine


def layer_info_path(engine: Path) -> Path:
    """Where an engine's layer information (TensorRT's engine inspector, JSON) is kept: beside it."""
    return engine.with_name(engine.stem + ".layers.json")


def sparse_layers(info: dict) -> list[str]:
    """The names of the engine layers whose chosen tactic is a sparse kernel, from the engine
    inspector's JSON at detailed verbosity (``{"Layers": [{"Name": ..., "TacticName": ...}]}``).
    TensorRT names its 2:4 kernels with "sparse" in the tactic name (the verbose build log's
    "picked sparse implementation" lines list the same layers)."""
    layers = info.get("Layers", [])
    return [str(layer.get("Name")) for layer in layers
            if isinstance(layer, dict) and "sparse" in str(layer.get("TacticName", "")).lower()]


class _LoadedEngine:
    """A deserialised engine with its execution context, device buffers and stream (no host copies)."""

    def __init__(self, engine_path: Path, input_shape: tuple[int, ...]):
        reason = unavailable_reason()
        if reason is not None:
            raise HwpruneError(f"cannot run a TensorRT engine: {reason}")
        import tensorrt as trt

        self.cudart = _cudart()
        self.path = engine_path
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, input_shape)
        self.buffers = []
        self.stream = _check(self.cudart.cudaStreamCreate())
        for name in names:
            itemsize = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
            size = int(np.prod(self.context.get_tensor_shape(name))) * itemsize
            self.buffers.append(_check(self.cudart.cudaMalloc(max(size, 1))))
            self.context.set_tensor_address(name, int(self.buffers[-1]))

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise HwpruneError(f"TensorRT failed to run {self.path}")

    def close(self) -> None:
        for pointer in self.buffers:
            self.cudart.cudaFree(pointer)
        self.buffers = []
        self.cudart.cudaStreamDestroy(self.stream)


def time_engine(engine_path: Path, input_shape: tuple[int, ...], warmup: int = 20, runs: int = 200) -> Timing:
    """GPU compute time per inference from CUDA events around ``execute_async_v3`` (no host copies)."""
    loaded = _LoadedEngine(engine_path, input_shape)
    cudart = loaded.cudart
    start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
    try:
        times = []
        for n in range(warmup + runs):
            _check(cudart.cudaEventRecord(start, loaded.stream))
            loaded.enqueue()
            _check(cudart.cudaEventRecord(end, loaded.stream))
            _check(cudart.cudaEventSynchronize(end))
            if n >= warmup:
                times.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
    finally:
        cudart.cudaEventDestroy(start)
        cudart.cudaEventDestroy(end)
        loaded.close()
    return Timing.of(times)


class EngineRunner(Runner):
    """One synchronous inference per ``run()``: enqueue, then wait for the stream."""

    def __init__(self, engine_path: Path, input_shape: tuple[int, ...]):
        self.loaded = _LoadedEngine(engine_path, input_shape)
        self.input_shapes = [tuple(input_shape)]

    def run(self) -> None:
        self.loaded.enqueue()
        _check(self.loaded.cudart.cudaStreamSynchronize(self.loaded.stream))

    def close(self) -> None:
        self.loaded.close()


class TensorRT(Runtime):
    name = "TensorRT"
    method = {"warmup": 20, "runs": 200, "statistic": "median GPU time of execute_async_v3 (CUDA events)"}

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def gpu(self) -> str | None:
        if unavailable_reason() is not None:
            return None
        properties = _check(_cudart().cudaGetDeviceProperties(0))
        name = properties.name
        return name.decode() if isinstance(name, bytes) else str(name)

    def provenance(self) -> dict:
        return {"target": self.target.name, "runtime": "tensorrt", "runtime_version": package_version("tensorrt"),
                "threads": None, "graph_optimization_level": None,
                "host": {**host_fingerprint(), "gpu": self.gpu(), "dtype": self.target.default_dtype}}

    def fingerprint(self) -> dict:
        found = {**self.provenance(), "cuda_python": package_version("cuda-python")}
        release = jetson_release()
        if release is not None:
            found["l4t"] = release
        return found

    def measurement(self) -> dict:
        return {"runtime": "TensorRT", "precision": self.target.default_dtype,
                "method": "interleaved A/B rounds of 5 synchronous execute_async_v3 runs (wall clock); speedup = "
                          "1 / median over rounds of (pruned round median / baseline round median)"}

    def load(self, model: Path) -> Runner:
        """Build ``model`` into an engine (in a temporary folder) and load it; the input is the
        model's first input at its exported static shape."""
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        first = graph.input[0]
        shape = tuple(d.dim_value or 1 for d in first.type.tensor_type.shape.dim)
        with tempfile.TemporaryDirectory(prefix="hwprune-trt-") as tmp:
            config = engine_config(self.target, model, Path(tmp) / "model.engine", shape, input_name=first.name,
                                   timing_cache=self._cache())
            return EngineRunner(build_engine(config), shape)

    def time_graph(self, graph: bytes, shape: tuple[int, ...], calls: int | None = None) -> Timing:
        with tempfile.TemporaryDirectory(prefix="hwprune-trt-") as tmp:
            path = Path(tmp) / "op.onnx"
            path.write_bytes(graph)
            config = engine_config(self.target, path, Path(tmp) / "op.engine", shape, input_name="x",
                                   timing_cache=self._cache())
            return time_engine(build_engine(config), shape, self.method["warmup"], calls or self.method["runs"])

    def engines(self, folder: Path, names: Sequence[str], input_shape: tuple[int, ...], max_batch: int | None,
                sparse: Sequence[str] = ()) -> tuple[str | None, str]:
        """Build each engine where TensorRT runs (those in ``sparse`` with 2:4 sparse weights enabled,
        their layer information beside them); otherwise write ``build_engine.sh`` with the equivalent
        trtexec lines for the device, and say why."""
        configs = [engine_config(self.target, folder / f"{name}.onnx", folder / f"{name}.engine", input_shape,
                                 sparse=name in sparse, max_batch=max_batch) for name in names]
        reason = unavailable_reason()
        if reason is not None:
            write_text_atomic(folder / "build_engine.sh", build_script(configs, reason))
            (folder / "build_engine.sh").chmod(0o755)
            return None, reason + "; build_engine.sh has the trtexec commands"
        for config in configs:
            build_engine(config)
        return configs[-1].engine.name, f"built with TensorRT {package_version('tensorrt')}"

    def sparse_layers(self, engine: Path) -> list[str] | None:
        info = layer_info_path(engine)
        return sparse_layers(json.loads(info.read_text())) if info.exists() else None

    def _cache(self) -> Path:
        """One timing cache per target, reused by every build on this host."""
        path = cache_dir() / "latency" / f"{self.target.name}-tensorrt.timing.cache"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
