"""What a TensorRT engine build needs (:class:`EngineConfig`, from a target) and the same build as
the trtexec command line, for ``build_engine.sh`` where TensorRT is absent. Pure data: no TensorRT,
no Polygraphy, no torch."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from hwprune.errors import HwpruneError
from hwprune.targets import Target

DEFAULT_WORKSPACE_MIB = 1024


@dataclass(frozen=True)
class EngineConfig:
    """Everything a build needs, the same for Polygraphy's loaders and for trtexec."""

    onnx: Path
    engine: Path
    input_name: str
    input_shape: tuple[int, ...]
    fp16: bool
    sparse_weights: bool
    workspace_mib: int
    timing_cache: Path
    max_batch: int | None = None  # None: static shapes; else an optimisation profile for batch 1..max_batch

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
        """The optimisation profile's (min, opt, max) input shapes: batch 1, the given shape, max_batch."""
        if self.max_batch is None:
            return None
        rest = self.input_shape[1:]
        return (1, *rest), self.input_shape, (self.max_batch, *rest)


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


def layer_info_path(engine: Path) -> Path:
    """Where an engine's layer information (TensorRT's engine inspector, JSON) is kept: beside it."""
    return engine.with_name(engine.stem + ".layers.json")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(config: EngineConfig) -> list[str]:
    """The trtexec invocation that builds and times the same engine as ``trt_build.build_engine``."""
    command = ["trtexec", f"--onnx={config.onnx}", f"--saveEngine={config.engine}",
               f"--memPoolSize=workspace:{config.workspace_mib}", f"--timingCacheFile={config.timing_cache}"]
    if config.fp16:
        command.append("--fp16")
    if config.sparse_weights:  # and the layer information that says which layers run sparse kernels
        command += ["--sparsity=enable", "--profilingVerbosity=detailed",
                    f"--exportLayerInfo={layer_info_path(config.engine)}"]
    shapes = config.profile_shapes()
    if shapes is not None:
        low, opt, high = shapes
        command += [f"--minShapes={config.input_name}:{_shape(low)}",
                    f"--optShapes={config.input_name}:{_shape(opt)}",
                    f"--maxShapes={config.input_name}:{_shape(high)}"]
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
