"""The Python API: what the command line does, called on the ``nn.Module`` a user holds (or any model spec
the command line takes). The CLI is a layer over the same pipeline; errors are the same typed exceptions
(:class:`hwprune.HwpruneError` and its kinds), which the CLI prints as one line and exit 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from hwprune.config import Budget, Options
from hwprune.errors import HwpruneError, ModelSpecError
from hwprune.frontends import LoadedModel, load_model
from hwprune.graph.analyze import Analysis
from hwprune.graph.analyze import analyze as _analyze
from hwprune.plan import Plan, load_plan
from hwprune.report import Report
from hwprune.targets import Target, resolve_target


@dataclass(frozen=True)
class Build:
    """What :func:`compile` made: the report (``report.speedup.measured`` and the rest), the pruned model
    (spans merged, eval mode), the plan, and every file written, by name."""

    report: Report
    pruned_model: nn.Module
    plan: Plan
    paths: dict[str, Path]


@dataclass(frozen=True)
class Applied:
    """What :func:`apply` made: the pruned model, its verification against the exported ONNX file, and the files."""

    pruned_model: nn.Module
    verified_max_abs_err: float
    paths: dict[str, Path]


@dataclass(frozen=True)
class Latency:
    """A model's latency on a target: predicted (by which latency model), and measured where asked and possible."""

    predicted_ms: float
    source: str  # lut, interpolated, shipped or analytic
    latency_model: str  # the latency model in words
    measured_ms: float | None = None


def loaded_model(model: nn.Module | str, example_input: torch.Tensor | tuple[int, ...] | None = None
                 ) -> LoadedModel:
    """A model spec loaded by its frontend (``example_input``: a tensor or just a shape, as ``--input-shape``),
    or an in-memory module with its example input; a module is named by its qualified class name (what a
    plan made from it records, with its weights' digest)."""
    if isinstance(model, str):
        shape = example_input.shape if isinstance(example_input, torch.Tensor) else example_input
        return load_model(model, None if shape is None else tuple(int(d) for d in shape))
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model: give an nn.Module or a model spec string, not {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise ModelSpecError("example_input: an nn.Module needs an example input tensor (batch first)")
    kind = type(model)
    name = f"{kind.__module__}.{kind.__qualname__}"
    return LoadedModel(name, model.eval(), example_input, f"the in-memory module {name}", None)


def compile(model: nn.Module | str, example_input: torch.Tensor | tuple[int, ...] | None = None, *,
            out: str | Path,
            target: str = "cpu", latency: float | None = None, speedup: float | None = None,
            budget_ms: float | None = None, calib_data: str | Iterable | None = None,
            console: Console | None = None, **settings) -> Build:
    """Prune ``model`` to a latency budget on ``target`` (exactly one of ``latency`` (a fraction of the
    baseline), ``speedup`` or ``budget_ms``), verify, measure and write the build to ``out``.

    ``calib_data``: a DataLoader or any iterable of batches (tensors or (input, label) pairs), or a spec as
    the CLI takes it. ``settings``: the rest of :class:`hwprune.Options` (``search``, ``allocation``,
    ``sparsity``, ``refine``, ``unconstrained``, ...), checked as the CLI's flags are."""
    from hwprune.pipeline.compile import compile_model

    budgets = [Budget(kind, value) for kind, value in (("latency", latency), ("speedup", speedup),
                                                       ("ms", budget_ms)) if value is not None]
    if len(budgets) != 1:
        raise HwpruneError("give exactly one budget: latency=FRACTION, speedup=S or budget_ms=MS")
    options = Options(_target(target), budgets[0], calib_data=calib_data, **settings)
    folder = Path(out)
    compiled = compile_model(loaded_model(model, example_input), options, folder,
                             console or Console(stderr=True, soft_wrap=True))
    return Build(compiled.report, compiled.model, load_plan(folder / "plan.json"), _files(folder))


def analyze(model: nn.Module | str, example_input: torch.Tensor | tuple[int, ...] | None = None, *,
            exclude: Iterable[str] = (),
            strict: bool = False) -> Analysis:
    """The model's channel groups (coupled channels: residual adds, concats, splits, depthwise convs,
    attention heads), each prunable or not with the reason."""
    loaded = loaded_model(model, example_input)
    return _analyze(loaded.module, loaded.example_input, loaded.name, exclude=tuple(exclude), strict=strict)


def apply(plan: Plan | str | Path, model: nn.Module | str | None = None, example_input: torch.Tensor | None = None,
          *, out: str | Path, calib_data: str | Iterable | None = None, atol: float = 1e-4,
          rtol: float = 1e-3) -> Applied:
    """Re-apply a plan without searching: to ``model`` (the module the plan was made from, checked by its
    weights' digest), or to the model its provenance names; verified like a compile."""
    from hwprune.pipeline.apply import apply_plan_file

    made = plan if isinstance(plan, Plan) else load_plan(plan)
    if example_input is None and isinstance(model, nn.Module):
        example_input = torch.randn(made.provenance.input_shape, generator=torch.Generator().manual_seed(0))
    loaded = loaded_model(made.provenance.model if model is None else model, example_input)
    applied = apply_plan_file(made, str(plan) if not isinstance(plan, Plan) else "the plan", loaded, calib_data,
                              Path(out), atol, rtol, False)
    return Applied(applied.model, applied.verification.max_abs_err, _files(Path(out)))


def recover(build: str | Path, data: str, *, eval_data: str | None = None, epochs: int = 5, lr: float = 1e-3,
            batch_size: int = 64, temperature: float = 4.0, console: Console | None = None) -> dict:
    """Distil a build's pruned model from the unpruned one on ``data`` (a spec, as ``hwprune recover``
    takes it); returns the report's recovery section (accuracy or fidelity before and after)."""
    from hwprune.recovery.distill import Recipe
    from hwprune.recovery.run import RecoverOptions
    from hwprune.recovery.run import recover as _recover

    if epochs < 1 or batch_size < 1 or lr <= 0 or temperature <= 0:
        raise HwpruneError("epochs, batch_size, lr and temperature must be positive")
    recipe = Recipe(epochs=epochs, lr=lr, temperature=temperature, batch_size=batch_size)
    return _recover(Path(build), RecoverOptions(data, eval_data, recipe), console)


def latency(model: nn.Module | str, example_input: torch.Tensor | tuple[int, ...] | None = None, *,
            target: str = "cpu",
            measure: bool = False) -> Latency:
    """The model's predicted latency on ``target`` (this host's measured table where it runs the target,
    else the analytic model) and, with ``measure``, its latency measured here."""
    from hwprune.cost.model_latency import host_predictor
    from hwprune.runtime import runtime_for

    device = _target(target)
    if measure:
        runtime_for(device).require("measure on the device, or drop measure for the prediction")
    found = analyze(model, example_input)
    predictor = host_predictor(found, device)
    prediction = predictor.predict({})
    measured = None
    if measure:
        from hwprune.pipeline.profiling import measure_model

        measured = measure_model(found.model, found.capture.example_input, device).median_ms
    return Latency(prediction.total_ms, prediction.source, predictor.describe(), measured)


def bench(model: str | Path, *, baseline_model: str | Path | None = None, target: str = "cpu",
          tolerance: float = 0.05) -> dict:
    """Time an ONNX file with the target's runtime; against ``baseline_model``, interleaved, with the
    regression verdict (the CI gate ``hwprune bench`` applies)."""
    import hwprune.gate as gate

    device = _target(target)
    if baseline_model is None:
        return gate.record(Path(model), device)
    return gate.compare_models(Path(model), Path(baseline_model), device, tolerance).to_json()


def _files(folder: Path) -> dict[str, Path]:
    return {path.name: path for path in sorted(folder.iterdir())} if folder.is_dir() else {}


def _target(name: str) -> Target:
    """The target ``name`` names (``jetson``: jetson-orin-nano, warned, as there is no device to ask)."""
    import warnings

    target, line = resolve_target(name)
    if line is not None:
        warnings.warn(line, stacklevel=3)
    return target
