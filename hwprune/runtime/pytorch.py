"""PyTorch as a runtime: a pruned ``nn.Module`` (or a ``torch.export`` program, or an ONNX file rebuilt
as torch ops) run eagerly, captured in a CUDA graph, or compiled with ``torch.compile`` (Inductor), on
the CPU or an NVIDIA GPU, at the target's precision.

Timing follows the other runtimes: medians of many runs, and A/B comparisons interleaved. On the CPU
the wall clock times each run, with ``torch.set_num_threads(target.threads)`` held while loading and
timing (as onnxruntime's fixed intra-op threads); on a GPU CUDA events bracket each queued inference.
Single-op table entries are timed eagerly (CPU) or as CUDA graph replays (GPU), never one
``torch.compile`` per op: compiling is for the whole models. Linear weights that are already 2:4 run on
PyTorch's semi-structured sparse kernels where its rules allow (``runtime.torch_sparse``; CUDA only), and
each runner records which did and why the others did not. torch is imported inside the functions
only, so the runtime layer and the on-device kit that reaches it import without torch.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwprune.errors import DeviceError, HwpruneError
from hwprune.runtime.base import Runner, Runtime, host_fingerprint, package_version
from hwprune.runtime.kit import _command
from hwprune.runtime.timing import Comparison, Timer, Timing, interleave, time_runs, wall_ms
from hwprune.runtime.torch_sparse import PATTERN, SemiStructured, capability, refusal, sparsify_module, sparsify_program

if TYPE_CHECKING:
    from torch import Tensor, nn

DTYPES = {"fp32": "float32", "fp16": "float16"}
FP16_TOLERANCE = 1e-2  # fp16 keeps ~3 decimal digits; errors compound over a deep network's layers
GPU_QUERY = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit"


def torch_dtype(name: str):
    """The torch dtype of a target's ``default_dtype``; int8 is not run through PyTorch here."""
    import torch

    if name not in DTYPES:
        raise DeviceError(f"the torch runtime runs fp32 or fp16, not {name}")
    return getattr(torch, DTYPES[name])


def gpu_facts() -> dict:
    """What the GPU says of itself: its name and compute capability (torch), driver and clocks where
    nvidia-smi reads them, CUDA and cuDNN as torch was built with. Absent facts are null."""
    import torch

    facts = {"gpu": None, "capability": None, "driver": None, "clocks_mhz": None, "power_limit_w": None,
             "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["capability"] = ".".join(str(v) for v in torch.cuda.get_device_capability(0))
    line = _command("nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits")
    if line:
        fields = [v.strip() for v in line.splitlines()[0].split(",")]
        if len(fields) == 7:
            facts["driver"] = fields[1]
            facts["clocks_mhz"] = dict(zip(("sm", "mem", "max_sm", "max_mem"), fields[2:6], strict=True))
            facts["power_limit_w"] = fields[6]
    return facts


def cuda_event_ms(run: Callable[[], object]) -> float:
    """One queued GPU inference timed by CUDA events on the current stream, in milliseconds."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def tensors(output: object) -> list[Tensor]:
    """The tensors of a model's output (a tensor, a tuple or list, a dict or a transformers ModelOutput)."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in tensors(item)]
    return []


class TorchRunner(Runner):
    """``forward`` on fixed inputs, on one device in one mode: ``enqueue()`` starts one inference (on a GPU
    it returns before it ends), ``run()`` waits for it too. Built (compiled, captured) and run once on
    creation, so a first call's cost never lands in a timing. ``semi_structured`` says which 2:4 linear
    weights it runs on sparse kernels."""

    def __init__(self, forward: Callable, inputs: Sequence[Tensor], device: str, mode: str,
                 semi_structured: SemiStructured | None = None):
        import torch

        self.device, self.mode = device, mode
        self.semi_structured = semi_structured or SemiStructured()
        self.inputs = list(inputs)
        self.input_shapes = [tuple(x.shape) for x in self.inputs]
        self.forward = torch.compile(forward, fullgraph=True, dynamic=False) if mode == "compile" else forward
        self.graph = None
        with torch.no_grad():
            if mode == "cudagraph":
                self.graph, self.static_output = _captured(self.forward, self.inputs)
            else:
                self.forward(*self.inputs)
        self.sync()

    def enqueue(self) -> None:
        import torch

        if self.graph is not None:
            self.graph.replay()
            return
        with torch.no_grad():
            self.forward(*self.inputs)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def run(self) -> None:
        self.enqueue()
        self.sync()

    def outputs(self, *inputs: Tensor) -> list[Tensor]:
        """The outputs on other inputs of the same shapes (copied into a CUDA graph's static inputs)."""
        import torch

        with torch.no_grad():
            if self.graph is None:
                return [t.detach() for t in tensors(self.forward(*(x.to(s.device, s.dtype)
                                                                   for x, s in zip(inputs, self.inputs, strict=True))))]
            for static, x in zip(self.inputs, inputs, strict=True):
                static.copy_(x)
            self.graph.replay()
            self.sync()
            return [t.clone() for t in tensors(self.static_output)]

    def close(self) -> None:
        self.forward = self.graph = self.static_output = None
        self.inputs = []


def _captured(forward: Callable, inputs: list[Tensor]):
    """``forward`` captured in a CUDA graph after warm-up runs on a side stream (PyTorch's recipe)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            forward(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = forward(*inputs)
    return graph, output


class TorchRuntime(Runtime):
    name = "PyTorch"
    semi_structured = True  # False keeps 2:4 weights on dense kernels: the dense twin of an A/B comparison

    @property
    def method(self) -> dict:  # how a single-op table is measured (recorded in the table)
        how = "CUDA graph replays timed by CUDA events" if self.target.device == "cuda" else "eager calls, wall clock"
        return {"warmup": 3, "min_runs": 20, "min_seconds": 0.1, "statistic": f"median of {how}"}

    @property
    def table_mode(self) -> str:
        """How single ops are timed: never one torch.compile per op."""
        return "cudagraph" if self.target.device == "cuda" else "eager"

    def unavailable_reason(self) -> str | None:
        if package_version("torch") is None:
            return "PyTorch is not installed"
        if self.target.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                build = torch.version.cuda or "none"
                return f"no CUDA GPU is visible to PyTorch {torch.__version__} (CUDA build {build})"
        return None

    def provenance(self) -> dict:
        gpu = gpu_facts()["gpu"] if self.target.device == "cuda" else None
        return {"target": self.target.name, "runtime": "torch", "runtime_version": package_version("torch"),
                "threads": self.target.threads, "graph_optimization_level": self.target.mode,
                "host": {**host_fingerprint(), "device": self.target.device, "gpu": gpu,
                         "dtype": self.target.default_dtype}}

    def fingerprint(self) -> dict:
        found = {**self.provenance(), "python": platform.python_version(), "torch": package_version("torch"),
                 "single_ops": self.table_mode}
        if self.target.device == "cuda":
            found.update(gpu_facts())
            found["cudnn_benchmark"] = True
        return found

    def measurement(self) -> dict:
        clock = "CUDA events around each queued inference" if self.target.device == "cuda" else "wall clock"
        found = {"runtime": f"PyTorch {package_version('torch')} ({self.target.mode}, {self.target.device})",
                 "precision": self.target.default_dtype,
                 "method": f"interleaved A/B rounds of 5 runs ({clock}); speedup = 1 / median over rounds of "
                           "(pruned round median / baseline round median)"}
        if self.target.device == "cpu":  # as onnxruntime's: threads and how the graph is run
            found.update(threads=self.target.threads, graph_optimization_level=self.target.mode)
        return found

    @contextmanager
    def _held(self) -> Iterator[None]:
        """The target's intra-op threads while loading and timing on the CPU; the caller's afterwards."""
        import torch

        if self.target.device == "cuda":
            torch.backends.cudnn.benchmark = True
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.target.threads or 1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _timer(self) -> Timer:
        return cuda_event_ms if self.target.device == "cuda" else wall_ms

    def sparse_refusal(self, pattern: str, op: str | None = None, shape: tuple[int, int] | None = None) -> str | None:
        """Why ``pattern`` would run on dense kernels here (for a layer: ``op``, its (out, in) weight ``shape``):
        PyTorch's semi-structured rules (``torch_sparse.refusal``) on the target's device and precision."""
        gpu = capability() if self.target.device == "cuda" else None
        return refusal(pattern, op, shape, torch_dtype(self.target.default_dtype), self.target.device or "cpu", gpu)

    def _refuse(self, op: str, shape: tuple[int, int]) -> str | None:
        if not self.semi_structured:
            return "semi-structured kernels switched off (the dense twin)"
        return self.sparse_refusal(PATTERN, op, shape)

    def _runner(self, forward: Callable, inputs: Sequence[Tensor], mode: str | None = None,
                semi_structured: SemiStructured | None = None) -> TorchRunner:
        self.require("load a model")
        dtype = torch_dtype(self.target.default_dtype)
        device = self.target.device or "cpu"
        moved = [x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in inputs]
        with self._held():
            return TorchRunner(forward, moved, device, mode or self.target.mode or "eager", semi_structured)

    def load_model(self, module: nn.Module, inputs: tuple[Tensor, ...], onnx: Path | None = None) -> Runner:
        """A copy of ``module`` on the target's device and precision, its 2:4 linear weights on sparse kernels
        where PyTorch takes them (``module`` itself is left as it is)."""
        moved = copy.deepcopy(module).eval().to(self.target.device or "cpu", torch_dtype(self.target.default_dtype))
        return self._runner(moved, inputs, semi_structured=sparsify_module(moved, self._refuse))

    def load(self, model: Path) -> Runner:
        """A ``.pt2`` program (its example inputs) or an ONNX file rebuilt as torch ops (random inputs of
        its static shapes)."""
        import torch

        model = Path(model)
        if model.suffix == ".pt2":
            try:
                program = torch.export.load(model)
            except Exception as exc:
                raise HwpruneError(f"{model}: not a torch.export program ({type(exc).__name__})") from exc
            inputs = program.example_inputs[0] if program.example_inputs else None
            if not inputs:
                raise HwpruneError(f"{model}: the program keeps no example inputs to time it on")
            return self.load_model(program.module(), tuple(inputs))
        from hwprune.runtime.torch_onnx import OnnxProgram

        program = OnnxProgram(model)
        return self._program_runner(program)

    def _program_runner(self, program, mode: str | None = None) -> TorchRunner:
        """``program`` on the target's device and precision (2:4 weights on sparse kernels where PyTorch takes
        them), on random inputs of its shapes."""
        placed = program.to(self.target.device or "cpu", torch_dtype(self.target.default_dtype))
        return self._runner(placed, _random_inputs(program.inputs), mode, sparsify_program(placed, self._refuse))

    def time(self, runner: Runner, warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.1) -> Timing:
        with self._held():
            return time_runs(runner.enqueue, warmup, min_runs, min_seconds, timer=self._timer())

    def interleaved(self, runners: Sequence[Runner], rounds: int = 15) -> Comparison:
        with self._held():
            return interleave([r.enqueue for r in runners], rounds, timer=self._timer())

    def time_graph(self, graph: bytes | Path, shape: tuple[int, ...], calls: int | None = None) -> Timing:
        from hwprune.runtime.torch_onnx import OnnxProgram

        program = OnnxProgram(graph)
        if [s for s, _ in program.inputs] != [tuple(shape)]:
            raise HwpruneError(f"single-op graph takes inputs {[s for s, _ in program.inputs]}, not {tuple(shape)}")
        runner = self._program_runner(program, self.table_mode)
        try:
            method = self.method
            return self.time(runner, method["warmup"], calls or method["min_runs"], method["min_seconds"])
        finally:
            runner.close()

    def engines(self, folder: Path, names: Sequence[str], input_shape: tuple[int, ...], max_batch: int | None,
                sparse: Sequence[str] = ()) -> tuple[str | None, str]:
        return None, f"target {self.target.name} runs the PyTorch module itself ({self.target.mode}): no engine"

    def check_module(self, module: nn.Module, inputs: Sequence[Tensor], atol: float, rtol: float) -> dict:
        """``module`` as timed here (a copy at the target's precision, in its mode) against ``module`` in fp32
        on ``inputs``. fp32: |got - want| <= atol + rtol |want|, the ONNX check's rule; fp16: atol and rtol
        of at least 1e-2, atol scaled by the output's largest magnitude (fp16 errors are relative)."""
        import torch

        fp16 = self.target.default_dtype == "fp16"
        atol, rtol = (max(atol, FP16_TOLERANCE), max(rtol, FP16_TOLERANCE)) if fp16 else (atol, rtol)
        runner = self.load_model(module, (inputs[0],))
        worst, ok = 0.0, True
        try:
            with torch.no_grad(), self._held():
                for x in inputs:
                    want = [t.float().numpy() for t in tensors(module(x))]
                    got = [t.float().cpu().numpy() for t in runner.outputs(x)]
                    for w, g in zip(want, got, strict=True):
                        scale = max(1.0, float(np.abs(w).max())) if fp16 and w.size else 1.0
                        error = float(np.abs(g - w).max()) if w.size else 0.0
                        worst = max(worst, error)
                        ok &= bool(np.allclose(g, w, atol=atol * scale, rtol=rtol))
        finally:
            runner.close()
        return {"runtime": "torch", "mode": self.target.mode, "device": self.target.device,
                "precision": self.target.default_dtype, "max_abs_err": worst, "atol": atol, "rtol": rtol,
                "output_scaled_atol": fp16, "inputs": len(inputs), "ok": ok}


def _random_inputs(specs: Sequence[tuple[tuple[int, ...], bool]]) -> list[Tensor]:
    """Seeded inputs of the given shapes: floats, or (integer inputs) zeros and ones."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 2, shape, generator=generator) if integer else torch.randn(shape, generator=generator)
            for shape, integer in specs]
