"""TensorRT as the runtime of TensorRT targets, on NVIDIA Polygraphy: engines built from ONNX with
Polygraphy's loaders (``trt_build``), timed with its ``TrtRunner`` (``trt_time``: per inference by
``last_inference_time`` for table entries, wall clock per synchronous run for interleaved
comparisons), the build settings and their trtexec equivalent in ``trt_config``.

tensorrt, polygraphy and cuda-python (the GPU's name and count) are imported only where an engine is
built or run, so hwprune imports and runs without them; this module imports no torch, so the
on-device kit uses it on a bare JetPack. Where they are missing, compile still writes the ONNX files
and ``build_engine.sh`` with the trtexec lines to run on the device; no TensorRT number is ever
produced here without TensorRT.

Written against TensorRT 10 (JetPack 6 ships 10.3) and Polygraphy 0.49+, tested without TensorRT
only: not yet run on a GPU.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hwprune.io import cache_dir, write_text_atomic
from hwprune.runtime.base import Runner, Runtime, host_fingerprint, jetson_release, package_version
from hwprune.runtime.timing import Timing
from hwprune.runtime.trt_build import build_engine
from hwprune.runtime.trt_config import EngineConfig, build_script, engine_config, layer_info_path, trtexec_command
from hwprune.runtime.trt_env import gpu_name, unavailable_reason
from hwprune.runtime.trt_time import EngineRunner, time_engine

__all__ = ["EngineConfig", "TensorRT", "build_engine", "build_script", "engine_config", "sparse_layers",
           "time_engine", "trtexec_command", "unavailable_reason"]


def sparse_layers(info: dict) -> list[str]:
    """The names of the engine layers whose chosen tactic is a sparse kernel, from the engine
    inspector's JSON at detailed verbosity (``{"Layers": [{"Name": ..., "TacticName": ...}]}``).
    TensorRT names its 2:4 kernels with "sparse" in the tactic name (the verbose build log's
    "picked sparse implementation" lines list the same layers)."""
    layers = info.get("Layers", [])
    return [str(layer.get("Name")) for layer in layers
            if isinstance(layer, dict) and "sparse" in str(layer.get("TacticName", "")).lower()]


class TensorRT(Runtime):
    name = "TensorRT"
    method = {"warmup": 20, "runs": 200,
              "statistic": "median of Polygraphy TrtRunner.last_inference_time (inputs on the GPU, no host copies)"}

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def gpu(self) -> str | None:
        return gpu_name()

    def provenance(self) -> dict:
        return {"target": self.target.name, "runtime": "tensorrt", "runtime_version": package_version("tensorrt"),
                "threads": None, "graph_optimization_level": None,
                "host": {**host_fingerprint(), "gpu": self.gpu(), "dtype": self.target.default_dtype}}

    def fingerprint(self) -> dict:
        found = {**self.provenance(), "polygraphy": package_version("polygraphy"),
                 "cuda_python": package_version("cuda-python")}
        release = jetson_release()
        if release is not None:
            found["l4t"] = release
        return found

    def measurement(self) -> dict:
        return {"runtime": "TensorRT", "precision": self.target.default_dtype,
                "method": "interleaved A/B rounds of 5 synchronous Polygraphy TrtRunner.infer runs (wall clock); "
                          "speedup = 1 / median over rounds of (pruned round median / baseline round median)"}

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

    def time_graph(self, graph: bytes | Path, shape: tuple[int, ...], calls: int | None = None) -> Timing:
        with tempfile.TemporaryDirectory(prefix="hwprune-trt-") as tmp:
            path = graph if isinstance(graph, Path) else Path(tmp) / "op.onnx"
            if not isinstance(graph, Path):
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
        return configs[-1].engine.name, (f"built with TensorRT {package_version('tensorrt')} "
                                         f"(Polygraphy {package_version('polygraphy')})")

    def sparse_layers(self, engine: Path) -> list[str] | None:
        info = layer_info_path(engine)
        return sparse_layers(json.loads(info.read_text())) if info.exists() else None

    def _cache(self) -> Path:
        """One timing cache per target, reused by every build on this host."""
        path = cache_dir() / "latency" / f"{self.target.name}-tensorrt.timing.cache"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
