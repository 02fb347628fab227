"""TensorRT engines from exported ONNX: build configuration, the equivalent trtexec commands, and
(where TensorRT and a GPU are present) the build and a CUDA-event timing.

``tensorrt`` and CUDA are imported only inside :func:`build_engine` and :func:`time_engine`, so
hwprune imports and runs without them. Where they are missing, compile still writes the ONNX
files and ``build_engine.sh`` with the trtexec lines to run on the device; no TensorRT number
is ever produced here without TensorRT.

Written against the TensorRT 10 Python API (JetPack 6 ships 10.3): explicit-batch networks,
``set_memory_pool_limit``, ``build_serialized_network``, ``execute_async_v3``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwprune.errors import HwpruneError
from hwprune.io import write_text_atomic
from hwprune.latency.measure import Timing
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
    if config.sparse_weights:
        command.append("--sparsity=enable")
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
    return config.engine


def time_engine(engine_path: Path, input_shape: tuple[int, ...], warmup: int = 20, runs: int = 200) -> Timing:
    """GPU compute time per inference from CUDA events around ``execute_async_v3`` (no host copies).

    Uses TensorRT and cuda-python only (no torch), so it runs on a device with a bare JetPack.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise HwpruneError(f"cannot time a TensorRT engine: {reason}")
    import tensorrt as trt

    cudart = _cudart()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, input_shape)
    buffers = []
    stream = _check(cudart.cudaStreamCreate())
    start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
    try:
        for name in names:
            itemsize = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
            size = int(np.prod(context.get_tensor_shape(name))) * itemsize
            buffers.append(_check(cudart.cudaMalloc(max(size, 1))))
            context.set_tensor_address(name, int(buffers[-1]))
        times = []
        for n in range(warmup + runs):
            _check(cudart.cudaEventRecord(start, stream))
            if not context.execute_async_v3(int(stream)):
                raise HwpruneError(f"TensorRT failed to run {engine_path}")
            _check(cudart.cudaEventRecord(end, stream))
            _check(cudart.cudaEventSynchronize(end))
            if n >= warmup:
                times.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
    finally:
        for pointer in buffers:
            cudart.cudaFree(pointer)
        cudart.cudaEventDestroy(start)
        cudart.cudaEventDestroy(end)
        cudart.cudaStreamDestroy(stream)
    return Timing.of(times)


def engines(target: Target, stage: Path, x, dynamic_batch: bool, step) -> dict:
    """For a TensorRT target: build and time both engines where TensorRT runs, otherwise write
    build_engine.sh and say why not. Other targets get no engine, with the reason."""
    if target.runtime != "tensorrt":
        return {"path": None, "reason": f"target {target.name} runs {target.runtime}, not TensorRT", "timings": None}
    max_batch = 8 * x.shape[0] if dynamic_batch else None
    configs = [engine_config(target, stage / f"{name}.onnx", stage / f"{name}.engine", tuple(x.shape),
                             max_batch=max_batch) for name in ("baseline", "pruned")]
    reason = unavailable_reason()
    if reason is not None:
        write_text_atomic(stage / "build_engine.sh", build_script(configs, reason))
        (stage / "build_engine.sh").chmod(0o755)
        return {"path": None, "reason": reason + "; build_engine.sh has the trtexec commands", "timings": None}
    timings = {}
    with step("build and time TensorRT engines"):
        for name, config in zip(("baseline", "pruned"), configs, strict=True):
            build_engine(config)
            timing = time_engine(config.engine, tuple(x.shape))
            timings[name] = {"median": timing.median_ms, "p90": timing.p90_ms, "p99": timing.p99_ms,
                             "spread": timing.spread}
    return {"path": "pruned.engine", "reason": None, "timings": timings}
