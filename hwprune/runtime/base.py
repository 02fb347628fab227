"""What every runtime offers: load a model, time it alone or interleaved, time single-op graphs,
and say what a measurement was made on."""

from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hwprune.errors import HwpruneError
from hwprune.runtime.kit import OpGraph
from hwprune.runtime.timing import Comparison, Timing, interleave, time_runs
from hwprune.targets import Target

Module = Any  # a torch.nn.Module, and Tensor a torch.Tensor: named, not imported (this layer imports no torch)
Tensor = Any


class Runner(ABC):
    """A model loaded for one runtime with fixed random inputs: ``run()`` is one inference."""

    input_shapes: list[tuple]

    @abstractmethod
    def run(self) -> None: ...

    def suspend(self) -> None:  # noqa: B027  (most runners keep what they hold)
        """Free what the runner can rebuild before its next run, where holding it costs more than rebuilding
        (an onnxruntime session of a 2 GB model); it still runs afterwards, after a warm-up."""

    def close(self) -> None:  # noqa: B027  (most runners hold nothing to free)
        """Free what the runner holds (device buffers); it cannot run afterwards."""


class Runtime(ABC):
    """One target's runtime on this host."""

    name: str
    method: dict  # how a single-op latency table is measured with it (recorded in the table)
    where: str | None = None  # the device it times on, where that is not this host (runtime.remote)

    def __init__(self, target: Target):
        self.target = target

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this host cannot run the target's runtime, or None when it can."""

    def require(self, purpose: str) -> None:
        """A one-line error when this host cannot run the runtime: nothing times another in its place."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise HwpruneError(f"target {self.target.name} is timed with {self.name}: {reason}; "
                               f"{purpose}")

    @abstractmethod
    def provenance(self) -> dict:
        """The settings a latency table measured here binds to (``cost.lut.BINDING_FIELDS``)."""

    @abstractmethod
    def fingerprint(self) -> dict:
        """Everything a measurement here depends on: host or device, runtime and library versions."""

    @abstractmethod
    def measurement(self) -> dict:
        """How ``interleaved`` timed a comparison, for a report."""

    @abstractmethod
    def load(self, model: Path) -> Runner:
        """``model`` (an ONNX file) ready to run with the target's settings and random inputs."""

    def load_model(self, module: Module, inputs: tuple[Tensor, ...], onnx: Path) -> Runner:
        """The model a compile measures, ready to run: ``onnx`` (its export) for runtimes that run ONNX
        files, the module itself on ``inputs``' shapes for one that runs modules (torch). Callers that
        hold both pass both, and the runtime picks."""
        return self.load(onnx)

    def check_module(self, module: Module, inputs: Sequence[Tensor], atol: float, rtol: float) -> dict | None:
        """The module as this runtime runs it (the target's precision and mode) against ``module`` in fp32
        on ``inputs``, for runtimes that run modules; None for those that run the (separately verified)
        ONNX file."""
        return None

    @abstractmethod
    def time_graph(self, graph: bytes | Path, shape: tuple[int, ...], calls: int | None = None) -> Timing:
        """One serialized single-op ONNX graph (input ``x`` of ``shape``) timed as a table entry."""

    def time_graphs(self, graphs: Sequence[OpGraph], done: Callable[[int, Timing], None] | None = None
                    ) -> list[Timing]:
        """Many single-op graphs timed as table entries; ``done(i, timing)`` hears of each. A remote
        runtime times them in one batch on the device."""
        timings = []
        for i, op in enumerate(graphs):
            timings.append(self.time_graph(op.make(), op.shape, op.calls))
            if done is not None:
                done(i, timings[-1])
        return timings

    def engines(self, folder: Path, names: Sequence[str], input_shape: tuple[int, ...], max_batch: int | None,
                sparse: Sequence[str] = ()) -> tuple[str | None, str]:
        """Engine artefacts for ``folder/NAME.onnx`` (the path of the last one, or None) and a note
        saying what was done or why not; those named in ``sparse`` hold N:M weights the engine may
        run on sparse kernels. Runtimes that run ONNX directly build none."""
        return None, f"target {self.target.name} runs {self.name}, which runs the ONNX file itself: no engine"

    def sparse_refusal(self, pattern: str, op: str | None = None, shape: tuple[int, int] | None = None) -> str | None:
        """Why this runtime would run ``pattern`` on dense kernels (for a layer: ``op`` and its (out, in)
        weight ``shape``; neither: for every layer) while a table prices it as N:M; None where it may run it
        sparse, or picks its kernels itself from the N:M-zeroed weights it is given (onnxruntime, TensorRT)."""
        return None

    def sparse_layers(self, engine: Path) -> list[str] | None:
        """The layers of a built engine that run sparse kernels; None where no such engine was built
        (runtimes that run ONNX directly have no sparse kernels to report)."""
        return None

    def time(self, runner: Runner, warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.1) -> Timing:
        return time_runs(runner.run, warmup, min_runs, min_seconds)

    def interleaved(self, runners: Sequence[Runner], rounds: int = 15) -> Comparison:
        return interleave([r.run for r in runners], rounds)


def host_fingerprint() -> dict:
    """What identifies this host's CPU for timing purposes."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine()}


def package_version(name: str) -> str | None:
    """An installed distribution's version, read without importing it (torch is heavy, TensorRT optional)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def jetson_release() -> str | None:
    tegra = Path("/etc/nv_tegra_release")
    return tegra.read_text().splitlines()[0].strip() if tegra.exists() else None
