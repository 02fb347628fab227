"""Engines timed with Polygraphy's ``TrtRunner``: fixed random inputs (Polygraphy's ``DataLoader``)
copied to the GPU once, outputs left there, one synchronous ``infer`` per run, and its own clock
(``last_inference_time``: enqueue to stream synchronised, no host copies) per table entry.

Written against TensorRT 10 and Polygraphy 0.49+, and not yet run on a GPU. Polygraphy may import
numpy, and torch where it is installed, while it runs inferences; this module imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwprune.runtime.base import Runner
from hwprune.runtime.timing import Timing, time_runs
from hwprune.runtime.trt_env import polygraphy_call, require


def random_inputs(inputs: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """Polygraphy's ``DataLoader`` data (fixed seed) for an engine's ``inputs`` (its ``TensorMetadata``),
    every one at ``shape`` (a dynamic batch set to ``shape``'s) and in its own dtype, as numpy arrays."""
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    wanted = TensorMetadata()
    for name in inputs:
        wanted.add(name, None, tuple(shape))
    loader = DataLoader(input_metadata=wanted)
    loader.input_metadata = inputs
    return dict(loader[0])


class EngineRunner(Runner):
    """A saved engine loaded into a ``TrtRunner``; every input at ``input_shape``."""

    def __init__(self, engine_path: Path, input_shape: tuple[int, ...]):
        require("run a TensorRT engine")
        from polygraphy import cuda
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.datatype import DataType

        self.path = engine_path
        self.input_shapes = [tuple(input_shape)]
        with polygraphy_call(f"TensorRT could not load {engine_path}"):
            self.runner = TrtRunner(EngineFromBytes(engine_path.read_bytes))
            self.runner.activate()
            self.inputs = {name: cuda.DeviceArray(array.shape, DataType.from_dtype(array.dtype)).copy_from(array)
                           for name, array in random_inputs(self.runner.get_input_metadata(), input_shape).items()}

    def run(self) -> None:
        with polygraphy_call(f"TensorRT could not run {self.path}"):
            self.runner.infer(self.inputs, check_inputs=False, copy_outputs_to_host=False)

    def timed(self, run: Callable[[], object]) -> float:
        """``run`` (this runner's) once, in milliseconds by Polygraphy's clock: a ``timing.Timer``."""
        run()
        return self.runner.last_inference_time() * 1e3

    def close(self) -> None:
        for array in self.inputs.values():
            array.free()
        self.inputs = {}
        self.runner.deactivate()


def time_engine(engine_path: Path, input_shape: tuple[int, ...], warmup: int = 20, runs: int = 200) -> Timing:
    """``runs`` inferences after ``warmup``, each by ``TrtRunner.last_inference_time``."""
    runner = EngineRunner(engine_path, input_shape)
    try:
        return time_runs(runner.run, warmup, runs, 0.0, timer=runner.timed)
    finally:
        runner.close()
